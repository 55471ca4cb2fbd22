"""The workflow end to end on the quick preset, in a fresh copy of the study folder."""

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from t2i_rl_bench.layout import study_paths

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    work = tmp_path_factory.mktemp("study")
    for name in ("Snakefile", "config", "profiles"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    shutil.copytree(ROOT / "results" / "models", work / "results" / "models")
    shutil.copytree(ROOT / "report" / "snakemake", work / "report" / "snakemake")  # --report's captions
    done = subprocess.run(
        [str(SNAKEMAKE), "--cores", "2", "--configfile", "config/quick.yaml"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return work, done


@pytest.mark.slow
def test_quick_study_writes_tables_and_report(quick_study):
    work, done = quick_study
    assert "rule pretrain" not in done.stdout + done.stderr  # the shipped checkpoint is used as is
    cfg = yaml.safe_load((work / "config" / "quick.yaml").read_text())
    out = study_paths("quick")  # the preset's own folders, never the default study's
    table = pd.read_csv(work / out.tables / "eval.csv", comment="#")
    budgets = [0] + cfg["train"]["budgets"]
    for algo in cfg["algorithms"]:
        rows = table[(table["algorithm"] == algo) & (table["metric"] == "reward/jpeg_compressibility")]
        assert sorted(rows["budget"]) == budgets
        trained = rows[rows["budget"] > 0]
        assert (trained["n_seeds"] == len(cfg["seeds"])).all()
        # the base model is one shared measurement: n = 1, no interval over seeds
        base = rows[rows["budget"] == 0]
        assert (base["n_seeds"] == 1).all() and base["ci_low"].isna().all()
        assert (trained["ci_low"] <= trained["mean"] + 1e-12).all() and (
            trained["mean"] <= trained["ci_high"] + 1e-12
        ).all()
    html = (work / out.report).read_text()
    assert html.count("data:image/png;base64,") >= 2
    assert (work / out.citable).is_file()
    assert not (work / "results" / "tables").exists() and not (work / "report" / "index.html").exists()
    assert pd.read_csv(work / out.tables / "failed_runs.csv", comment="#").empty


@pytest.mark.slow
def test_a_second_run_has_nothing_to_do(quick_study):
    work, _ = quick_study
    again = subprocess.run(
        [str(SNAKEMAKE), "--cores", "2", "--configfile", "config/quick.yaml", "-n"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_snakemake_report_holds_the_comparative_report_and_tables(quick_study):
    work, _ = quick_study
    done = subprocess.run(
        [str(SNAKEMAKE), "--configfile", "config/quick.yaml", "--report", "report/snakemake.html"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    html = (work / "report" / "snakemake.html").read_text()
    assert "index.html" in html and "eval.csv" in html


def _chromium():
    """Debian's chromium + chromium-driver (installed by .ci/run); CI sets REQUIRE_BROWSER=1."""
    import os

    found = shutil.which("chromium") and shutil.which("chromedriver")
    if not found:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail("chromium/chromedriver missing: apt-get install chromium chromium-driver")
        pytest.skip("chromium/chromedriver not installed")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


@pytest.mark.slow
def test_report_opens_in_a_browser_with_every_figure_loaded(quick_study):
    work, _ = quick_study
    driver = _chromium()
    try:
        driver.get((work / study_paths("quick").report).as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])"
        )
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        headings = driver.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
    finally:
        driver.quit()
    assert len(images) >= 4 and all(ok for _, ok in images), images
    assert errors == []
    for section in ("Headline", "What the study says about each claim", "Gradient signal and per-step credit"):
        assert section in headings, headings


def test_bad_config_is_refused_before_any_job(tmp_path):
    for name in ("Snakefile", "config", "profiles"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    cfg = yaml.safe_load((ROOT / "config" / "quick.yaml").read_text())
    cfg["train"]["budgets"] = [32, 16]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    done = subprocess.run(
        [str(SNAKEMAKE), "--cores", "1", "--configfile", "bad.yaml", "-n"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "train.budgets" in done.stdout + done.stderr
    assert not (tmp_path / "results" / "runs").exists()


def test_cli_lists_what_is_registered():
    out = subprocess.run(
        [sys.executable, "-m", "t2i_rl_bench", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert "reinforce" in out and "jpeg_compressibility" in out and "attribute_match" in out
    assert out.splitlines()[0].startswith("algorithms:")


def test_the_slurm_profile_dry_runs_the_study():
    pytest.importorskip("snakemake_executor_plugin_slurm")
    done = subprocess.run(
        [str(SNAKEMAKE), "-n", "--forceall", "--profile", "profiles/slurm", "--configfile", "config/quick.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rule train" in done.stdout + done.stderr


def test_a_multi_gpu_train_job_is_one_torchrun_launch(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "quick.yaml").read_text())
    cfg.setdefault("resources", {})["train"] = {"gpu": 2}
    path = tmp_path / "two_gpus.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = subprocess.run(
        [str(SNAKEMAKE), "-n", "-p", "--configfile", str(path), "--forcerun", "train"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torchrun --standalone --nproc-per-node 2 -m t2i_rl_bench train" in done.stdout
