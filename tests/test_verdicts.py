import numpy as np
import pandas as pd
import pytest

from t2i_rl_bench import verdicts

STATS = {"confidence": 0.95, "interval": "t", "bootstrap_resamples": 500, "seed": 0}
SEEDS = range(5)
SPREAD = np.array([-0.02, -0.01, 0.0, 0.01, 0.02])
# (method's mean, other's mean) per outcome for a higher-is-better measure; the spread is small
MEANS = {"supported": (1.0, 0.5), "contradicted": (0.5, 1.0), "inconclusive": (0.5, 0.505)}


def _frame(values: dict[str, np.ndarray], metric: str, budgets=(0, 64), status: dict | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "model": "m",
                "reward": "r",
                "algorithm": a,
                "seed": s,
                "budget": b,
                "metric": metric,
                "value": float(v[s]),
                "status": (status or {}).get(a, "finished"),
            }
            for a, v in values.items()
            for s in SEEDS
            for b in budgets
        ]
    )


def _eval_rows(status: dict | None = None) -> pd.DataFrame:
    return _frame({a: np.zeros(5) for a in ("pcpo", "ddpo_is", "prdp")}, "reward/r", status=status)


def _cfg(measure: str, **claim) -> dict:
    return {
        "statistics": STATS,
        "verdicts": {
            "reference": "ddpo_is",
            "target_fraction": 0.8,
            "matched_fraction": 0.5,
            "claims": [{"id": "c", "claim": "x", "method": "pcpo", "measure": measure, **claim}],
        },
    }


def _values(outcome: str, lower_is_better: bool) -> dict[str, np.ndarray]:
    good, other = MEANS[outcome]
    if lower_is_better:  # the claim 'pcpo is better' means pcpo lower
        good, other = -good, -other
    return {"pcpo": good + SPREAD, "ddpo_is": other + SPREAD[::-1]}


def _tables(kind: str, outcome: str) -> tuple[str, verdicts.Tables]:
    empty = pd.DataFrame(columns=["model", "reward", "algorithm", "seed", "budget", "metric", "value", "status"])
    ev = _eval_rows()
    if kind == "probe":  # bias-corrected SNR, higher is better
        return "probe:snr_unbiased", verdicts.Tables(ev, _frame(_values(outcome, False), "snr_unbiased"), empty, empty)
    if kind == "derived":  # time to target, lower is better
        frame = _frame(_values(outcome, True), "convergence/rmst_samples_80", budgets=(64,))
        return "derived:convergence/rmst_samples_{tag}", verdicts.Tables(ev, empty, frame, empty)
    if kind == "change":  # FID drift, lower is better
        frame = _frame(_values(outcome, True), "change/quality/fid", budgets=(64,))
        return "change:quality/fid", verdicts.Tables(ev, empty, frame, empty)
    if kind == "recursive":  # Vendi decay slope, higher (less negative) is better
        frame = _frame(_values(outcome, False), "decay/diversity/vendi", budgets=(3,))
        return "recursive:decay/diversity/vendi", verdicts.Tables(ev, empty, empty, frame)
    if kind == "matched":  # FID read where the reward first reaches 0.5: 10 + v per seed
        v = _values(outcome, True)
        rows = []
        for a in v:
            for s in SEEDS:
                for b, r, f in ((0, 0.0, 10.0), (64, 1.0, 10.0 + 2 * v[a][s]), (128, 1.0, 10.0 + 2 * v[a][s])):
                    rows += [
                        {
                            "model": "m",
                            "reward": "r",
                            "algorithm": a,
                            "seed": s,
                            "budget": b,
                            "metric": m,
                            "value": val,
                            "status": "finished",
                        }
                        for m, val in (("reward/r", r), ("quality/fid", f))
                    ]
        return "matched:quality/fid", verdicts.Tables(pd.DataFrame(rows), empty, empty, empty)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["probe", "derived", "change", "recursive", "matched"])
@pytest.mark.parametrize("outcome", ["supported", "contradicted", "inconclusive"])
def test_each_rule_gives_each_outcome(kind, outcome):
    measure, tables = _tables(kind, outcome)
    out = verdicts.evaluate(_cfg(measure), tables)
    assert len(out) == 1
    line = out.iloc[0]
    assert line.verdict == outcome, line.to_dict()
    assert line.ci_low <= line.effect <= line.ci_high and line.n_method == 5 and line.n_over == 5


def test_divergence_rule_and_experiments_that_did_not_run():
    empty = pd.DataFrame(columns=["model", "reward", "algorithm", "seed", "budget", "metric", "value", "status"])
    # no run of any method diverged: the claim cannot fail here, so it is not supported
    calm = verdicts.evaluate(_cfg("diverged", method="prdp"), verdicts.Tables(_eval_rows(), empty, empty, empty))
    assert calm.iloc[0].verdict == "inconclusive" and "untested" in calm.iloc[0].note
    assert calm.iloc[0].ci_low == 0.0 and calm.iloc[0].ci_high < 0.6  # Clopper-Pearson on 0 of 5
    wild = verdicts.evaluate(
        _cfg("diverged", method="prdp"), verdicts.Tables(_eval_rows({"prdp": "diverged"}), empty, empty, empty)
    )
    assert wild.iloc[0].verdict == "contradicted" and wild.iloc[0].effect == 1.0 and wild.iloc[0].test == "Fisher exact"
    others = _eval_rows({"pcpo": "diverged", "ddpo_is": "diverged"})
    held = verdicts.evaluate(_cfg("diverged", method="prdp"), verdicts.Tables(others, empty, empty, empty))
    assert held.iloc[0].verdict == "supported" and held.iloc[0].effect == -1.0
    off = verdicts.evaluate(_cfg("recursive:decay/diversity/vendi"), verdicts.Tables(_eval_rows(), empty, empty, empty))
    assert off.iloc[0].verdict == "not run" and "off" in off.iloc[0].note


def test_holm_correction_spans_all_lines_and_others_expands():
    # pcpo vs each of two others; each comparison alone p ~ 0.03, corrected over two lines > 0.05
    rng = np.random.default_rng(0)
    x = np.array([1.0, 1.3, 0.9, 1.4, 1.1])
    probe = _frame(
        {"pcpo": x, "ddpo_is": x - 0.45 + rng.normal(0, 0.01, 5), "prdp": x - 0.45 + rng.normal(0, 0.01, 5)},
        "snr_unbiased",
    )
    empty = pd.DataFrame(columns=probe.columns)
    tables = verdicts.Tables(_eval_rows(), probe, empty, empty)
    out = verdicts.evaluate(_cfg("probe:snr_unbiased", over="others"), tables)
    assert sorted(out["over"]) == ["ddpo_is", "prdp"]
    assert (out["p_holm"] >= out["p_value"]).all() and (out["p_value"] < 0.05).all()


def test_lines_pair_by_seed_and_implementation_checks_are_their_own_family():
    # seeds shift both methods alike: Welch's test sees the seed spread, the paired one does not
    seed_shift = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    probe = _frame({"pcpo": seed_shift + 0.1 + SPREAD / 10, "ddpo_is": seed_shift}, "snr_unbiased")
    empty = pd.DataFrame(columns=probe.columns)
    tables = verdicts.Tables(_eval_rows(), probe, empty, empty)
    paired = verdicts.evaluate(_cfg("probe:snr_unbiased"), tables).iloc[0]
    assert paired.test == "paired t" and paired.verdict == "supported"
    cfg = {**_cfg("probe:snr_unbiased"), "analysis": {"pairing": "unpaired"}}
    welch = verdicts.evaluate(cfg, tables).iloc[0]
    assert welch.test == "Welch t" and welch.verdict == "inconclusive"
    # an implementation check is labelled and corrected apart from the findings
    cfg = _cfg("probe:snr_unbiased")
    cfg["verdicts"]["claims"] += [{**cfg["verdicts"]["claims"][0], "id": "k", "kind": "implementation check"}]
    out = verdicts.evaluate(cfg, tables).set_index("id")
    assert out.loc["k", "kind"] == "implementation check" and out.loc["c", "kind"] == "finding"
    assert out.loc["k", "p_holm"] == pytest.approx(out.loc["k", "p_value"])  # a family of one


def _pairs(means: dict[str, float], margin: float, noise: float = 0.002):
    from t2i_rl_bench import tables

    rng = np.random.default_rng(1)
    rows = [
        {
            "model": "m",
            "reward": "r",
            "algorithm": a,
            "seed": s,
            "budget": 64,
            "metric": "reward/r",
            "value": mu + rng.normal(0, noise),
            "status": "finished",
        }
        for a, mu in means.items()
        for s in range(8)
    ]
    cfg = {
        "rewards": ["r"],
        "statistics": STATS,
        "analysis": {"equivalence_margin": {"reward/r": margin}, "power": 0.8},
    }
    pairs = tables.improvement(pd.DataFrame(rows), STATS, ["reward/{reward}"], cfg["analysis"])
    return cfg, pairs


def test_acceptance_finds_a_difference_or_equivalence_or_neither():
    cfg, pairs = _pairs({"a": 0.5, "b": 0.5, "c": 0.5}, margin=0.01)
    assert (pairs["test"] == "paired t").all() and pairs["mdd"].notna().all()
    assert pairs["mdd_tests"].iloc[0] == 3 and pairs["equivalent"].all()
    acc = verdicts.acceptance(cfg, pairs)
    assert acc["outcome"] == "equivalence" and "within the declared margin 0.01" in acc["sentence"]
    cfg, pairs = _pairs({"a": 0.5, "b": 0.5, "c": 0.55}, margin=0.01)
    acc = verdicts.acceptance(cfg, pairs)
    assert acc["outcome"] == "difference" and "c over" in acc["sentence"]
    # the same difference with a confound named for every significant pair: not accepted as a finding
    named = {("a", "c"): "learning rate", ("b", "c"): "learning rate"}
    acc = verdicts.acceptance(cfg, pairs, named)
    assert acc["outcome"] == "neither" and "confound: learning rate" in acc["sentence"]
    # a margin too tight for the noise: neither
    cfg, pairs = _pairs({"a": 0.5, "b": 0.5, "c": 0.5}, margin=0.0005)
    assert verdicts.acceptance(cfg, pairs)["outcome"] == "neither"
    notes = verdicts.header_notes(cfg, pairs)
    assert any("minimum detectable difference" in n for n in notes) and any("margins declared" in n for n in notes)


def test_acceptance_counts_supported_findings_and_frontier_pairs_but_not_implementation_checks():
    cfg, pairs = _pairs({"a": 0.5, "b": 0.5, "c": 0.5}, margin=0.0005)  # no difference, no equivalence
    line = {"reward": "r", "method": "a", "over": "b", "verdict": "supported", "p_holm": 0.01, "id": "x"}
    check = pd.DataFrame([{**line, "kind": "implementation check"}])
    assert verdicts.acceptance(cfg, pairs, verdict=check)["outcome"] == "neither"
    finding = pd.DataFrame([{**line, "kind": "finding"}])
    acc = verdicts.acceptance(cfg, pairs, verdict=finding)
    assert acc["outcome"] == "difference" and "x vs b: supported" in acc["sentence"]
    front = pd.DataFrame(
        [
            {
                "reward": "r",
                "reading": "drift_at_gain",
                "metric": "quality/fid",
                "level": 0.01,
                "method": "a",
                "over": "c",
                "difference": -3.0,
                "p_holm": 0.001,
                "significant": True,
            }
        ]
    )
    acc = verdicts.acceptance(cfg, pairs, frontier_pairs=front)
    assert acc["outcome"] == "difference" and "drift_at_gain quality/fid" in acc["sentence"]


@pytest.mark.parametrize(
    "p,alpha,text",
    [(0.0497, 0.05, "0.0497"), (0.0503, 0.05, "0.0503"), (0.036, 0.05, "0.036"), (0.05, 0.05, "0.05")]
    + [(0.04996, 1 - 0.95, "0.04996"), (0.0099, 0.01, "0.0099"), (0.0497, 0.01, "0.05"), (float("nan"), 0.05, "nan")],
)
def test_a_p_value_is_never_printed_onto_the_threshold_it_is_not(p, alpha, text):
    assert verdicts.p_text(p, alpha) == text


def test_the_acceptance_line_prints_a_holm_p_just_under_alpha_as_under_it():
    cfg, pairs = _pairs({"a": 0.5, "b": 0.5, "c": 0.5}, margin=0.0005)
    line = {"reward": "r", "method": "a", "over": "b", "verdict": "supported", "p_holm": 0.0497, "id": "x"}
    acc = verdicts.acceptance(cfg, pairs, verdict=pd.DataFrame([{**line, "kind": "finding"}]))
    assert "x vs b: supported (Holm p 0.0497)" in acc["sentence"]


def test_a_declared_margin_turns_a_tight_null_into_equivalent():
    """MEANS['inconclusive'] differ by 0.005 with a spread of 0.02: not significant, and its
    interval (about +-0.03) lies inside a margin of 0.25 (equivalent) but not of 0.01."""
    measure, tables = _tables("probe", "inconclusive")
    measure = "probe:proj_snr"
    tables.probe["metric"] = "proj_snr"
    wide = verdicts.evaluate(_cfg(measure, at="all", margin=0.25), tables)
    narrow = verdicts.evaluate(_cfg(measure, at="all", margin=0.01), tables)
    plain = verdicts.evaluate(_cfg(measure, at="all"), tables)
    assert list(wide["verdict"]) == ["equivalent"] and -0.25 < wide["ci_low"].iloc[0] < wide["ci_high"].iloc[0] < 0.25
    assert list(narrow["verdict"]) == ["inconclusive"] and list(plain["verdict"]) == ["inconclusive"]
    supported = verdicts.evaluate(_cfg(measure, at="all", margin=0.25), _retag(_tables("probe", "supported")[1]))
    assert list(supported["verdict"]) == ["supported"]  # a significant difference is never 'equivalent'


def _retag(tables: verdicts.Tables) -> verdicts.Tables:
    tables.probe["metric"] = "proj_snr"
    return tables
