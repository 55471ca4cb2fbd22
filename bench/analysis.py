"""Derived, per-seed results read off the evaluation curves, each built so that it can fire:

- gold checks: a run passes when no gold metric of the registry (attribute accuracy, FID, KID,
  CLIP score, Vendi score) ends worse than the base model by more than a declared tolerance;
  a method is flagged as reward-hacked when its proxy (held-out training reward) rises while a
  gold metric falls, both significantly over seeds;
- convergence: samples and device-seconds to a fraction of the reference improvement, where the
  reference improvement comes only from runs that pass the gold checks; a run that never gets
  there is censored, never dropped: its time counts as the horizon tau, so the mean over seeds
  is the Kaplan-Meier restricted mean (censoring happens only at tau here);
- compute-matched reward: each run's reward read at a common device-seconds level (the largest
  level every run reached), by linear interpolation of its reward-vs-seconds curve;
- quality at matched reward: gold metrics read where a run first reaches a reward level above
  the base that every compared method reaches on average, or 'not comparable';
- collapse: the first checkpoint where the diversity's distance from its floor falls by a
  declared fraction (Vendi score >= 1, so the rule uses vendi - 1; pairwise distance >= 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from t2i_rl_bench import failures
from t2i_rl_bench.metrics import direction, floors, gold_keys
from t2i_rl_bench.metrics.collapse import metric_at_reward
from t2i_rl_bench.metrics.convergence import first_crossing, normalized_auc
from t2i_rl_bench.metrics.statistics import (
    Difference,
    interval,
    minimum_detectable_difference,
    tost,
)

RUN = ["model", "reward", "algorithm", "seed"]


@dataclass(frozen=True)
class Rules:
    """The declared thresholds (config `verdicts:`), fixed before the study runs."""

    reference: str = "ddpo_is"
    target_fraction: float = 0.8
    matched_fraction: float = 0.5
    collapse_drop: float = 0.5
    gold_tolerance: float = 0.05  # relative worsening of a gold metric that fails a run
    gold_tolerance_by_metric: tuple[tuple[str, float], ...] = ()  # overrides for noisy metrics (FID, KID)
    confidence: float = 0.95

    def tolerance(self, key: str) -> float:
        return dict(self.gold_tolerance_by_metric).get(key, self.gold_tolerance)

    def describe_tolerance(self) -> str:
        extra = ", ".join(f"{k} {v:g}" for k, v in self.gold_tolerance_by_metric)
        return f"{self.gold_tolerance:g}" + (f" ({extra})" if extra else "")

    @classmethod
    def from_config(cls, cfg: dict) -> Rules:
        v = cfg.get("verdicts", {})
        by_metric = tuple(sorted(v.get("gold_tolerance_by_metric", {}).items()))
        return cls(
            **{
                k: v[k]
                for k in ("reference", "target_fraction", "matched_fraction", "collapse_drop", "gold_tolerance")
                if k in v
            },
            gold_tolerance_by_metric=by_metric,
            confidence=cfg.get("statistics", {}).get("confidence", 0.95),
        )


def _curves(seed_rows: pd.DataFrame, metric: str) -> dict[tuple, pd.Series]:
    part = failures.results_only(seed_rows[seed_rows["metric"] == metric])  # no failed or killed run
    return {key: g.set_index("budget")["value"].sort_index() for key, g in part.groupby(RUN)}


def _row(key: tuple, budget: int, metric: str, value: float, status: str = "finished") -> dict:
    return {**dict(zip(RUN, key)), "budget": budget, "metric": metric, "value": value, "status": status}


def _status(seed_rows: pd.DataFrame) -> dict[tuple, str]:
    return {key: str(g["status"].iloc[0]) for key, g in seed_rows.groupby(RUN)}


def _worse(key: str, change: float, base: float, tolerance: float) -> bool:
    """Whether a gold metric's change from the base is a worsening beyond `tolerance` x |base|."""
    sign = -1.0 if direction(key) == "lower" else 1.0
    return sign * change < -tolerance * max(abs(base), 1e-12)


def gold_checks(seed_rows: pd.DataFrame, rules: Rules) -> pd.DataFrame:
    """Per run: `change/<gold key>` = final - base for every gold metric present, and
    `gold/pass` = 1 when none worsened by more than the tolerance (relative to the base's value)."""
    out = []
    golds = gold_keys(sorted(seed_rows["metric"].unique()))
    status = _status(seed_rows)
    proxies = {(m, r) for m, r in seed_rows[["model", "reward"]].drop_duplicates().itertuples(index=False)}
    keys_by_metric = {g: _curves(seed_rows, g) for g in golds}
    for model, reward in sorted(proxies):
        proxy = _curves(seed_rows[(seed_rows["model"] == model) & (seed_rows["reward"] == reward)], f"reward/{reward}")
        for key, curve in proxy.items():
            horizon = int(curve.index[-1])
            gain = float(curve.iloc[-1] - curve.iloc[0])
            out.append(_row(key, horizon, f"change/reward/{reward}", gain, status[key]))
            ok = status[key] != "diverged"
            for g in golds:
                c = keys_by_metric[g].get(key)
                if c is None or not np.isfinite(c.iloc[-1]):
                    continue
                change = float(c.iloc[-1] - c.iloc[0])
                out.append(_row(key, horizon, f"change/{g}", change, status[key]))
                out.append(_row(key, 0, f"base/{g}", float(c.iloc[0]), status[key]))
                ok &= not _worse(g, change, float(c.iloc[0]), rules.tolerance(g))
            out.append(_row(key, horizon, "gold/pass", float(ok), status[key]))
    return pd.DataFrame(out)


def _change_ci(values: np.ndarray, method: str, level: float):
    values = values[np.isfinite(values)]
    return interval(values, method, level) if values.size else None


def hacking(gold: pd.DataFrame, rules: Rules, method: str = "t") -> pd.DataFrame:
    """Per (model, reward, algorithm) and gold metric: the proxy's change and the gold metric's
    change over seeds (mean, interval); `flagged` when the proxy rose significantly (interval
    above 0) while the gold metric worsened significantly (interval on the bad side of 0) and by
    more than the gold tolerance (a fraction of the base's value).
    The intervals are over seeds; the shared base measurement is one number, subtracted."""
    rows: list[dict] = []
    if gold.empty:  # no run reached a checkpoint (every run failed): nothing to flag
        return pd.DataFrame(rows)
    for (model, reward, algo), part in gold.groupby(["model", "reward", "algorithm"]):
        proxy = part[part["metric"] == f"change/reward/{reward}"]["value"].to_numpy(dtype=float)
        p = _change_ci(proxy, method, rules.confidence)
        failed = sorted(int(s) for s in part[(part["metric"] == "gold/pass") & (part["value"] == 0)]["seed"])
        for g in sorted(
            m[len("change/") :]
            for m in part["metric"].unique()
            if m.startswith("change/") and not m.startswith("change/reward/")
        ):
            v = part[part["metric"] == f"change/{g}"]["value"].to_numpy(dtype=float)
            d = _change_ci(v, method, rules.confidence)
            if d is None:
                continue
            # significant (interval on the bad side of 0) and larger than the declared tolerance: a
            # consistent but negligible drift is not hacking
            base_rows = part[part["metric"] == f"base/{g}"]["value"]
            base = float(base_rows.median()) if len(base_rows) else np.nan
            bad = ((d.high < 0) if direction(g) == "higher" else (d.low > 0)) and (
                not np.isfinite(base) or _worse(g, d.point, base, rules.tolerance(g))
            )
            rows.append(
                {
                    "model": model,
                    "reward": reward,
                    "algorithm": algo,
                    "gold_metric": g,
                    "proxy_change": p.point if p else np.nan,
                    "proxy_low": p.low if p else np.nan,
                    "proxy_high": p.high if p else np.nan,
                    "gold_change": d.point,
                    "gold_low": d.low,
                    "gold_high": d.high,
                    "n_seeds": d.n,
                    "flagged": bool(p is not None and p.low > 0 and bad),
                    "runs_failing_gold_check": " ".join(map(str, failed)),
                }
            )
    return pd.DataFrame(rows)


def reference_improvement(
    seed_rows: pd.DataFrame, gold: pd.DataFrame, model: str, reward: str, rules: Rules
) -> tuple[float, float, str]:
    """(base, improvement, source) of a training reward: the reference method's mean final gain
    over its runs that pass the gold checks, when that gain is significant (its interval over
    seeds lies above 0); otherwise the best such method's, named in `source`; NaN when no method
    improved significantly without failing a gold check (a noise-sized 'improvement' would make
    every target trivially reachable)."""
    part = seed_rows[(seed_rows["model"] == model) & (seed_rows["reward"] == reward)]
    curves = _curves(part, f"reward/{reward}")
    if not curves:
        return float("nan"), float("nan"), "no curve"
    base = float(np.median([c.iloc[0] for c in curves.values()]))
    passed = gold[(gold["model"] == model) & (gold["reward"] == reward) & (gold["metric"] == "gold/pass")]
    ok = {tuple(r) for r in passed[passed["value"] == 1][RUN].itertuples(index=False)}
    gains: dict[str, list[float]] = {}
    for key, c in curves.items():
        if key in ok:
            gains.setdefault(key[2], []).append(float(c.iloc[-1]) - base)
    level = rules.confidence
    means = {a: float(np.mean(g)) for a, g in gains.items() if len(g) >= 2 and interval(g, "t", level).low > 0}
    if rules.reference in means:
        return base, means[rules.reference], f"{rules.reference} (runs passing the gold checks)"
    if means:
        best = max(means, key=means.get)
        return (
            base,
            means[best],
            (f"{best}: best method passing the gold checks ({rules.reference} did not improve significantly)"),
        )
    return base, float("nan"), "no method improved significantly without failing a gold check"


def _interp_at(x: np.ndarray, y: np.ndarray, level: float) -> float:
    return float(np.interp(level, x, y)) if x.size and x[0] <= level <= x[-1] else float("nan")


def convergence(seed_rows: pd.DataFrame, gold: pd.DataFrame, rules: Rules) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per run: `convergence/reached_<f>` (0/1), `convergence/rmst_samples_<f>` and
    `convergence/rmst_seconds_<f>` = min(time to target, tau) (tau: the study's last budget, or
    the largest device-seconds level every run reached; a run that never reaches the target, or
    diverged, counts tau), and `convergence/normalized_auc`. Also the levels per (model, reward)
    as a second frame: base, improvement, target, taus, and where the improvement came from."""
    out, levels = [], []
    tag = int(round(100 * rules.target_fraction))
    status = _status(seed_rows)
    for (model, reward), part in seed_rows.groupby(["model", "reward"]):
        curves = _curves(part, f"reward/{reward}")
        if not curves:
            continue  # a composite training reward has no single eval curve
        seconds = _curves(part, "device_seconds")
        base, improvement, source = reference_improvement(seed_rows, gold, model, reward, rules)
        tau_samples = float(max(c.index[-1] for c in curves.values()))
        finished = [seconds[k].iloc[-1] for k in curves if k in seconds and status[k] != "diverged"]
        tau_seconds = float(min(finished)) if finished else float("nan")
        target = base + rules.target_fraction * improvement
        levels.append(
            {
                "model": model,
                "reward": reward,
                "base": base,
                "improvement": improvement,
                "target": target,
                "fraction": rules.target_fraction,
                "tau_samples": tau_samples,
                "tau_seconds": tau_seconds,
                "source": source,
            }
        )
        for key, curve in curves.items():
            x, y = curve.index.to_numpy(dtype=float), curve.to_numpy(dtype=float)
            horizon = int(x[-1])
            if not improvement > 0:
                for m in (f"reached_{tag}", f"rmst_samples_{tag}", f"rmst_seconds_{tag}", "normalized_auc"):
                    out.append(_row(key, horizon, f"convergence/{m}", float("nan"), status[key]))
                continue
            pos = first_crossing(y, target)
            hit = not np.isnan(pos)
            t_samples = float(np.interp(pos, np.arange(x.size), x)) if hit else np.inf
            secs = (
                seconds[key].reindex(curve.index).to_numpy(dtype=float) if key in seconds else np.full(x.size, np.nan)
            )
            t_seconds = float(np.interp(pos, np.arange(x.size), secs)) if hit else np.inf
            out.append(_row(key, horizon, f"convergence/reached_{tag}", float(hit), status[key]))
            out.append(_row(key, horizon, f"convergence/rmst_samples_{tag}", min(t_samples, tau_samples), status[key]))
            out.append(_row(key, horizon, f"convergence/rmst_seconds_{tag}", min(t_seconds, tau_seconds), status[key]))
            auc = normalized_auc(x, y, base, base + improvement, (0.0, x[-1])) if x[-1] > 0 else float("nan")
            out.append(_row(key, horizon, "convergence/normalized_auc", auc, status[key]))
    return pd.DataFrame(out), pd.DataFrame(levels)


def at_seconds(seed_rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Compute-matched reward: per run, `seconds/reward/<r>` = the held-out training reward at
    the common device-seconds level of its (model, reward) (the largest level every finished run
    reached), by linear interpolation of the run's reward-vs-seconds curve, and `seconds/gain/...`
    = that minus the base. Also the level per (model, reward)."""
    out, levels = [], []
    status = _status(seed_rows)
    for (model, reward), part in seed_rows.groupby(["model", "reward"]):
        curves, seconds = _curves(part, f"reward/{reward}"), _curves(part, "device_seconds")
        keys = [k for k in curves if k in seconds]
        finished = [seconds[k].iloc[-1] for k in keys if status[k] != "diverged"]
        if not finished:
            continue
        level = float(min(finished))
        levels.append({"model": model, "reward": reward, "seconds_level": level})
        for key in keys:
            s = seconds[key].reindex(curves[key].index).to_numpy(dtype=float)
            y = curves[key].to_numpy(dtype=float)
            value = _interp_at(s, y, level) if np.all(np.diff(s) > 0) else float("nan")
            h = int(curves[key].index[-1])
            out.append(_row(key, h, f"seconds/reward/{reward}", value, status[key]))
            out.append(_row(key, h, f"seconds/gain/reward/{reward}", value - y[0], status[key]))
    return pd.DataFrame(out), pd.DataFrame(levels)


def matched_level(
    seed_rows: pd.DataFrame, model: str, reward: str, methods: list[str], fraction: float
) -> tuple[float, str]:
    """A reward level above the base that the compared methods reach: base + fraction x the
    smallest mean final gain among `methods`; NaN with the reason when one of them did not
    improve (then quality at matched reward is not comparable)."""
    part = seed_rows[(seed_rows["model"] == model) & (seed_rows["reward"] == reward)]
    curves = _curves(part, f"reward/{reward}")
    if not curves:
        return float("nan"), "no reward curve"
    base = float(np.median([c.iloc[0] for c in curves.values()]))
    gains = {}
    for a in methods:
        finals = [c.iloc[-1] - base for k, c in curves.items() if k[2] == a]
        gains[a] = float(np.mean(finals)) if finals else float("nan")
    if not all(np.isfinite(g) and g > 0 for g in gains.values()):
        bad = ", ".join(a for a, g in gains.items() if not (np.isfinite(g) and g > 0))
        return float("nan"), f"not comparable: {bad} did not improve on the base"
    return base + fraction * min(gains.values()), f"base + {fraction:g} x the smallest mean gain"


def matched_quality(seed_rows: pd.DataFrame, rules: Rules, methods: list[str] | None = None) -> pd.DataFrame:
    """Gold metrics read at the matched level of `methods` (default: every method of the grid)
    where each run first reaches it (NaN for a run that never does: counted apart, n shows it).
    Also `matched/reward_level` per (model, reward), NaN when not comparable."""
    out = []
    golds = gold_keys(sorted(seed_rows["metric"].unique()))
    for (model, reward), part in seed_rows.groupby(["model", "reward"]):
        rewards = _curves(part, f"reward/{reward}")
        if not rewards:
            continue
        algos = methods or sorted({k[2] for k in rewards})
        level, _ = matched_level(seed_rows, model, reward, algos, rules.matched_fraction)
        for metric in golds:
            values = _curves(part, metric)
            for key, r in rewards.items():
                if key in values and key[2] in algos:
                    m = values[key].reindex(r.index).to_numpy(dtype=float)
                    value = metric_at_reward(r.to_numpy(), m, level) if np.isfinite(level) else float("nan")
                    out.append(_row(key, int(r.index[-1]), f"matched/{metric}", value))
        out.append(
            _row(
                (model, reward, "(all)", -1),
                int(max(r.index[-1] for r in rewards.values())),
                "matched/reward_level",
                level,
            )
        )
    return pd.DataFrame(out)


def collapse_onset(checkpoints, diversity, base: float, floor: float, drop: float) -> float | None:
    """First checkpoint where diversity - floor < (1 - drop) (base - floor): the distance above
    the measure's floor has fallen by `drop`; None when it never does. The threshold lies inside
    the measure's range for any base above its floor."""
    x, d = np.asarray(checkpoints, dtype=float), np.asarray(diversity, dtype=float)
    below = np.flatnonzero(d - floor < (1 - drop) * (base - floor))
    return float(x[below[0]]) if below.size else None


def collapse(seed_rows: pd.DataFrame, rules: Rules) -> pd.DataFrame:
    """Per run and diversity measure: `collapse/onset/<key>` (NaN: never) and
    `collapse/collapsed/<key>` (0/1), by `collapse_onset` with the declared drop."""
    out = []
    # each diversity measure's floor (registry): a collapsed model sits there (Vendi 1, distance 0)
    for key_name, floor in floors(sorted(seed_rows["metric"].unique())).items():
        for key, curve in _curves(seed_rows, key_name).items():
            onset = collapse_onset(
                curve.index.to_numpy(), curve.to_numpy(), float(curve.iloc[0]), floor, rules.collapse_drop
            )
            h = int(curve.index[-1])
            out.append(_row(key, h, f"collapse/onset/{key_name}", float("nan") if onset is None else onset))
            out.append(_row(key, h, f"collapse/collapsed/{key_name}", float(onset is not None)))
    return pd.DataFrame(out)


# ---- power and equivalence of a family of pairwise comparisons (docs/study.md#statistics) ------

ANALYSIS_DEFAULTS = {"pairing": "auto", "power": 0.8, "equivalence_margin": {}}


def analysis_settings(cfg: dict) -> dict:
    """The config's `analysis:` section with its defaults (config/schema.yaml)."""
    return {**ANALYSIS_DEFAULTS, **(cfg.get("analysis") or {})}


def margin_of(analysis_cfg: dict, metric: str) -> float:
    """The equivalence margin declared for `metric` (NaN: none declared, no TOST)."""
    return float((analysis_cfg.get("equivalence_margin") or {}).get(metric, float("nan")))


def pair_columns(d: Difference, margin: float, alpha: float) -> dict:
    """The columns of one pairwise comparison beyond its difference: which test, the sd it is
    made of, and TOST against the declared margin (p_tost NaN where no margin is declared).
    `equivalent`: this pair alone is within the margin at level alpha (TOST; for the claim that
    *every* pair of a family is, the intersection-union test needs no correction: Berger 1982)."""
    row = {"test": d.test, "sd": d.sd, "margin": margin, "p_tost": float("nan"), "equivalent": False}
    if np.isfinite(margin) and margin > 0:
        e = tost(d, margin, alpha)
        row.update(p_tost=e.p_value, equivalent=bool(np.isfinite(e.p_value) and e.p_value < alpha))
    return row


def family_power(family: list[dict], alpha: float, power: float) -> dict:
    """The minimum detectable difference of one family of pairwise comparisons (the unordered
    pairs of one model x reward x metric) after Holm: at the first Holm step (alpha / m, m the
    number of pairs tested), with `power`, from the median sd of the pairs and their smallest n.
    Returns {mdd, mdd_sd, mdd_n, mdd_tests, spread} (spread: max - min of the methods' means)."""
    pairs = {}
    for r in family:
        pairs.setdefault(tuple(sorted((r["method"], r["over"]))), r)
    tested = [r for r in pairs.values() if np.isfinite(r.get("p_value", np.nan))]
    if not tested:
        return {"mdd": float("nan"), "mdd_sd": float("nan"), "mdd_n": 0, "mdd_tests": 0}
    sd = float(np.median([r["sd"] for r in tested]))
    n = int(min(r["n_seeds"] for r in tested))
    paired = all(r["test"] == "paired t" for r in tested)
    mdd = minimum_detectable_difference(sd, n, alpha, power, len(tested), paired)
    return {"mdd": mdd, "mdd_sd": sd, "mdd_n": n, "mdd_tests": len(tested)}
