"""What the study says about each claim: a verdict per (claim, model, training reward, compared
method), generated from the per-seed tables by the rules of the config's `verdicts:` section,
which is fixed before the study runs (defaults in config/schema.yaml).

Each line compares the claimed method with another one over seeds: effect = mean(method) -
mean(other) of the claim's measure, with the study's interval (`statistics.interval`) and a
Welch p-value. The p-values of all lines are corrected together by Holm-Bonferroni. A line is
*supported* when its corrected p is below 1 - confidence and the effect lies on the side the
metrics registry calls better, *contradicted* when significant on the other side, and
*equivalent* when it is not significant and the claim declares a `margin` that the whole
interval lies inside, *inconclusive* otherwise (also when a group has fewer than two seeds or
the measure is not comparable, with the reason); *not run* when the experiment behind it is off. `diverged` is an
absolute claim: supported when no seed diverged, with a Clopper-Pearson interval on the rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from t2i_rl_bench import analysis
from t2i_rl_bench.metrics import direction
from t2i_rl_bench.metrics.statistics import difference, holm

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


def _per_seed(frame: pd.DataFrame, model: str, reward: str, algo: str, key: str, at: str) -> np.ndarray:
    """One value per seed of a measure: at the final budget, the start, or the seed's mean over
    all budgets present (the same budgets for every method: equal samples)."""
    if frame is None or frame.empty:
        return np.array([])
    part = frame[
        (frame["model"] == model)
        & (frame["reward"] == reward)
        & (frame["algorithm"] == algo)
        & (frame["metric"] == key)
    ]
    part = part[np.isfinite(part["value"].to_numpy(dtype=float))]
    if part.empty:
        return np.array([])
    if at == "final":
        part = part[part["budget"] == part.groupby("seed")["budget"].transform("max")]
    elif at == "start":
        part = part[part["budget"] == part["budget"].min()]
    return part.groupby("seed")["value"].mean().to_numpy(dtype=float)


def _matched(tables: Tables, model: str, reward: str, algo: str, other: str, key: str, fraction: float):
    """Per-seed values of a gold metric at the reward level both methods reach (or the reason)."""
    level, why = analysis.matched_level(tables.eval, model, reward, [algo, other], fraction)
    if not np.isfinite(level):
        return np.array([]), np.array([]), why
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
    x: np.ndarray,
    y: np.ndarray,
    better: str | None,
    cfg_stats: dict,
    note: str,
) -> dict:
    d = difference(
        x,
        y,
        cfg_stats.get("interval", "t"),
        cfg_stats["confidence"],
        cfg_stats.get("bootstrap_resamples", 2000),
        cfg_stats.get("seed", 0),
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
        "note": note,
        "margin": float(claim.get("margin") or np.nan),
    }


def _diverged_line(claim: dict, model: str, reward: str, tables: Tables, confidence: float) -> dict:
    part = tables.eval[
        (tables.eval["model"] == model)
        & (tables.eval["reward"] == reward)
        & (tables.eval["algorithm"] == claim["method"])
    ]
    status = part.groupby("seed")["status"].first()
    n, k = int(status.size), int((status == "diverged").sum())
    alpha = 1 - confidence
    low = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    verdict = "inconclusive" if n == 0 else ("supported" if k == 0 else "contradicted")
    return {
        "id": claim["id"],
        "claim": claim["claim"],
        "model": model,
        "reward": reward,
        "method": claim["method"],
        "over": "",
        "measure": "diverged",
        "better": "lower",
        "effect": k / n if n else np.nan,
        "ci_low": low,
        "ci_high": high,
        "n_method": n,
        "n_over": 0,
        "p_value": np.nan,
        "note": f"{k} of {n} seeds diverged (rate with a Clopper-Pearson interval)",
        "verdict": verdict,
    }


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
    lines = []
    for claim in rules.get("claims", []):
        claim = {"over": "reference", "at": "final", **claim}
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
                better, note = direction(key), ""
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
                    elif "convergence/" in key and x.size == 0 and y.size == 0:
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
                lines.append(_line(claim, model, reward, other, x, y, better, stats_cfg, note))
    out = pd.DataFrame(lines)
    if out.empty:
        return out
    for col in ("p_value", "effect", "ci_low", "ci_high"):
        if col not in out:
            out[col] = np.nan
    tested = out["verdict"].isna() if "verdict" in out else pd.Series(True, index=out.index)
    out["p_holm"] = np.nan
    out.loc[tested, "p_holm"] = holm(out.loc[tested, "p_value"].to_numpy(dtype=float))
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
