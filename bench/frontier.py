"""The reward-quality frontier: what each method buys in held-out reward for what it gives up in
image quality, along each run's budget curve (docs/study.md#the-reward-quality-frontier).

Per run, at every evaluated budget b: gain(b) = held-out training reward - the base's, and for
each quality metric m (config `analysis.frontier.drift_metrics`, default FID and CLIP score)
drift_m(b) = its change from the base on its worse side (FID up, CLIP score down: positive =
worse). The run's curve (drift, gain) is piecewise linear between its checkpoints, starting at
the base (0, 0). Two readings at levels declared in the config before the data:

- gain at matched drift L (`analysis.frontier.drift_levels`): the largest gain on the curve
  while drift <= L, i.e. the best the run offered within that much quality loss (the base's 0
  when every checkpoint drifted further);
- drift at matched gain G (`analysis.frontier.gain_levels`): the smallest drift at which the
  curve reaches gain G; NaN (counted apart, `reached` gives how many) when it never does.

Per method the mean over seeds with the study's interval; between methods the paired test by
seed with Holm over the pairs of one (metric, level); and a figure of the mean curves with seed
bands (mean +- the interval at each budget, both axes).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from t2i_rl_bench.io import atomic_write_text
from t2i_rl_bench.metrics import direction
from t2i_rl_bench.metrics.statistics import compare, holm, interval

RUN = ["model", "reward", "algorithm", "seed"]
DEFAULT_DRIFT = ("quality/fid", "quality/clip_score")
DENSE = 64  # points per segment of a piecewise-linear curve


def settings(cfg: dict) -> dict:
    f = (cfg.get("analysis") or {}).get("frontier") or {}
    return {
        "drift_metrics": list(f.get("drift_metrics") or DEFAULT_DRIFT),
        "drift_levels": dict(f.get("drift_levels") or {}),
        "gain_levels": dict(f.get("gain_levels") or {}),
    }


def curves(seed_rows: pd.DataFrame, drift_metrics: list[str]) -> pd.DataFrame:
    """Per run and budget: gain of its training reward over the base and the worse-side drift of
    each quality metric present (columns drift/<metric>). Budget 0 is the base (0 everywhere)."""
    out = []
    for (_, reward), part in seed_rows.groupby(["model", "reward"]):
        key = f"reward/{reward}"
        wanted = [key, *[m for m in drift_metrics if m in set(part["metric"])]]
        wide = part[part["metric"].isin(wanted)].pivot_table(
            index=[*RUN, "budget"], columns="metric", values="value", aggfunc="mean"
        )
        if key not in wide:
            continue
        for run, g in wide.groupby(level=[0, 1, 2, 3]):
            g = g.droplevel([0, 1, 2, 3]).sort_index()
            if 0 not in g.index:
                continue
            base = g.loc[0]
            for budget, row in g.iterrows():
                rec = dict(zip(RUN, run), budget=int(budget), gain=float(row[key] - base[key]))
                for m in wanted[1:]:
                    sign = 1.0 if direction(m) == "lower" else -1.0  # worse side positive
                    rec[f"drift/{m}"] = float(sign * (row[m] - base[m]))
                out.append(rec)
    return pd.DataFrame(out)


def _dense(drift: np.ndarray, gain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The piecewise-linear curve through the checkpoints, sampled densely."""
    if drift.size < 2:
        return drift, gain
    t = np.linspace(0, 1, DENSE, endpoint=False)
    xs = [drift[i] + t * (drift[i + 1] - drift[i]) for i in range(drift.size - 1)] + [drift[-1:]]
    ys = [gain[i] + t * (gain[i + 1] - gain[i]) for i in range(gain.size - 1)] + [gain[-1:]]
    return np.concatenate(xs), np.concatenate(ys)


def gain_at_drift(drift, gain, level: float) -> float:
    """The largest gain on the piecewise-linear curve where drift <= level (NaN: no point)."""
    x, y = _dense(np.asarray(drift, dtype=float), np.asarray(gain, dtype=float))
    ok = np.isfinite(x) & np.isfinite(y) & (x <= level)
    return float(y[ok].max()) if ok.any() else float("nan")


def drift_at_gain(drift, gain, level: float) -> float:
    """The smallest drift on the piecewise-linear curve where gain >= level (NaN: never reached)."""
    x, y = _dense(np.asarray(drift, dtype=float), np.asarray(gain, dtype=float))
    ok = np.isfinite(x) & np.isfinite(y) & (y >= level)
    return float(x[ok].min()) if ok.any() else float("nan")


def readings(curve: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """Per run: gain at each declared drift level and drift at each declared gain level."""
    s = settings(cfg)
    out = []
    if curve.empty:
        return pd.DataFrame(out)
    for run, g in curve.groupby(RUN):
        g = g.sort_values("budget")
        reward = run[1]
        for m in s["drift_metrics"]:
            col = f"drift/{m}"
            if col not in g:
                continue
            for level in s["drift_levels"].get(m, []):
                value = gain_at_drift(g[col], g["gain"], level)
                out.append(
                    {**dict(zip(RUN, run)), "reading": "gain_at_drift", "metric": m, "level": level} | {"value": value}
                )
            for level in s["gain_levels"].get(reward, []):
                value = drift_at_gain(g[col], g["gain"], level)
                out.append(
                    {**dict(zip(RUN, run)), "reading": "drift_at_gain", "metric": m, "level": level} | {"value": value}
                )
    return pd.DataFrame(out)


def summary(read: pd.DataFrame, stats_cfg: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per method and reading: mean over seeds with the study's interval and how many seeds have
    a value; and the pairwise differences (paired by seed, Holm over the pairs of one reading)."""
    rows, pairs = [], []
    if read.empty:
        return pd.DataFrame(rows), pd.DataFrame(pairs)
    method = stats_cfg.get("interval", "t")
    level = stats_cfg.get("confidence", 0.95)
    keys = ["model", "reward", "reading", "metric", "level"]
    for k, part in read.groupby(keys):
        by = {a: dict(zip(g["seed"], g["value"])) for a, g in part.groupby("algorithm")}
        for a, d in by.items():
            v = np.array([x for x in d.values() if np.isfinite(x)])
            ci = interval(v, method, level) if v.size else None
            rows.append(
                {
                    **dict(zip(keys, k)),
                    "method": a,
                    "mean": ci.point if ci else np.nan,
                    "ci_low": ci.low if ci else np.nan,
                    "ci_high": ci.high if ci else np.nan,
                    "reached": int(v.size),
                    "n_runs": len(d),
                }
            )
        family = []
        names = sorted(by)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                d = compare(by[a], by[b], method, level, pairing=(stats_cfg.get("pairing") or "auto"))
                family.append(
                    {
                        **dict(zip(keys, k)),
                        "method": a,
                        "over": b,
                        "difference": d.effect,
                        "ci_low": d.low,
                        "ci_high": d.high,
                        "n": d.n_x,
                        "test": d.test,
                        "p_value": d.p_value,
                    }
                )
        adjusted = holm([f["p_value"] for f in family]) if family else []
        for f, p in zip(family, adjusted):
            f["p_holm"] = p
            f["significant"] = bool(np.isfinite(p) and p < 1 - level)
        pairs += family
    return pd.DataFrame(rows), pd.DataFrame(pairs)


def bands(curve: pd.DataFrame, stats_cfg: dict) -> pd.DataFrame:
    """Per method and budget: mean gain and mean drift of each metric with their intervals."""
    out = []
    if curve.empty:
        return pd.DataFrame(out)
    level = stats_cfg.get("confidence", 0.95)
    cols = ["gain", *[c for c in curve.columns if c.startswith("drift/")]]
    for (model, reward, algo, budget), g in curve.groupby(["model", "reward", "algorithm", "budget"]):
        rec = {"model": model, "reward": reward, "method": algo, "budget": int(budget), "n": len(g)}
        for c in cols:
            v = g[c].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            ci = interval(v, "t", level) if v.size else None
            rec[c], rec[f"{c}_low"], rec[f"{c}_high"] = (ci.point, ci.low, ci.high) if ci else (np.nan,) * 3
        out.append(rec)
    return pd.DataFrame(out)


NOTE = (
    "frontier: per run, gain = held-out training reward - base and drift = the quality metric's change from the base "
    "on its worse side, along the budget curve (piecewise linear from the base); gain_at_drift L = the largest gain "
    "while drift <= L; drift_at_gain G = the smallest drift at which the gain reaches G (reached: seeds that got "
    "there); levels declared in analysis.frontier before the runs; pairs paired by seed, Holm over the pairs of one "
    "reading"
)


def derived_rows(cfg: dict, seed_rows: pd.DataFrame) -> pd.DataFrame:
    """The per-run readings as rows of the derived table (metric
    `frontier/<reading>/<metric>/<level>`), so the derived table summarises them and a verdict
    can name them (`derived:frontier/drift_at_gain/quality/fid/0.01`)."""
    s = settings(cfg)
    curve = curves(seed_rows, s["drift_metrics"])
    if curve.empty or curve["budget"].nunique() < 2:
        return pd.DataFrame()
    read = readings(curve, cfg)
    if read.empty:
        return read
    last = curve.groupby(RUN)["budget"].max()
    return pd.DataFrame(
        {
            **{k: read[k] for k in RUN},
            "budget": [int(last[tuple(r)]) for r in read[RUN].itertuples(index=False)],
            "metric": "frontier/" + read["reading"] + "/" + read["metric"] + "/" + read["level"].map("{:g}".format),
            "value": read["value"],
            "status": "finished",
        }
    )


def reading_direction(key: str) -> str | None:
    """Which way a frontier reading is better: more gain at a drift, less drift at a gain."""
    if key.startswith("frontier/gain_at_drift/"):
        return "higher"
    if key.startswith("frontier/drift_at_gain/"):
        return "lower"
    return None


def write(cfg: dict, seed_rows: pd.DataFrame, stats_cfg: dict, out: Path, header) -> pd.DataFrame:
    """frontier.csv (per method and reading), frontier_pairs.csv, frontier_curves.csv (bands)
    and frontier_per_seed.csv; `header(notes)` gives the provenance comment lines. Returns the
    summary (empty when the study has no budget curve with a quality metric)."""
    s = settings(cfg)
    stats_cfg = {**stats_cfg, "pairing": (cfg.get("analysis") or {}).get("pairing", "auto")}
    curve = curves(seed_rows, s["drift_metrics"])
    if curve.empty or curve["budget"].nunique() < 2:
        return pd.DataFrame()
    read = readings(curve, cfg)
    summ, pairs = summary(read, stats_cfg)
    band = bands(curve, stats_cfg)
    levels = "; ".join(
        [f"drift levels {m}: {v}" for m, v in s["drift_levels"].items()]
        + [f"gain levels {r}: {v}" for r, v in s["gain_levels"].items()]
    )
    notes = [NOTE, levels or "no levels declared (analysis.frontier): curves only"]
    out.mkdir(parents=True, exist_ok=True)
    if len(summ):
        atomic_write_text(out / "frontier.csv", header(notes) + summ.to_csv(index=False, float_format="%.6g"))
    if len(pairs):
        atomic_write_text(out / "frontier_pairs.csv", header(notes) + pairs.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(out / "frontier_curves.csv", header(notes) + band.to_csv(index=False, float_format="%.6g"))
    curve.to_csv(out / "frontier_per_seed.csv", index=False)
    return summ


def read_pairs(tables: Path) -> pd.DataFrame:
    """frontier_pairs.csv of a tables folder (empty when the study wrote none)."""
    return _read(tables / "frontier_pairs.csv")


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, comment="#") if path.is_file() else pd.DataFrame()


def figure(band: pd.DataFrame, metric: str, title: str):
    """Mean gain against mean drift per method along the budgets, with seed bands (the interval
    of each axis at every budget, light error bars; the frame fits the mean curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    col = f"drift/{metric}"
    fig, ax = plt.subplots(figsize=(5.5, 4))
    xs, ys = [], []
    for algo, g in band.groupby("method"):
        g = g.sort_values("budget")
        x, y = g[col].to_numpy(dtype=float), g["gain"].to_numpy(dtype=float)
        xerr = np.abs(np.vstack([x - g[f"{col}_low"], g[f"{col}_high"] - x]))
        yerr = np.abs(np.vstack([y - g["gain_low"], g["gain_high"] - y]))
        line = ax.plot(x, y, marker="o", ms=3, label=algo)[0]
        ax.errorbar(
            x,
            y,
            xerr=np.nan_to_num(xerr),
            yerr=np.nan_to_num(yerr),
            fmt="none",
            ecolor=line.get_color(),
            alpha=0.3,
            elinewidth=0.8,
            capsize=0,
        )
        xs += list(x[np.isfinite(x)])
        ys += list(y[np.isfinite(y)])
    if xs and ys:  # frame the mean curves; a wide seed band runs off the frame rather than hiding them
        for values, setter in ((xs, ax.set_xlim), (ys, ax.set_ylim)):
            lo, hi = min(values), max(values)
            pad = 0.25 * (hi - lo) if hi > lo else 1e-3
            setter(lo - pad, hi + pad)
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel(f"{metric} drift from the base (worse side +)")
    ax.set_ylabel("held-out reward gain over the base")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return fig


def _interval_cell(m: float, lo: float, hi: float) -> str:
    """A report cell as the tables print it: 3 significant digits, the interval when there is one,
    the report's missing mark when there is no value (a method that never reached the level)."""
    from t2i_rl_bench.report import MISSING  # both import this module
    from t2i_rl_bench.tables import fmt_number

    if not np.isfinite(m):
        return MISSING
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return fmt_number(m)
    return f"{fmt_number(m)} [{fmt_number(lo)}, {fmt_number(hi)}]"


def section(tables: Path) -> str:
    """The report's section: the readings at the declared levels per method (mean [interval],
    seeds reaching the level), the Holm-significant pairs, and a figure per (model, reward,
    metric). Empty when the study wrote no frontier."""
    summ, pairs, band = (_read(tables / f) for f in ("frontier.csv", "frontier_pairs.csv", "frontier_curves.csv"))
    if band.empty:
        return ""
    from t2i_rl_bench.report import _png  # the report's own figure encoding

    parts = [
        "<h2>Reward-quality frontier</h2>",
        "<p>Per run, the held-out training-reward gain over the base against the drift of a quality metric from the "
        "base (worse side positive), along its budget curve; points: mean over seeds at each budget, bars: the "
        "interval over seeds on each axis. <i>Gain at matched drift L</i>: the largest gain a run reached while its "
        "drift stayed within L; <i>drift at matched gain G</i>: the smallest drift at which it reached G. The levels "
        "were declared in the config (<code>analysis.frontier</code>) before the runs.</p>",
    ]
    for (model, reward), part in band.groupby(["model", "reward"]):
        for col in [c for c in part.columns if c.startswith("drift/") and not c.endswith(("_low", "_high"))]:
            metric = col[len("drift/") :]
            if part[col].notna().any():
                fig = figure(part, metric, f"{model} / {reward}: gain vs {metric} drift")
                parts.append(f"<figure><img alt='frontier {html.escape(metric)}' src='{_png(fig)}'></figure>")
    if len(summ):
        rows = []
        for r in summ.itertuples():
            cell = _interval_cell(r.mean, r.ci_low, r.ci_high)
            rows.append(
                f"<tr><td>{html.escape(r.model)} / {html.escape(r.reward)}</td><td>{html.escape(r.reading)}</td>"
                f"<td>{html.escape(r.metric)}</td><td>{r.level:g}</td><td>{html.escape(r.method)}</td>"
                f"<td>{cell}</td><td>{int(r.reached)}/{int(r.n_runs)}</td></tr>"
            )
        parts.append(
            "<table><tr><th>model / reward</th><th>reading</th><th>metric</th><th>level</th><th>method</th>"
            "<th>mean [interval]</th><th>seeds</th></tr>" + "".join(rows) + "</table>"
        )
    if len(pairs):
        sig = pairs[pairs["significant"].astype(bool)]
        items = [
            f"{r.reading} {r.metric} at {r.level:g}: {r.method} - {r.over} = {r.difference:.4g} "
            f"(Holm p {r.p_holm:.2g}, {r.test})"
            for r in sig.itertuples()
        ]
        parts.append(
            "<p>Holm-significant pairs: "
            + ("; ".join(html.escape(i) for i in items) if items else "none at the declared levels")
            + ".</p>"
        )
    return "\n".join(parts)
