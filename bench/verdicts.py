"""What the study says about each claim: a verdict per (claim, model, training reward, compared
method), generated from the per-seed tables by the rules of the config's `verdicts:` section,
which is fixed before the study runs (defaults in config/schema.yaml).

Each line compares the claimed method with another one over seeds: effect = mean(method) -
mean(other) of the claim's measure, with the study's interval (`statistics.interval`) and the
paired t-test on per-seed differences where both ran the same seeds (`analysis.pairing`; else
Welch's). The p-values of the findings' lines are corrected together by Holm-Bonferroni, those
of the implementation checks (claims true by construction of a loss, `kind: implementation
check`) apart. A line is *supported* when its corrected p is below 1 - confidence and the effect
lies on the side the metrics registry calls better, *contradicted* when significant on the other
side, *equivalent* when it is not significant and the claim declares a `margin` that the whole
interval lies inside, and *inconclusive* otherwise (also when a group has fewer than two seeds or the measure is
not comparable, with the reason); *not run* when the experiment behind it is off. `diverged`
compares the method's divergence rate with the other methods' pooled (Fisher's exact test,
Clopper-Pearson interval on the rate): a study in which no run diverged cannot support it.

`acceptance` applies the headline's rule (docs/study.md#acceptance) to the pairwise table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from t2i_rl_bench import analysis, frontier
from t2i_rl_bench.metrics import direction
from t2i_rl_bench.metrics.statistics import clopper_pearson, compare, holm

RUN = ["model", "reward", "algorithm", "seed"]
OUTCOMES = ("supported", "contradicted", "equivalent", "inconclusive", "not run")


@dataclass
class Tables:
    """The per-seed frames the rules read (columns model, reward, algorithm, seed, budget, metric,
    value, status); any may be empty."""

    eval: pd.DataFrame
    probe: pd.DataFrame
    derived: pd.DataFrame  # gold checks, convergence, compute-matched (t2i_rl_bench.analysis)
    recursive: pd.DataFrame


def _empty() -> pd.DataFrame:
    return pd.DataFrame(columns=[*RUN, "budget", "metric", "value", "status"])


def _per_seed(frame: pd.DataFrame, model: str, reward: str, algo: str, key: str, at: str) -> dict:
    """One value per seed of a measure ({seed: value}): at the final budget, the start, or the
    seed's mean over all budgets present (the same budgets for every method: equal samples)."""
    if frame is None or frame.empty:
        return {}
    part = frame[
        (frame["model"] == model)
        & (frame["reward"] == reward)
        & (frame["algorithm"] == algo)
        & (frame["metric"] == key)
    ]
    part = part[np.isfinite(part["value"].to_numpy(dtype=float))]
    if part.empty:
        return {}
    if at == "final":
        part = part[part["budget"] == part.groupby("seed")["budget"].transform("max")]
    elif at == "start":
        part = part[part["budget"] == part["budget"].min()]
    return {int(k): float(v) for k, v in part.groupby("seed")["value"].mean().items()}


def _matched(tables: Tables, model: str, reward: str, algo: str, other: str, key: str, fraction: float):
    """Per-seed values of a gold metric at the reward level both methods reach (or the reason)."""
    level, why = analysis.matched_level(tables.eval, model, reward, [algo, other], fraction)
    if not np.isfinite(level):
        return {}, {}, why
    rules = analysis.Rules(matched_fraction=fraction)
    m = analysis.matched_quality(
        tables.eval[(tables.eval["model"] == model) & (tables.eval["reward"] == reward)], rules, [algo, other]
    )
    get = lambda a: _per_seed(m, model, reward, a, f"matched/{key}", "final")  # noqa: E731
    return get(algo), get(other), f"read at reward {level:.4g} ({why})"


def _line(
    claim: dict,
    model: str,
    reward: str,
    other: str,
    x: dict,
    y: dict,
    better: str | None,
    cfg_stats: dict,
    note: str,
    pairing: str = "auto",
) -> dict:
    d = compare(
        x,
        y,
        cfg_stats.get("interval", "t"),
        cfg_stats["confidence"],
        cfg_stats.get("bootstrap_resamples", 2000),
        cfg_stats.get("seed", 0),
        pairing,
    )
    if d.n_x < 2 or d.n_y < 2:
        note = (note + "; " if note else "") + f"too few seeds with a value ({d.n_x} vs {d.n_y})"
    return {
        "id": claim["id"],
        "claim": claim["claim"],
        "model": model,
        "reward": reward,
        "method": claim["method"],
        "over": other,
        "measure": claim["measure"],
        "better": better or "",
        "effect": d.effect,
        "ci_low": d.low,
        "ci_high": d.high,
        "n_method": d.n_x,
        "n_over": d.n_y,
        "p_value": d.p_value,
        "test": d.test,
        "note": note,
        "margin": float(claim.get("margin") or np.nan),
    }


def _diverged_line(claim: dict, model: str, reward: str, tables: Tables, confidence: float) -> dict:
    """The method's divergence rate against the other methods' pooled, by Fisher's exact test
    (one-sided: fewer divergences). No run of any method diverged: the claim is untested here
    (inconclusive), not supported: a rule that cannot fail says nothing."""
    part = tables.eval[(tables.eval["model"] == model) & (tables.eval["reward"] == reward)]
    status = part.groupby(["algorithm", "seed"])["status"].first()
    mine = status[status.index.get_level_values(0) == claim["method"]]
    rest = status[status.index.get_level_values(0) != claim["method"]]
    n, k = int(mine.size), int((mine == "diverged").sum())
    n_o, k_o = int(rest.size), int((rest == "diverged").sum())
    _, low, high = clopper_pearson(k, n, confidence) if n else (np.nan, np.nan, np.nan)
    p = np.nan
    if n == 0:
        verdict, why = "inconclusive", "no run of the method"
    elif k == 0 and k_o == 0:
        verdict, why = "inconclusive", f"no run of any method diverged (0 of {n + n_o}): the claim is untested here"
    else:
        p = float(stats.fisher_exact([[k, n - k], [k_o, n_o - k_o]], alternative="two-sided")[1])
        verdict = None  # decided with the other lines, after Holm
        why = f"{k} of {n} seeds diverged against {k_o} of {n_o} runs of the other methods (Fisher's exact test)"
    line = {
        "id": claim["id"],
        "claim": claim["claim"],
        "model": model,
        "reward": reward,
        "method": claim["method"],
        "over": "others (pooled)",
        "measure": "diverged",
        "better": "lower",
        "effect": k / n - (k_o / n_o if n_o else np.nan) if n else np.nan,
        "ci_low": low,
        "ci_high": high,
        "n_method": n,
        "n_over": n_o,
        "p_value": p,
        "test": "Fisher exact",
        "note": why + "; interval: Clopper-Pearson on the method's rate",
    }
    return {**line, "verdict": verdict} if verdict else line


def evaluate(cfg: dict, tables: Tables) -> pd.DataFrame:
    """Every declared claim on every (model, training reward) of the study -> one row per line."""
    rules = cfg.get("verdicts", {})
    stats_cfg = cfg["statistics"]
    reference = rules.get("reference", "ddpo_is")
    fraction = rules.get("target_fraction", 0.8)
    tag = int(round(100 * fraction))
    methods = sorted(tables.eval["algorithm"].unique()) if not tables.eval.empty else []
    pairs = (
        sorted({(m, r) for m, r in tables.eval[["model", "reward"]].itertuples(index=False)})
        if not tables.eval.empty
        else []
    )
    pairing = (cfg.get("analysis") or {}).get("pairing", "auto")
    lines = []
    for claim in rules.get("claims", []):
        claim = {"over": "reference", "at": "final", "kind": "finding", **claim}
        claim["claim"] = claim["claim"].replace("{target}", f"{fraction:.0%}")
        kind, _, key = claim["measure"].partition(":")
        key = key.replace("{tag}", str(tag))
        for model, reward in pairs:
            if claim["method"] not in methods:
                lines.append(
                    {
                        "id": claim["id"],
                        "claim": claim["claim"],
                        "model": model,
                        "reward": reward,
                        "method": claim["method"],
                        "over": "",
                        "measure": claim["measure"],
                        "verdict": "not run",
                        "note": f"{claim['method']} is not in the study",
                    }
                )
                continue
            if kind == "diverged":
                lines.append(_diverged_line(claim, model, reward, tables, stats_cfg["confidence"]))
                continue
            others = (
                [a for a in methods if a != claim["method"]]
                if claim["over"] == "others"
                else [reference if claim["over"] == "reference" else claim["over"]]
            )
            for other in others:
                base = {
                    "id": claim["id"],
                    "claim": claim["claim"],
                    "model": model,
                    "reward": reward,
                    "method": claim["method"],
                    "over": other,
                    "measure": claim["measure"],
                }
                if other not in methods:
                    lines.append({**base, "verdict": "not run", "note": f"{other} is not in the study"})
                    continue
                better, note = direction(key) or frontier.reading_direction(key), ""
                if kind == "probe":
                    frame = tables.probe
                    if frame.empty:
                        lines.append({**base, "verdict": "not run", "note": "the gradient probe is off"})
                        continue
                    x, y = (_per_seed(frame, model, reward, a, key, claim["at"]) for a in (claim["method"], other))
                    note = {
                        "all": "each seed's mean over the probed budgets",
                        "final": "at the final budget",
                        "start": "at the base model",
                    }[claim["at"]]
                elif kind == "recursive":
                    if tables.recursive.empty:
                        lines.append({**base, "verdict": "not run", "note": "the self-consuming loop is off"})
                        continue
                    x, y = (
                        _per_seed(tables.recursive, model, reward, a, key, "final") for a in (claim["method"], other)
                    )
                elif kind == "matched":
                    x, y, note = _matched(
                        tables, model, reward, claim["method"], other, key, rules.get("matched_fraction", 0.5)
                    )
                elif kind in ("derived", "change"):
                    k = key if kind == "derived" else f"change/{key}"
                    x, y = (_per_seed(tables.derived, model, reward, a, k, "final") for a in (claim["method"], other))
                    if kind == "change":
                        note = "final - base, per seed"
                    elif key.startswith("frontier/"):
                        note = (
                            "read along each run's budget curve at a level declared before the runs (bench/frontier.py)"
                        )
                    elif "convergence/" in key and not x and not y:
                        note = (
                            "no convergence target: no method improved on the base significantly without "
                            "failing a gold check"
                        )
                    elif "rmst" in key:
                        note = (
                            f"time to {fraction:.0%} of the reference improvement, a run that never gets there "
                            "counted at the horizon (restricted mean)"
                        )
                else:
                    raise ValueError(f"claim {claim['id']!r}: unknown measure kind {kind!r}")
                if claim.get("controlled"):
                    note = (note + "; " if note else "") + f"controlled comparison: only {claim['controlled']} differs"
                lines.append(_line(claim, model, reward, other, x, y, better, stats_cfg, note, pairing))
    kinds = {c["id"]: c.get("kind", "finding") for c in rules.get("claims", [])}
    out = pd.DataFrame(lines)
    if out.empty:
        return out
    out["kind"] = out["id"].map(kinds).fillna("finding")
    check = out["kind"] == "implementation check"  # shown wherever the claim is: tables, report, README
    out.loc[check, "claim"] = out.loc[check, "claim"] + " [implementation check: true by construction]"
    for col in ("p_value", "effect", "ci_low", "ci_high"):
        if col not in out:
            out[col] = np.nan
    tested = out["verdict"].isna() if "verdict" in out else pd.Series(True, index=out.index)
    out["p_holm"] = np.nan
    for kind in out["kind"].unique():  # findings form one Holm family, implementation checks another
        family = tested & (out["kind"] == kind)
        out.loc[family, "p_holm"] = holm(out.loc[family, "p_value"].to_numpy(dtype=float))
    alpha = 1 - stats_cfg["confidence"]
    if "verdict" not in out:
        out["verdict"] = None
    for i in out.index[tested]:
        p, effect, better = out.at[i, "p_holm"], out.at[i, "effect"], out.at[i, "better"]
        if not (np.isfinite(p) and p < alpha and better):
            # a declared equivalence margin: the whole interval inside (-margin, margin) (a conservative
            # TOST, docs/mechanisms.md#projected-snr)
            m, lo, hi = (float(out.at[i, c]) if c in out else np.nan for c in ("margin", "ci_low", "ci_high"))
            inside = np.isfinite(m) and np.isfinite(lo) and np.isfinite(hi) and -m < lo and hi < m
            out.at[i, "verdict"] = "equivalent" if inside else "inconclusive"
            continue
        good = effect > 0 if better == "higher" else effect < 0
        out.at[i, "verdict"] = "supported" if good else "contradicted"
    return out


# ---- the headline's acceptance rule (docs/study.md#acceptance) --------------------------------


def p_text(p: float, alpha: float = 0.05) -> str:
    """`p` to two significant digits, or as many more as keep it off `alpha` when it is not `alpha`: a
    Holm p of 0.0497 printed as "0.05" would read as not significant
    (docs/measurements.md#headline-verdicts-and-reward-hacking)."""
    alpha = round(alpha, 12)  # 1 - 0.95 is 0.05000000000000004
    for digits in range(2, 7):
        text = f"{p:.{digits}g}"
        if p == alpha or not np.isfinite(p) or float(text) != alpha:
            return text
    return text


def primary_reward(cfg: dict) -> str:
    """The training reward of the acceptance rule: `analysis.primary`, else the first reward."""
    chosen = (cfg.get("analysis") or {}).get("primary")
    if chosen:
        return str(chosen)
    first = cfg["rewards"][0]
    return first if isinstance(first, str) else "+".join(sorted(first))


def acceptance(
    cfg: dict,
    pairs: pd.DataFrame,
    confounds: dict | None = None,
    verdict: pd.DataFrame | None = None,
    frontier_pairs: pd.DataFrame | None = None,
) -> dict:
    """The headline's rule, applied to the pairwise table (bench/tables.py `improvement`) on the
    primary training reward: (a) `difference` when at least one pair differs Holm-significantly
    on the held-out reward or a gold metric and no confound is named for that pair (`confounds`:
    {(method, over) sorted: reason}); (b) `equivalence` when every pair is within the declared
    margin on the held-out primary reward (TOST, intersection-union: each pair at alpha);
    else `neither`. The findings' verdict lines that are supported or contradicted (`verdict`)
    and the Holm-significant pairs of the frontier (`frontier_pairs`) on the primary reward count
    as differences too. Returns {outcome, sentence, reward, mdd, margin, pairs}."""
    confounds = confounds or {}
    reward = primary_reward(cfg)
    alpha = 1 - cfg.get("statistics", {}).get("confidence", 0.95)
    metric = f"reward/{reward}"
    if pairs is None or pairs.empty or "reward" not in pairs:
        return {"outcome": "neither", "sentence": "No pairwise table: the rule cannot be applied.", "reward": reward}
    part = pairs[pairs["reward"] == reward]
    ordered = part[part["method"] < part["over"]]  # each unordered pair once
    held = ordered[ordered["metric"] == metric]
    mdd = float(held["mdd"].iloc[0]) if "mdd" in held and len(held) else float("nan")
    margin = float(held["margin"].iloc[0]) if "margin" in held and len(held) else float("nan")
    found = []
    for r in ordered[ordered["significant"].astype(bool)].itertuples():
        key = tuple(sorted((r.method, r.over)))
        better = r.better if isinstance(r.better, str) else ""
        sign = -1.0 if better == "lower" else 1.0
        winner, loser = (r.method, r.over) if sign * r.difference > 0 else (r.over, r.method)
        holm_p = p_text(r.p_holm, alpha)
        text = f"{winner} over {loser} on {r.metric} (by {abs(r.difference):.4g}, Holm p {holm_p}, {r.test})"
        found.append((text, confounds.get(key)))
    if verdict is not None and len(verdict) and "kind" in verdict:
        lines = verdict[
            (verdict["reward"] == reward)
            & (verdict["kind"] == "finding")
            & verdict["verdict"].isin(["supported", "contradicted"])
        ]
        for r in lines.itertuples():
            key = tuple(sorted((r.method, r.over)))
            found.append((f"{r.id} vs {r.over}: {r.verdict} (Holm p {p_text(r.p_holm, alpha)})", confounds.get(key)))
    if frontier_pairs is not None and len(frontier_pairs):
        sig = frontier_pairs[(frontier_pairs["reward"] == reward) & frontier_pairs["significant"].astype(bool)]
        for r in sig.itertuples():
            key = tuple(sorted((r.method, r.over)))
            text = (
                f"{r.reading} {r.metric} at {r.level:g}: {r.method} - {r.over} = {r.difference:+.4g} "
                f"(Holm p {p_text(r.p_holm, alpha)})"
            )
            found.append((text, confounds.get(key)))
    clean = [t for t, c in found if not c]
    n_pairs = len(held)
    equivalent = n_pairs > 0 and "equivalent" in held and bool(held["equivalent"].astype(bool).all())
    power = f"minimum detectable difference after Holm {mdd:.3g}" if np.isfinite(mdd) else "no power estimate"
    if clean:
        outcome = "difference"
        sentence = (
            f"On {reward}, {len(clean)} Holm-significant difference(s) with no named confound: "
            + "; ".join(clean[:3])
            + ("; ..." if len(clean) > 3 else "")
            + f" ({power})."
        )
    elif equivalent:
        outcome = "equivalence"
        sentence = (
            f"On {reward}, every pair of the {n_pairs} is equivalent within the declared margin {margin:g} on the "
            f"held-out reward (TOST at alpha {1 - cfg['statistics']['confidence']:.2g}; {power})."
        )
    else:
        outcome = "neither"
        confounded = [f"{t} [confound: {c}]" for t, c in found if c]
        sentence = (
            f"On {reward}, no Holm-significant difference free of a named confound and "
            + (
                f"no equivalence of every pair within {margin:g}"
                if np.isfinite(margin)
                else "no equivalence margin declared"
            )
            + (f" ({int(held['equivalent'].astype(bool).sum())} of {n_pairs} pairs equivalent)" if n_pairs else "")
            + f"; {power}"
            + (f"; confounded: {'; '.join(confounded)}" if confounded else "")
            + "."
        )
    return {"outcome": outcome, "sentence": sentence, "reward": reward, "mdd": mdd, "margin": margin, "pairs": n_pairs}


def header_notes(cfg: dict, pairs: pd.DataFrame) -> list[str]:
    """The verdict table's header lines on power and equivalence: per (model, reward) the minimum
    detectable difference after Holm on the held-out training reward and the declared margins."""
    notes = []
    margins = (cfg.get("analysis") or {}).get("equivalence_margin") or {}
    if margins:
        declared = ", ".join(f"{k} {v:g}" for k, v in margins.items())
        notes.append(f"equivalence margins declared before the runs: {declared}")
    if pairs is not None and len(pairs) and "mdd" in pairs:
        for (model, reward), part in pairs.groupby(["model", "reward"]):
            held = part[part["metric"] == f"reward/{reward}"]
            if len(held) and np.isfinite(held["mdd"].iloc[0]):
                r = held.iloc[0]
                spread = float(held["difference"].abs().max())  # max - min of the methods' means
                notes.append(
                    f"{model} / {reward}: minimum detectable difference of held-out reward after Holm "
                    f"({int(r['mdd_tests'])} pairs, power {(cfg.get('analysis') or {}).get('power', 0.8):g}, "
                    f"{r['test']}, sd {r['mdd_sd']:.3g}, n {int(r['mdd_n'])}): {r['mdd']:.3g}"
                    + (f" (spread of the method means {spread:.3g})" if np.isfinite(spread) else "")
                )
    return notes
