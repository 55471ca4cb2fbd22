"""The report's chain section (bench/chain.py) rendered from small synthetic tables: each link
reads holds / breaks / inconclusive / not measured from its claims' verdicts, shows the measures
with their intervals, and the closing sentence says where the chain stops."""

from html import unescape

import pandas as pd

from t2i_rl_bench.chain import LINKS, chain_section, summary

PAIR = {"model": "m", "reward": "r"}


def _verdicts(**outcomes) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "id": claim,
                **PAIR,
                "method": "pcpo",
                "over": "ddpo_is",
                "effect": 0.5,
                "ci_low": 0.1,
                "ci_high": 0.9,
                "note": "",
                "verdict": verdict,
            }
            for claim, verdict in outcomes.items()
        ]
    )


def _write(folder, name, frame, header="# synthetic\n"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.csv").write_text(header + frame.to_csv(index=False))


def test_the_chain_holds_until_its_first_link_that_does_not(tmp_path):
    tables = tmp_path / "results" / "tables"
    _write(
        tables,
        "verdicts",
        _verdicts(pcpo_credit="supported", pcpo_snr="supported", pcpo_samples="supported", pcpo_seconds="contradicted"),
    )
    probe = pd.DataFrame(
        [
            {
                **PAIR,
                "algorithm": a,
                "budget": b,
                "metric": "proj_snr",
                "mean": m,
                "ci_low": m - 0.2,
                "ci_high": m + 0.2,
            }
            for a, m in (("pcpo", 0.8), ("ddpo_is", 0.3))
            for b in (0, 512)
        ]
    )
    _write(tables, "probe", probe)
    html = chain_section(tables)
    assert html.count("<tr>") == 1 + len(LINKS)
    assert "proj_snr (final): pcpo 0.8 [0.6, 1], ddpo_is 0.3 [0.1, 0.5]" in html
    assert "pcpo_credit: supported, effect 0.5 [0.1, 0.9]" in html
    assert "<b>holds</b>" in html and "<b>breaks</b>" in html and "<b>not measured</b>" in html
    assert "The chain holds through link 2; it breaks at link 3" in html
    assert "link 4: not measured" in html
    # the loop's decay read from the recursive preset's tables beside the study's
    decay = pd.DataFrame(
        [
            {
                **PAIR,
                "variant": "replace-real0",
                "algorithm": a,
                "metric": "collapse/loop_collapsed",
                "mean": v,
                "ci_low": 0.0,
                "ci_high": 1.0,
            }
            for a, v in (("pcpo", 0.0), ("ddpo_is", 1.0))
        ]
    )
    _write(tmp_path / "results" / "studies" / "recursive" / "tables", "recursive_decay", decay)
    html = chain_section(tables)
    assert "recursive preset" in html and "collapse/loop_collapsed (final): pcpo 0 [0, 1], ddpo_is 1 [0, 1]" in html


def test_summary_sentences_and_an_empty_section_without_verdicts(tmp_path):
    assert summary(["holds"] * 4) == "The chain holds end to end on this study's data."
    assert summary(["inconclusive", "holds", "holds", "breaks"]).startswith(
        "The chain does not get past its first link: link 1 is inconclusive"
    )
    assert chain_section(tmp_path) == ""


def test_a_probe_measured_once_shows_its_own_interval(tmp_path):
    tables = tmp_path / "tables"
    _write(tables, "verdicts", _verdicts(pcpo_snr="inconclusive"))
    rows = [
        {**PAIR, "algorithm": "pcpo", "budget": 0, "metric": m, "mean": v, "ci_low": None, "ci_high": None}
        for m, v in (("proj_snr", 0.8), ("proj_snr_low", 0.2), ("proj_snr_high", 1.4))
    ]
    _write(tables, "probe", pd.DataFrame(rows))
    assert "proj_snr (start): pcpo 0.8 [0.2, 1.4], ddpo_is not measured" in chain_section(tables)


def test_no_section_when_pcpo_is_not_in_the_study(tmp_path):
    tables = tmp_path / "tables"
    lines = _verdicts(pcpo_snr="not run").assign(over="")
    _write(tables, "verdicts", lines)
    assert chain_section(tables) == ""


def test_a_preset_at_more_power_decides_its_link_beside_the_studys_lines(tmp_path):
    """Link 2 reads the gradient preset's pcpo_snr line too: the study's own inconclusive line and
    the preset's 'equivalent' one make the link break (the claimed effect is absent), and the
    preset's measures are shown under its name. Without the preset the link stays inconclusive."""
    tables = tmp_path / "results" / "tables"
    _write(tables, "verdicts", _verdicts(pcpo_credit="supported", pcpo_snr="inconclusive"))
    before = chain_section(tables)
    assert "it breaks at link 2" not in before and "link 2 is inconclusive" in before
    preset = tmp_path / "results" / "studies" / "gradient" / "tables"
    _write(preset, "verdicts", _verdicts(pcpo_snr="equivalent"))
    probe = pd.DataFrame(
        [
            {
                **PAIR,
                "algorithm": a,
                "budget": 512,
                "metric": "proj_snr",
                "mean": m,
                "ci_low": m - 0.1,
                "ci_high": m + 0.1,
            }
            for a, m in (("pcpo", 0.25), ("ddpo_is", 0.2))
        ]
    )
    _write(preset, "probe", probe)
    html = chain_section(tables)
    assert "pcpo_snr (gradient): equivalent" in html and "pcpo_snr: inconclusive" in html
    assert "gradient: proj_snr (final): pcpo 0.25 [0.15, 0.35], ddpo_is 0.2 [0.1, 0.3]" in html
    assert "The chain holds through link 1; it breaks at link 2" in html
    # the preset's own report does not read itself as a preset
    assert "(gradient)" not in chain_section(preset)


def test_the_recursive_preset_decides_the_collapse_claim_alone(tmp_path):
    """Link 4 reads pcpo_collapse from the recursive preset when the study does not run the loop:
    the study's 'not run' placeholder gives way to the preset's line (which decides the link with
    the study's own pcpo_fid), and the preset's pcpo_fid line (3-seed RL runs) is not read."""
    tables = tmp_path / "results" / "tables"
    _write(tables, "verdicts", _verdicts(pcpo_credit="supported", pcpo_fid="supported"))
    before = chain_section(tables)
    assert "pcpo_collapse: not run" in before and "link 4: inconclusive" in before
    preset = tmp_path / "results" / "studies" / "recursive" / "tables"
    _write(preset, "verdicts", _verdicts(pcpo_collapse="contradicted", pcpo_fid="inconclusive"))
    html = chain_section(tables)
    assert "pcpo_collapse: not run" not in html and "pcpo_collapse (recursive): contradicted" in html
    assert "pcpo_fid (recursive)" not in html and "pcpo_fid: supported" in html
    assert "link 4: breaks" in html
    assert "Lines marked (recursive) are read from the committed preset results/studies/recursive" in html


def test_link_3_shows_the_convergence_measures_by_the_names_the_analysis_writes(tmp_path):
    """bench/analysis.py writes convergence/rmst_samples_<tag> and convergence/reached_<tag>; link 3
    shows both (a pattern that matches neither would read 'not measured')."""
    tables = tmp_path / "tables"
    _write(tables, "verdicts", _verdicts(pcpo_samples="inconclusive"))
    derived = pd.DataFrame(
        [
            {**PAIR, "algorithm": a, "budget": 512, "metric": m, "mean": v, "ci_low": v / 2, "ci_high": v}
            for a in ("pcpo", "ddpo_is")
            for m, v in (("convergence/rmst_samples_80", 200.0), ("convergence/reached_80", 0.5))
        ]
    )
    _write(tables, "derived", derived)
    html = chain_section(tables)
    assert "convergence/rmst_samples_* (final): pcpo 200 [100, 200]" in html
    assert "(final): pcpo 0.5 [0.25, 0.5], ddpo_is 0.5 [0.25, 0.5]" in html


def test_each_loop_preset_decides_link_4_on_its_own_training_reward(tmp_path):
    """The recursive preset (attribute_match) and the collapse preset (shape_iou) both sit beside
    the study: each one's lines decide link 4 only on the reward it ran, the collapse preset's
    extra claim (pcpo_collapse_fid) is shown where it has a line, and the loop measures come from
    whichever preset ran that reward."""
    tables = tmp_path / "results" / "tables"
    rows = [
        {**v, "reward": reward}
        for reward in ("attribute_match", "shape_iou")
        for v in _verdicts(pcpo_credit="supported", pcpo_fid="supported", pcpo_diversity="supported").to_dict("records")
    ]
    _write(tables, "verdicts", pd.DataFrame(rows))
    studies = tmp_path / "results" / "studies"
    _write(
        studies / "recursive" / "tables",
        "verdicts",
        _verdicts(pcpo_collapse="supported").assign(reward="attribute_match"),
    )
    _write(
        studies / "collapse" / "tables",
        "verdicts",
        _verdicts(pcpo_collapse="equivalent", pcpo_collapse_fid="inconclusive").assign(reward="shape_iou"),
    )
    for name, reward, slope in (("recursive", "attribute_match", 11.0), ("collapse", "shape_iou", 7.0)):
        decay = pd.DataFrame(
            [
                {
                    **PAIR,
                    "reward": reward,
                    "algorithm": a,
                    "variant": "replace-real0",
                    "metric": "decay/quality/fid",
                    "mean": slope,
                    "ci_low": slope - 1,
                    "ci_high": slope + 1,
                }
                for a in ("pcpo", "ddpo_is")
            ]
        )
        _write(studies / name / "tables", "recursive_decay", decay)
    html = chain_section(tables)
    am, si = html.split("<h3>m / shape_iou</h3>")
    assert "pcpo_collapse (recursive): supported" in am and "(collapse)" not in am.split("<h3>")[-1]
    assert "decay/quality/fid (final): pcpo 11 [10, 12]" in am
    assert "pcpo_collapse (collapse): equivalent" in si and "pcpo_collapse_fid (collapse): inconclusive" in si
    assert "(recursive)" not in si and "decay/quality/fid (final): pcpo 7 [6, 8]" in si
    # an equivalent loop line means PCPO does not collapse more slowly: link 4 breaks on shape_iou only
    assert "link 4: breaks" in si and "link 4: breaks" not in am
    assert "the recursive preset's (config/recursive.yaml) and the collapse preset's" in unescape(html)


def test_the_loop_rate_controls_equal_rate_lines_decide_link_4_beside_the_loop(tmp_path):
    """The collapse preset's rate control (the loop at equal learning rates) sits beside the study:
    its equal-rate lines are shown in link 4 and decide it with the others; its rate lines are not
    read (they compare one loss at two rates, not PCPO with its reference)."""
    tables = tmp_path / "results" / "tables"
    _write(tables, "verdicts", _verdicts(pcpo_credit="supported", pcpo_fid="supported", pcpo_diversity="supported"))
    control = tmp_path / "results" / "studies" / "collapse_rate" / "tables"
    _write(control, "verdicts", _verdicts(**{"loop_loss_vendi_at_1e-4": "supported", "loop_rate_pcpo": "contradicted"}))
    html = chain_section(tables)
    assert "loop_loss_vendi_at_1e-4 (collapse_rate): supported" in html and "loop_rate_pcpo" not in html
    # pcpo_collapse itself has no line here (no loop preset), so link 4 cannot hold ...
    assert "pcpo_collapse: not run" in html and "link 4: inconclusive" in html
    # ... but an equal-rate line showing no difference breaks it
    _write(control, "verdicts", _verdicts(**{"loop_loss_vendi_at_1e-4": "equivalent"}))
    assert "link 4: breaks" in chain_section(tables)
