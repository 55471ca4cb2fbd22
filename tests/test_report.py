"""The aggregate step and the report on a simulated study (no training): shapes like ours, with a
method that hacks its reward, a method that improves, one that does not, and a probe."""

import json

import numpy as np
import pandas as pd
import pytest

from t2i_rl_bench import report, study, tables

METHODS = {"pcpo": 0.10, "ddpo_is": 0.05, "prdp": 0.30}  # final gain of the proxy reward
BUDGETS = (0, 64, 128)


def _config(tmp_path, seeds=(0, 1, 2, 3, 4)) -> dict:
    cfg = {
        "study": "sim",
        "seeds": list(seeds),
        "models": {"m": {"path": str(tmp_path)}},
        "rewards": ["jpeg_compressibility", "attribute_match"],
        "algorithms": {a: {} for a in METHODS},
        "train": {"budgets": list(BUDGETS[1:])},
        "probe": {"minibatches": 8},
        "statistics": {"bootstrap_resamples": 300},
    }
    return study.validate(cfg, check_paths=False)


def _simulate(cfg: dict, root) -> None:
    rng = np.random.default_rng(0)
    for key in study.runs(cfg):
        run = root / key.path
        (run / "samples").mkdir(parents=True)
        gain = METHODS[key.algorithm]
        rows, probe_rows = [], []
        for i, b in enumerate(BUDGETS):
            f = i / (len(BUDGETS) - 1)
            noise = 0.0 if b == 0 else rng.normal(0, 0.01)
            hacked = key.algorithm == "prdp"
            rows.append(
                {
                    "budget": b,
                    "device_seconds": b * (8.0 if hacked else 1.0),
                    f"reward/{key.reward}": 0.5 + gain * f + noise,
                    "reward/clip_alignment": 0.3,
                    "attribute/mean": 0.8 - (0.3 * f if hacked else 0) + noise,
                    "quality/fid": 30 + (40 * f if hacked else 0.5 * f) + 10 * noise,
                    "quality/kid": 0.01,
                    "quality/clip_score": 25.0,
                    "diversity/vendi": 3.0 - (1.8 * f if hacked else 0.1 * f) + noise,
                }
            )
            share = np.full(6, 1 / 6) if key.algorithm == "pcpo" else np.array([0.05, 0.05, 0.1, 0.1, 0.2, 0.5])
            probe_rows.append(
                {
                    "budget": b,
                    "k": 8,
                    "snr": 0.3 + noise,
                    "snr_unbiased": 0.2 + noise,
                    "snr_unbiased_low": 0.1 + noise,
                    "snr_unbiased_high": 0.3 + noise,
                    "trace_cov": 1e3 if hacked else 1e-2,
                    "mean_sq_norm": 1.0,
                    "mean_pairwise_cosine": 0.1,
                    "credit_share": list(share),
                    "credit_gini": 0.05 if key.algorithm == "pcpo" else 0.4 + noise,
                }
            )
        (run / "eval.json").write_text(
            json.dumps({"status": "finished", "n_images": 96, "base_shared": True, "rows": rows})
        )
        (run / "probe.json").write_text(json.dumps({"base_shared": True, "rows": probe_rows}))
        (run / "summary.json").write_text(json.dumps({"status": "finished"}))
        # two optimiser steps per round of 32 images (the headline sums them to the final budget)
        log = [{"round": i, "images_seen": 32 * (i + 1), "optimiser_steps": 2} for i in range(BUDGETS[-1] // 32)]
        (run / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in log))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    cfg = _config(tmp)
    _simulate(cfg, tmp / "runs")
    tables.aggregate(cfg, tmp / "runs", tmp / "results" / "tables")
    return cfg, tmp


def test_aggregate_writes_headline_verdicts_and_hacking(built):
    cfg, tmp = built
    out = tmp / "results" / "tables"
    head = pd.read_csv(out / "headline.csv", comment="#").set_index(["reward", "method"])
    row = head.loc[("jpeg_compressibility", "pcpo")]
    assert row.gain == pytest.approx(0.10, abs=0.02) and row.gain_low > 0 and row.n_seeds == 5
    assert row.steps == 2 * BUDGETS[-1] / 32  # optimiser steps to the final budget, from the runs' logs
    # prdp costs 8 s per image: at equal seconds (128 s) it has seen 16 images
    prdp = head.loc[("jpeg_compressibility", "prdp")]
    assert prdp.seconds_level == 128 and prdp.gain_at_seconds < prdp.gain
    assert "attribute/mean" in prdp.hacked
    v = pd.read_csv(out / "verdicts.csv", comment="#")
    credit = v[(v["id"] == "pcpo_credit")]
    assert set(credit["verdict"]) == {"supported"}
    assert set(v[v["id"] == "pcpo_collapse"]["verdict"]) == {"not run"}
    faster = set(v[v["id"] == "pcpo_samples"]["verdict"])  # 0.10 vs 0.05 gain; Holm over ~20 lines
    assert "supported" in faster and "contradicted" not in faster
    assert set(v[v["id"] == "prdp_fid_drift"]["verdict"]) == {"contradicted"}
    assert not isinstance(head.loc[("jpeg_compressibility", "pcpo")].hacked, str)  # not flagged
    assert "| claim |" in (out / "verdicts.md").read_text()
    # the base row: one shared measurement
    ev = pd.read_csv(out / "eval.csv", comment="#")
    assert (ev[ev["budget"] == 0]["n_seeds"] == 1).all() and ev[ev["budget"] == 0]["ci_low"].isna().all()
    cit = json.loads((tmp / "results" / "citable.json").read_text())
    assert cit["statistics"]["method"] == "t" and cit["statistics"]["confidence"] == 0.95
    assert cit["evaluation"]["n_images"] == 96 and cit["probe"]["noise_floor_snr"] == 0.125
    assert cit["hardware"]["cpu_count"] and cit["sampling"]["num_steps"] and cit["train"]["budgets"]
    assert len(cit["per_seed"]["m/jpeg_compressibility/pcpo/128/reward/jpeg_compressibility"]) == 5
    tex = (out / "eval.tex").read_text()
    assert tex.count("\\begin{longtable}") == 2  # one per training reward
    assert "feature network" in (out / "eval.csv").read_text()


def test_report_renders_every_section(built):
    cfg, tmp = built
    html = report.render(tmp / "results" / "tables", tmp / "runs", tmp / "report" / "index.html").read_text()
    for text in (
        "Headline",
        "What the study says about each claim",
        "Student-t interval",
        "noise floor",
        "Reward hacking",
        "Across training rewards",
        "supported",
        "interval of the single probe",
    ):
        assert text in html, text
    assert html.index("Headline") < html.index("What the study says")


def test_the_readme_quotes_the_generated_headline_and_verdict_tables(built, tmp_path):
    _, tmp = built
    (hb, he), (vb, ve) = report.markers("headline"), report.markers("verdicts")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{hb}\ngain 0.9 typed\n{he}\nbetween\n{vb}\ntyped by hand\n{ve}\nafter\n")
    assert report.quote_tables(readme, tmp / "results" / "tables")
    text = readme.read_text()
    assert "typed" not in text and "| claim |" in text and "| method |" in text
    assert text.index(hb) < text.index("| method |") < text.index(he) < text.index("between") < text.index(vb)
    assert text.endswith(f"{ve}\nafter\n")
    # the headline's one sentence: the acceptance rule's outcome from the verdict table's header
    ab, ae = report.markers("acceptance")
    verdicts_md = (tmp / "results" / "tables" / "verdicts.md").read_text()
    stated = [line for line in verdicts_md.splitlines() if line.startswith("<!-- acceptance (")]
    assert len(stated) == 1
    readme.write_text(f"# x\n{ab}\nall methods differ (typed)\n{ae}\n")
    assert report.quote_tables(readme, tmp / "results" / "tables")
    quoted = readme.read_text().split(ab)[1].split(ae)[0].strip()
    assert "typed" not in quoted and quoted.startswith("**Headline (")
    assert quoted.split(":** ", 1)[1] == stated[0].split("): ", 1)[1].removesuffix(" -->")
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert not report.quote_tables(plain, tmp / "results" / "tables") and plain.read_text() == "no markers\n"


def test_the_report_reads_at_1366_px_without_widening_the_page(built, tmp_path):
    """A laptop's width: the page never scrolls sideways (a wide table scrolls inside its own box),
    the headline table fits, no number is printed as 'nan'. Needs Debian's chromium and its driver
    (installed by .ci/run, which sets REQUIRE_BROWSER=1; skipped locally without them)."""
    import os
    import shutil

    cfg, tmp = built
    page = report.render(tmp / "results" / "tables", tmp / "runs", tmp / "report" / "index.html")
    text = page.read_text()
    assert ">nan<" not in text.lower() and " nan " not in text.lower()
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail("chromium/chromedriver missing: apt-get install chromium chromium-driver")
        pytest.skip("chromium/chromedriver not installed")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1366,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        driver.set_window_size(1366, 900)
        driver.get(page.as_uri())
        width = driver.execute_script("return window.innerWidth")
        page_width = driver.execute_script("return document.documentElement.scrollWidth")
        headline = driver.execute_script(
            "const h = [...document.querySelectorAll('h2')].find(e => e.textContent === 'Headline');"
            "let b = h.nextElementSibling; while (!b.classList.contains('scroll')) b = b.nextElementSibling;"
            "return [b.scrollWidth, b.clientWidth];"
        )
        assert driver.save_screenshot(str(tmp_path / "report-1366.png"))
    finally:
        driver.quit()
    assert width <= 1366 and page_width <= width, f"the page is {page_width} px wide in a {width} px window"
    assert headline[0] <= headline[1], f"the headline table needs {headline[0]} px of {headline[1]}"
    assert (tmp_path / "report-1366.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("prefix", "score", "shown"),
    [("heldout", False, "held-out @128"), ("train", True, "training prompts @128")],
)
def test_the_calibration_section_names_the_curves_prompt_set_and_the_rules_score(tmp_path, prefix, score, shown):
    """A calibration table (bench/calibration.py) names its evaluation curve by the prompt set it
    was measured on; one written before the score option has no score column and still renders."""
    row = {"model": "m", "reward": "r", "method": "a", "label": "a", "lr": 1e-4, "mean_train_reward": 0.5}
    row |= {f"{prefix}_0": 0.5, f"{prefix}_128": 0.6, "train_reward_se": 0.01, "chosen": True}
    if score:
        row |= {"score": 0.6, "score_se": 0.01}
    (tmp_path / "calibration.csv").write_text("# selection rule: x\n" + pd.DataFrame([row]).to_csv(index=False))
    html_text = report.calibration_section(tmp_path, tmp_path)
    assert shown in html_text and "train_reward_se" not in html_text
    assert ("the rule&#x27;s score" in html_text or "the rule's score" in html_text) == score


def test_sample_grids_show_each_methods_lowest_seed_with_samples(tmp_path):
    """A study need not run seed 0 (the replication, the credit ablation at power): the grids come
    from each method's lowest seed that has samples, named in the caption, with the base once."""
    from PIL import Image

    for algo, seeds in (("a", (41, 40, 100)), ("b", (7,))):
        for seed in seeds:
            folder = tmp_path / "m" / "r" / algo / f"seed{seed}" / "samples"
            folder.mkdir(parents=True)
            for budget in (0, 64):
                Image.new("RGB", (4, 4), (seed, budget, 0)).save(folder / f"{budget}.png")
    (tmp_path / "m" / "r" / "c" / "seed0").mkdir(parents=True)  # a run without samples is skipped
    table = pd.DataFrame({"model": "m", "reward": "r", "algorithm": ["a", "b", "c"]})
    figures = report.sample_grids(tmp_path, table, [])
    captions = [f.split("<figcaption>")[1].split("</figcaption>")[0] for f in figures]
    assert captions == [
        "Base model (m), held-out prompts",
        "a (m, trained on r), seed 40, after 64 images",
        "b (m, trained on r), seed 7, after 64 images",
    ]
