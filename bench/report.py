"""The comparative report: one self-contained HTML file (figures embedded as PNG data URIs)
rendered from the aggregated tables and the runs' sample grids; no training needed to re-render.

Order: the headline table, the verdict per claim, findings, reward hacking (with the grids of
the flagged runs), curves against samples and device-seconds, the gradient probe, aggregates
across rewards, sample grids with their prompts, the derived tables. Every metric's direction
and role comes from the metrics registry; the interval's name comes from the tables' provenance.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from t2i_rl_bench import calibration, failures, frontier, mechanisms  # noqa: E402
from t2i_rl_bench.chain import chain_section  # noqa: E402
from t2i_rl_bench.io import atomic_write_text  # noqa: E402
from t2i_rl_bench.metrics import direction, gold_keys, lookup  # noqa: E402
from t2i_rl_bench.provenance import warn_version_drift  # noqa: E402
from t2i_rl_bench.tables import fmt_number  # noqa: E402

CSS = """body{font-family:system-ui,sans-serif;max-width:1320px;margin:2em auto;padding:0 1em;color:#222}
.scroll{overflow-x:auto;max-width:100%;margin:.5em 0}table{border-collapse:collapse;font-size:12px;margin:0}
td,th{border:1px solid #ccc;padding:3px 5px;text-align:right;vertical-align:top}th{background:#f3f3f3;
font-weight:600}td.l,th.l{text-align:left}td.wrap{min-width:11em;max-width:22em}td small{color:#444}
img{max-width:100%}.prov{color:#555;font-size:13px;overflow-wrap:anywhere}
figure{margin:1.2em 0}figcaption{font-size:13px;color:#333}.supported{background:#d9f2d9}
.contradicted{background:#f8d7d7}.inconclusive{background:#f3f3f3}.notrun{color:#888}.flag{color:#b00;font-weight:600}
.prompts{font-size:12px;color:#444;margin:.2em 0 0 0;padding-left:1.2em}code{overflow-wrap:anywhere}"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _file_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def read_table(path: Path) -> tuple[pd.DataFrame, list[str]]:
    header = [line[2:].strip() for line in path.read_text().splitlines() if line.startswith("#")]
    return pd.read_csv(path, comment="#"), header


MISSING = "–"  # a value that does not exist (never 'nan')


def _f(v, digits: int = 3) -> str:
    """`digits` significant digits, as the tables print them (tables.fmt_number); MISSING for
    a missing value."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return MISSING if v is None or str(v).lower() == "nan" else html.escape(str(v))
    return MISSING if not np.isfinite(v) else fmt_number(v, digits)


def _ci(m, lo, hi, stacked: bool = False) -> str:
    """'mean [low, high]'; stacked: the interval small, under the mean (narrow table columns), as
    '±half-width' when it is symmetric (Student-t), else '[low, high]'."""
    try:
        m, lo, hi = float(m), float(lo), float(hi)
    except (TypeError, ValueError):
        return _f(m)
    if not (np.isfinite(m) and np.isfinite(lo) and np.isfinite(hi)):
        return _f(m)
    if not stacked:
        return f"{_f(m)} [{_f(lo)}, {_f(hi)}]"
    if np.isclose(m - lo, hi - m, rtol=0.02, atol=1e-12):
        return f"{_f(m)}<br><small>±{_f((hi - lo) / 2)}</small>"
    return f"{_f(m)}<br><small>[{_f(lo)}, {_f(hi)}]</small>"


def _html_table(
    header: list[str], rows: list[list[str]], left: int = 1, classes: list[str] | None = None, last_left: bool = False
) -> str:
    """A table in its own horizontally scrolling box (a wide table never widens the page); the
    last column, when left-aligned text, wraps."""

    def align(i: int) -> str:
        if last_left and i == len(header) - 1:
            return "l wrap"
        return "l" if i < left else ""

    th = "".join(f"<th class='{align(i)}'>{h}</th>" for i, h in enumerate(header))
    body = []
    for j, row in enumerate(rows):
        cls = f" class='{classes[j]}'" if classes else ""
        body.append(f"<tr{cls}>" + "".join(f"<td class='{align(i)}'>{c}</td>" for i, c in enumerate(row)) + "</tr>")
    return f"<div class='scroll'><table><tr>{th}</tr>{''.join(body)}</table></div>"


def _arrow(key: str) -> str:
    d = direction(key)
    return {"higher": " ↑", "lower": " ↓"}.get(d, "")


def _label(key: str) -> str:
    """Axis label: the registry's unit of the metric, else the held-out mean of a score."""
    metric = lookup(key)
    return metric.unit if metric is not None and metric.unit else "held-out mean"


# ---- sections --------------------------------------------------------------------------------


def headline_section(tables: Path) -> str:
    path = tables / "headline.csv"
    if not path.is_file():
        return ""
    head, _ = read_table(path)
    golds = [c[len("change/") :] for c in head.columns if c.startswith("change/") and not c.endswith(("_low", "_high"))]
    header = (
        [
            "model / training reward",
            "method",
            "n",
            "reward gain at the final budget",
            "reward gain at equal device-seconds",
        ]
        + [f"Δ {html.escape(g).replace('/', '/<wbr>')}{_arrow(g)}" for g in golds]
        + ["images", "device-s", "reward hacking", "verdicts (details below)"]
    )
    rows = []
    for r in head.to_dict("records"):
        hacked = f"<span class='flag'>{html.escape(r['hacked'])}</span>" if isinstance(r["hacked"], str) else ""
        verdict = _verdict_summary(r["verdicts"]) if isinstance(r["verdicts"], str) else ""
        rows.append(
            [
                f"{html.escape(r['model'])} /<br>{html.escape(r['reward'])}",
                r["method"],
                str(int(r["n_seeds"]))
                + (  # the seeds in no mean (failed, killed, diverged before the final budget), marked
                    f"<br><span class='flag'>⚠ {html.escape(r['not_finished'])}</span>"
                    if isinstance(r.get("not_finished"), str) and r["not_finished"]
                    else ""
                ),
                _ci(r["gain"], r["gain_low"], r["gain_high"], True),
                _ci(r["gain_at_seconds"], r["gain_at_seconds_low"], r["gain_at_seconds_high"], True)
                + f"<br><small>at {_f(r['seconds_level'])} s</small>",
            ]
            + [_ci(r[f"change/{g}"], r[f"change/{g}_low"], r[f"change/{g}_high"], True) for g in golds]
            + [str(int(r["images"])), _f(r["device_seconds"]), hacked, f"<small>{verdict}</small>"]
        )
    # the verdict column reads left to right
    return (
        "<h2>Headline</h2><p>One row per method and training reward. Gains are held-out training reward minus "
        "the base model's, mean over seeds with the interval named above; 'at equal device-seconds' reads each "
        "seed's reward-vs-seconds curve (linear interpolation) at the largest device-seconds level every "
        "finished run of that reward reached. Δ = final − base of each gold metric (arrow: better direction, "
        "from the metrics registry).</p>" + _html_table(header, rows, left=2, last_left=True)
    )


def _verdict_summary(text: str) -> str:
    """'id/over: verdict; ...' -> supported and contradicted claim ids, and how many are open."""
    by: dict[str, list[str]] = {}
    for item in filter(None, (t.strip() for t in text.split(";"))):
        name, _, verdict = item.rpartition(": ")
        by.setdefault(verdict, []).append(name)
    parts = [
        f"<span class='supported'>supported: {html.escape(', '.join(by['supported']))}</span>"
        if by.get("supported")
        else "",
        f"<span class='contradicted'>contradicted: {html.escape(', '.join(by['contradicted']))}</span>"
        if by.get("contradicted")
        else "",
        f"{len(by.get('inconclusive', []))} inconclusive" if by.get("inconclusive") else "",
    ]
    return "<br>".join(p for p in parts if p)


def verdict_section(tables: Path) -> str:
    path = tables / "verdicts.csv"
    if not path.is_file():
        return ""
    v, header = read_table(path)
    rows, classes = [], []
    for r in v.to_dict("records"):
        eff = _ci(r.get("effect"), r.get("ci_low", np.nan), r.get("ci_high", np.nan))
        n = (
            ""
            if not np.isfinite(r.get("n_method", np.nan))
            else (f"{int(r['n_method'])} vs {int(r['n_over'])}" if r.get("n_over") else f"{int(r['n_method'])}")
        )
        rows.append(
            [
                html.escape(r["claim"]),
                f"{r['model']} / {r['reward']}",
                html.escape(str(r["over"])) if isinstance(r["over"], str) else "",
                f"<b>{r['verdict']}</b>",
                eff,
                n,
                _f(r.get("p_holm")),
                f"<small>{html.escape(r['note']) if isinstance(r['note'], str) else ''}</small>",
            ]
        )
        classes.append(r["verdict"].replace(" ", ""))
    note = header[-1] if header else ""
    return (
        "<h2>What the study says about each claim</h2><p>Each claim is judged by a rule written in the study "
        "config before the study ran (<code>verdicts:</code>). <i>Supported</i> / <i>contradicted</i>: the "
        "difference is significant after Holm-Bonferroni correction over all lines, on the better / worse side; "
        "<i>inconclusive</i>: not at this budget and number of seeds.</p>"
        + _html_table(
            ["claim", "model / reward", "vs", "verdict", "effect [interval]", "seeds", "p (Holm)", "how"],
            rows,
            left=3,
            classes=classes,
            last_left=True,
        )
        + f"<p class='prov'>{html.escape(note)}</p>"
    )


def findings(table: pd.DataFrame, tables: Path) -> list[str]:
    """Sentences generated from the numbers: who improved on the base, significant pairwise
    differences (Holm-corrected), divergence, the credit spread and SNR against its floor."""
    lines = []
    head_path = tables / "headline.csv"
    if head_path.is_file():
        head, _ = read_table(head_path)
        for (model, reward), part in head.groupby(["model", "reward"]):
            up = part[part["gain_low"] > 0]["method"].tolist()
            down = part[part["gain_high"] < 0]["method"].tolist()
            lines.append(
                f"{model}, trained on {reward}: held-out reward above the base (interval excludes 0) for "
                f"{', '.join(up) or 'no method'}; below it for {', '.join(down) or 'no method'}."
            )
    poi_path = tables / "improvement.csv"
    if poi_path.is_file():
        poi = pd.read_csv(poi_path, comment="#")
        for (model, reward, metric), part in poi.groupby(["model", "reward", "metric"]):
            sign = -1 if direction(metric) == "lower" else 1
            wins = part[part["significant"] & (sign * part["difference"] > 0)]
            n = int(part["n_seeds"].min()) if len(part) else 0
            if len(wins):
                pairs = ", ".join(
                    f"{w.method} > {w.over} (by {_f(abs(w.difference))}, P(improvement) {w.poi:.2f})"
                    for w in wins.itertuples()
                )
                lines.append(
                    f"{model} / {reward}, {metric}{_arrow(metric)}: significant after Holm's correction "
                    f"({n} seeds): {pairs}."
                )
            else:
                lines.append(
                    f"{model} / {reward}, {metric}: no pairwise difference is significant after Holm's "
                    f"correction with {n} seeds."
                )
    diverged = table[table["diverged"] > 0].groupby(["model", "reward", "algorithm"])["diverged"].max()
    for (model, reward, algo), k in diverged.items():
        lines.append(
            f"{model} / {reward}: {algo} diverged in {int(k)} seed(s); its curves stop at the last good "
            "checkpoint and its convergence counts the horizon."
        )
    return lines


def hacking_section(tables: Path, runs_root: Path, prompts: list[str]) -> str:
    path = tables / "hacking.csv"
    if not path.is_file():
        return ""
    hack, header = read_table(path)
    flagged = hack[hack["flagged"]]
    parts = [
        "<h2>Reward hacking: proxy up, gold metric down</h2><p>Proxy = the held-out training reward; gold = "
        "the registry's gold metrics on held-out prompts.</p>",
        f"<p class='prov'>{html.escape(header[-1])}</p>",
    ]
    if flagged.empty:
        parts.append("<p>No method is flagged.</p>")
        return "".join(parts)
    rows = [
        [
            f"{r.model} / {r.reward}",
            r.algorithm,
            r.gold_metric,
            _ci(r.proxy_change, r.proxy_low, r.proxy_high),
            _ci(r.gold_change, r.gold_low, r.gold_high),
            str(r.runs_failing_gold_check) if isinstance(r.runs_failing_gold_check, str) else "",
        ]
        for r in flagged.itertuples()
    ]
    parts.append(
        _html_table(
            ["model / reward", "method", "gold metric", "proxy change", "gold change", "seeds over the gold tolerance"],
            rows,
            left=3,
        )
    )
    for (model, reward, algo), _ in flagged.groupby(["model", "reward", "algorithm"]):
        run = runs_root / model / reward / algo / "seed0" / "samples"
        grids = sorted(run.glob("*.png"), key=lambda p: int(p.stem)) if run.is_dir() else []
        if grids:
            parts.append(
                _grid_figure(
                    grids[-1], f"{algo} ({model}, {reward}), seed 0, after {grids[-1].stem} images (flagged)", prompts
                )
            )
    return "".join(parts)


def _prompt_list(prompts: list[str], n: int, columns: int = 8) -> str:
    shown = prompts[:n]
    items = []
    for r in range(0, len(shown), columns):
        row = shown[r : r + columns]
        runs, i = [], 0
        while i < len(row):
            j = i
            while j < len(row) and row[j] == row[i]:
                j += 1
            runs.append(f"{html.escape(row[i])}" + (f" (×{j - i})" if j - i > 1 else ""))
            i = j
        items.append(f"<li>row {r // columns + 1}, left to right: {'; '.join(runs)}</li>")
    return f"<ul class='prompts'>{''.join(items)}</ul>"


def _grid_figure(path: Path, title: str, prompts: list[str]) -> str:
    return (
        f"<figure><img alt='{html.escape(title)}' src='{_file_png(path)}' style='width:100%'>"
        f"<figcaption>{html.escape(title)}{_prompt_list(prompts, 16) if prompts else ''}</figcaption></figure>"
    )


def _base_value(part: pd.DataFrame, metric: str) -> float:
    base = part[(part["metric"] == metric) & (part["budget"] == 0)]["mean"]
    return float(base.median()) if len(base) else float("nan")


def curve_figures(table: pd.DataFrame) -> list[tuple[str, str]]:
    """Per (model, training reward): the training reward against training images and against
    device-seconds, then every gold metric against images; the base model as a dashed line,
    intervals as bands, one shared legend outside the panels."""
    figures = []
    for (model, reward), part in table.groupby(["model", "reward"]):
        golds = gold_keys(sorted(m for m in part["metric"].unique() if m != "attribute/all"))
        panels = [("reward", f"reward/{reward}"), ("seconds", f"reward/{reward}")] + [("gold", g) for g in golds]
        cols = min(3, len(panels))
        nrows = (len(panels) + cols - 1) // cols
        fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.3 * nrows), squeeze=False)
        handles = {}
        for ax, (kind, metric) in zip(axes.flat, panels):
            for algo, rows in part[part["metric"] == metric].groupby("algorithm"):
                rows = rows.sort_values("budget")
                x = rows["budget"].to_numpy(dtype=float)
                if kind == "seconds":
                    sec = part[(part["algorithm"] == algo) & (part["metric"] == "device_seconds")]
                    x = sec.set_index("budget")["mean"].reindex(rows["budget"]).to_numpy(dtype=float)
                (line,) = ax.plot(x, rows["mean"], marker="o", ms=3, label=algo)
                ax.fill_between(x, rows["ci_low"], rows["ci_high"], alpha=0.15, color=line.get_color())
                handles[algo] = line
            base = _base_value(part, metric)
            if np.isfinite(base):
                handles["base model"] = ax.axhline(base, color="k", ls="--", lw=1, label="base model")
            ax.set_title(f"{metric}{_arrow(metric)}", fontsize=10)
            ax.set_xlabel("device-seconds of training (s)" if kind == "seconds" else "training images")
            ax.set_ylabel(_label(metric), fontsize=9)
            ax.tick_params(labelsize=8)
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_visible(False)
        fig.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9)
        fig.suptitle(f"{model}, trained on {reward} (mean over seeds, band: interval)", fontsize=11)
        fig.tight_layout()
        figures.append((f"Held-out evaluation vs training images and device-seconds: {model} / {reward}", _png(fig)))
    return figures


CURVE_NAMES = {"heldout": "held-out", "train": "training prompts"}  # a calibration curve's prompt set


def calibration_section(tables: Path, runs_root: Path) -> str:
    """The learning-rate calibration (tables/calibration.csv, written when a study runs a method at
    several rates): the rule, its choice per method, and each method's training and held-out curves."""
    path = tables / "calibration.csv"
    if not path.is_file():
        return ""
    table, header = read_table(path)
    notes = [h for h in header if h.startswith(("selection rule", "recommended"))]
    budgets = calibration.curve_columns(table.columns)
    scored = ["score"] if "score" in table.columns else []  # calibrations before the score option
    shown = table[["method", "lr", "mean_train_reward", *scored, *budgets, "chosen"]].copy()
    shown.columns = [
        "method",
        "lr",
        "mean training reward",
        *["the rule's score"] * len(scored),
        *[f"{CURVE_NAMES[c.split('_')[0]]} @{c.rsplit('_', 1)[1]}" for c in budgets],
        "chosen",
    ]
    parts = ["<h2>Learning-rate calibration</h2>", *(f"<p>{html.escape(n)}</p>" for n in notes)]
    parts.append(
        "<div class='scroll'>" + shown.to_html(index=False, float_format=_f, na_rep=MISSING, border=0) + "</div>"
    )
    methods = sorted(table["method"].unique())
    fig, axes = plt.subplots(2, len(methods), figsize=(2.9 * len(methods), 5.4), squeeze=False)
    for col, method in enumerate(methods):
        rows = table[table["method"] == method]
        for _, row in rows.iterrows():
            runs = sorted((runs_root / str(row["model"]) / str(row["reward"]) / str(row["label"])).glob("seed*"))
            curves = [calibration.training_curve(r) for r in runs]
            curves = [c for c in curves if len(c)]
            style = {"lw": 2.2 if row["chosen"] else 1.0}
            if curves:
                curve = pd.concat(curves).groupby("images_seen")["reward_mean"].mean()
                smooth = curve.rolling(4, min_periods=1).mean()
                axes[0, col].plot(smooth.index, smooth.to_numpy(), label=f"lr {row['lr']:g}", **style)
            x = [int(c.rsplit("_", 1)[1]) for c in budgets]
            axes[1, col].plot(x, row[budgets].to_numpy(dtype=float), marker="o", ms=3, **style)
        axes[0, col].set_title(f"{method}", fontsize=10)
        if axes[0, col].get_legend_handles_labels()[0]:  # no training curves without the run folders
            axes[0, col].legend(fontsize=7)
        axes[1, col].set_xlabel("training images", fontsize=8)
        for ax in axes[:, col]:
            ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("training reward\n(4-round moving mean)", fontsize=8)
    on = "held-out" if not budgets or budgets[0].startswith("heldout") else "training-prompt"
    axes[1, 0].set_ylabel(f"{on} reward", fontsize=8)
    fig.tight_layout()
    title = f"Training reward per round (top) and {on} reward at each budget (bottom); thick: chosen rate"
    alt = html.escape(title)
    parts.append(f"<figure><img alt='{alt}' src='{_png(fig)}'><figcaption>{alt}</figcaption></figure>")
    return "\n".join(parts)


def _within_probe(part: pd.DataFrame, algo: str, rows: pd.DataFrame) -> pd.DataFrame:
    """A probe measured once (n = 1: the shared base) has no interval over seeds; show the
    probe's own interval for the bias-corrected SNR there (`snr_unbiased_low/high`)."""
    mine = part[part["algorithm"] == algo]
    lo = mine[mine["metric"] == "snr_unbiased_low"].set_index("budget")["mean"]
    hi = mine[mine["metric"] == "snr_unbiased_high"].set_index("budget")["mean"]
    rows = rows.copy()
    single = (rows["n_seeds"] <= 1) & rows["budget"].isin(lo.index)
    rows.loc[single, "ci_low"] = lo.reindex(rows.loc[single, "budget"]).to_numpy()
    rows.loc[single, "ci_high"] = hi.reindex(rows.loc[single, "budget"]).to_numpy()
    return rows


def _start_snr(part: pd.DataFrame) -> str:
    """The bias-corrected SNR of each method at the base model with the probe's own interval:
    the check that the probe resolves a signal where training starts."""
    start = part[part["budget"] == part["budget"].min()]
    items = []
    for algo, g in start.groupby("algorithm"):
        v = g.set_index("metric")["mean"]
        if {"snr_unbiased", "snr_unbiased_low", "snr_unbiased_high"} <= set(v.index):
            verdict = "excludes 0" if v["snr_unbiased_low"] > 0 else "contains 0: noise at this K"
            items.append(
                f"{algo} {_f(v['snr_unbiased'])} [{_f(v['snr_unbiased_low'])}, "
                f"{_f(v['snr_unbiased_high'])}] ({verdict})"
            )
    return (
        (
            "<p>Bias-corrected SNR at the base model, with the interval of the single probe (normal "
            "approximation over its K minibatch gradients): " + "; ".join(items) + ".</p>"
        )
        if items
        else ""
    )


def probe_section(tables: Path) -> str:
    path = tables / "probe.csv"
    if not path.is_file():
        return ""
    probe, header = read_table(path)
    parts = ["<h2>Gradient signal and per-step credit</h2>"]
    parts += [f"<p class='prov'>{html.escape(h)}</p>" for h in header if "SNR" in h or "scale" in h]
    for (model, reward), part in probe.groupby(["model", "reward"]):
        k = part[part["metric"] == "k"]["mean"]
        floor = 1.0 / float(k.iloc[0]) if len(k) else float("nan")
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
        handles = {}
        for ax, metric, ref, ref_label in (
            (axes[0], "snr", floor, f"noise floor 1/K = {floor:.3g}"),
            (axes[1], "snr_unbiased", 0.0, "no signal (0)"),
        ):
            for algo, rows in part[part["metric"] == metric].groupby("algorithm"):
                rows = rows.sort_values("budget")
                if metric == "snr_unbiased":
                    rows = _within_probe(part, algo, rows)
                (line,) = ax.plot(rows["budget"], rows["mean"], marker="o", ms=3, label=algo)
                ax.fill_between(rows["budget"], rows["ci_low"], rows["ci_high"], alpha=0.15, color=line.get_color())
                handles[algo] = line
            handles[ref_label] = ax.axhline(ref, color="k", ls="--", lw=1)
            ax.set_xlabel("training images")
            ax.set_ylabel("SNR (dimensionless)")
            ax.set_title("gradient SNR ||mean g||²/tr Cov" if metric == "snr" else "bias-corrected SNR", fontsize=10)
        fig.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9)
        fig.tight_layout()
        parts.append(
            f"<figure><img src='{_png(fig)}'><figcaption>Gradient SNR, {model} / {reward}: the dashed line "
            "is what pure noise gives. Bands: interval over seeds; at a probe measured once (the base "
            "model), the probe's own interval.</figcaption></figure>"
        )
        parts.append(_start_snr(part))
        credit = part[part["metric"].str.startswith("credit_share/")].copy()
        if len(credit):
            credit["step"] = credit["metric"].str.split("/").str[1].astype(int)
            budgets = sorted(credit["budget"].unique())
            shown = [budgets[0], budgets[-1]] if len(budgets) > 1 else budgets
            algos = sorted(credit["algorithm"].unique())
            fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 0.4 * len(algos) + 1.8), squeeze=False)
            for ax, budget in zip(axes[0], shown):
                grid = credit[credit["budget"] == budget].pivot_table(index="algorithm", columns="step", values="mean")
                im = ax.imshow(grid.reindex(algos).to_numpy(), aspect="auto", cmap="viridis", vmin=0)
                ax.set_yticks(range(len(algos)), algos, fontsize=8)
                ax.set_xlabel("sampler step (0 = first, noisiest)")
                ax.set_title("base model" if budget == 0 else f"after {budget} training images", fontsize=10)
                fig.colorbar(im, ax=ax, fraction=0.04, label="share of gradient norm")
            fig.tight_layout()
            parts.append(
                f"<figure><img src='{_png(fig)}'><figcaption>Per-step credit share, {model} / {reward} "
                "(0 = no credit; equal credit = 1/steps).</figcaption></figure>"
            )
        final = part[part["budget"] == part["budget"].max()]
        # every registered probe measure, scale-free ones first
        keys = sorted(
            (m for m in final["metric"].unique() if lookup(m) is not None), key=lambda m: (not lookup(m).scale_free, m)
        )
        rows = []
        for algo, g in final.groupby("algorithm"):
            vals = g.set_index("metric")
            rows.append(
                [algo]
                + [
                    _ci(vals.loc[m, "mean"], vals.loc[m, "ci_low"], vals.loc[m, "ci_high"]) if m in vals.index else "–"
                    for m in keys
                ]
            )
        names = [
            f"{m}{_arrow(m)}" if (lookup(m) is None or lookup(m).scale_free) else f"{m} (per method only)" for m in keys
        ]
        parts.append(
            f"<p>At the final budget ({int(final['budget'].max())} images), {model} / {reward}; "
            f"noise floor of snr 1/K = {floor:.3g}. tr Cov and ||mean g||² scale with each method's loss and "
            "are not comparable across rows.</p>" + _html_table(["method"] + names, rows)
        )
    return "".join(parts)


def across_section(tables: Path) -> str:
    path = tables / "across_rewards.csv"
    if not path.is_file():
        return ""
    across, header = read_table(path)
    iqm = across[across["statistic"] == "iqm_normalised_gain"]
    parts = ["<h2>Across training rewards (rliable)</h2>", f"<p class='prov'>{html.escape(header[-1])}</p>"]
    parts.append(
        _html_table(
            ["method", "IQM of normalised gain", "tasks", "runs"],
            [[r.method, _ci(r.value, r.ci_low, r.ci_high), str(r.tasks), str(r.runs)] for r in iqm.itertuples()],
        )
    )
    prof_path = tables / "performance_profile.csv"
    if prof_path.is_file():
        prof = pd.read_csv(prof_path)
        fig, ax = plt.subplots(figsize=(6, 3.4))
        for algo, g in prof.groupby("method"):
            ax.step(g["tau"], g["fraction"], where="post", label=algo)
        ax.axvline(0.0, color="k", ls="--", lw=1, label="base model (0)")
        ax.set_xlabel("normalised gain τ")
        ax.set_ylabel("fraction of runs with score > τ")
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
        parts.append(
            f"<figure><img src='{_png(fig)}'><figcaption>Performance profiles (run-score distributions)."
            "</figcaption></figure>"
        )
    return "".join(parts)


def _citable(tables: Path) -> dict:
    cit = tables.parent / "citable.json" if tables.name == "tables" else tables / "citable.json"
    return json.loads(cit.read_text()) if cit.is_file() else {}


def _statistics_note(tables: Path) -> str:
    st = _citable(tables).get("statistics", {})
    if not st:
        return ""
    return (
        f"<p><b>Statistics.</b> Every interval in this report is a {html.escape(st['description'])} unless "
        "named otherwise; pairwise and verdict tests are paired t-tests by seed where the methods share their seeds "
        "(else Welch's), corrected by Holm-Bonferroni (over the pairs of one metric; over the findings' verdict "
        "lines, implementation checks apart); aggregates across rewards use rliable's "
        "stratified bootstrap. A row measured once for every seed (the base model) has no interval.</p>"
    )


def _prompts(tables: Path) -> list[str]:
    """The evaluation prompts in the order the sample grids show them (from citable.json)."""
    ev = _citable(tables).get("evaluation", {})
    try:
        from t2i_rl_bench.evaluate import eval_prompts

        return [p for p in eval_prompts(ev["prompts"], ev["max_prompts"]) for _ in range(ev["images_per_prompt"])]
    except (KeyError, ImportError, TypeError):
        return []


def sample_grids(runs_root: Path, table: pd.DataFrame, prompts: list[str]) -> list[str]:
    """Per (model, training reward): the base model once, then each method after its final
    budget (its lowest seed that has samples: a study need not run seed 0), each with the prompts
    under it."""
    out = []
    for (model, reward), part in table.groupby(["model", "reward"]):
        first = True
        for algo in sorted(part["algorithm"].unique()):
            seeds = sorted(
                (int(d.name[4:]), d / "samples")
                for d in (runs_root / model / reward / algo).glob("seed*")
                if d.name[4:].isdigit() and (d / "samples").is_dir()
            )
            if not seeds:
                continue
            seed, folder = seeds[0]
            grids = sorted(folder.glob("*.png"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1)
            if first and grids and grids[0].stem == "0":
                out.append(_grid_figure(grids[0], f"Base model ({model}), held-out prompts", prompts))
                first = False
            if grids and grids[-1].stem != "0":
                out.append(
                    _grid_figure(
                        grids[-1],
                        f"{algo} ({model}, trained on {reward}), seed {seed}, after {grids[-1].stem} images",
                        prompts,
                    )
                )
    return out


def derived_section(tables: Path) -> str:
    parts = []
    levels_path = tables / "levels.csv"
    if levels_path.is_file():
        levels, _ = read_table(levels_path)
        parts.append(
            "<h3>Targets and levels</h3>"
            + _html_table(
                list(levels.columns),
                [
                    [_f(v) if not isinstance(v, str) else html.escape(v) for v in r]
                    for r in levels.itertuples(index=False)
                ],
                left=2,
            )
        )
    path = tables / "derived.csv"
    if path.is_file():
        derived, header = read_table(path)
        shown = derived[
            derived["metric"].str.startswith(
                ("convergence/", "matched/", "collapse/collapsed", "gold/", "seconds/gain/")
            )
        ]
        shown = shown[shown["metric"] != "matched/reward_level"]
        # per-seed 0/1 outcomes: shown as 'k of n' (a t-interval on a proportion leaves [0, 1])
        binary = {
            m for m in shown["metric"].unique() if "/reached_" in m or m.startswith(("collapse/collapsed", "gold/pass"))
        }
        for (model, reward), part in shown.groupby(["model", "reward"]):
            algos = sorted(part["algorithm"].unique())
            rows = []
            for metric, g in part.groupby("metric"):
                # one row per method: its final budget (a failed seed's row may sit at an earlier one)
                vals = g.sort_values("budget").drop_duplicates("algorithm", keep="last").set_index("algorithm")
                cells = []
                for a in algos:
                    if a not in vals.index:
                        cells.append("–")
                    elif metric in binary:  # a fraction of seeds: k of n, no interval
                        n = int(vals.loc[a, "n_seeds"])
                        cells.append(f"{int(round(vals.loc[a, 'mean'] * n))} of {n}" if n else "–")
                    else:
                        cells.append(
                            _ci(vals.loc[a, "mean"], vals.loc[a, "ci_low"], vals.loc[a, "ci_high"], True)
                            + f"<br><small>n={int(vals.loc[a, 'n_seeds'])}</small>"
                        )
                rows.append([f"{metric}{_arrow(metric)}"] + cells)
            parts.append(
                f"<h3>{html.escape(model)} / {html.escape(reward)}</h3>" + _html_table(["measure"] + algos, rows)
            )
        parts += [f"<p class='prov'>{html.escape(h)}</p>" for h in header[4:]]
    return ("<h2>Convergence, quality at matched reward, collapse, gold checks</h2>" + "".join(parts)) if parts else ""


def recursive_section(tables: Path, table: pd.DataFrame) -> str:
    """The self-consuming loop: per (model, training reward) a figure of each registered measure
    against the generation, one line per method (band: interval over seeds), one panel column per
    variant, the base model's value (from the evaluation) as a dashed line; then the decay rates
    (slope per generation) with their intervals, variants side by side."""
    path, decay_path = tables / "recursive.csv", tables / "recursive_decay.csv"
    if not path.is_file():
        return ""
    rec, header = read_table(path)
    decay = read_table(decay_path)[0] if decay_path.is_file() else pd.DataFrame(columns=rec.columns)
    parts = ["<h2>The self-consuming loop</h2>", *(f"<p class='prov'>{html.escape(h)}</p>" for h in header[4:])]
    for (model, reward), part in rec.groupby(["model", "reward"]):
        variants = list(dict.fromkeys(part["variant"]))
        measures = sorted(
            (m for m in part["metric"].unique() if lookup(m) is not None), key=lambda m: (not lookup(m).gold, m)
        )  # gold checks first
        fig, axes = plt.subplots(
            len(measures),
            len(variants),
            figsize=(3.3 * len(variants), 2.3 * len(measures)),
            squeeze=False,
            sharex=True,
            sharey="row",
        )  # variants compare along a row
        handles = {}
        for i, metric in enumerate(measures):
            base = _base_value(table[(table["model"] == model) & (table["reward"] == reward)], metric)
            for j, variant in enumerate(variants):
                ax = axes[i, j]
                for algo, rows in part[(part["variant"] == variant) & (part["metric"] == metric)].groupby("algorithm"):
                    rows = rows.sort_values("generation")
                    (line,) = ax.plot(rows["generation"], rows["mean"], marker="o", ms=3, label=algo)
                    ax.fill_between(
                        rows["generation"], rows["ci_low"], rows["ci_high"], alpha=0.15, color=line.get_color()
                    )
                    handles[algo] = line
                if np.isfinite(base):
                    handles["base model"] = ax.axhline(base, color="k", ls="--", lw=1)
                if i == 0:
                    ax.set_title(variant, fontsize=10)
                if j == 0:
                    unit = lookup(metric).unit
                    ax.set_ylabel(f"{metric}{_arrow(metric)}" + (f"\n{unit}" if unit else ""), fontsize=8)
                if i == len(measures) - 1:
                    ax.set_xlabel("generation")
                ax.tick_params(labelsize=7)
        fig.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9)
        fig.tight_layout()
        parts.append(
            f"<figure><img src='{_png(fig)}'><figcaption>Self-consuming loop, {html.escape(model)} / "
            f"{html.escape(reward)}: each measure against the generation (0 = the method's final model), "
            "mean over seeds with the interval as a band; dashed: the base model (measured by the "
            "evaluation, so only for its measures).</figcaption></figure>"
        )
        d = decay[(decay["model"] == model) & (decay["reward"] == reward)]
        rows = []
        for (metric, algo), g in d.groupby(["metric", "algorithm"]):
            if lookup(metric) is None:
                continue
            vals = g.set_index("variant")
            rows.append(
                [f"{metric[len('decay/') :]}{_arrow(metric)}", algo]
                + [
                    _ci(vals.loc[v, "mean"], vals.loc[v, "ci_low"], vals.loc[v, "ci_high"], True)
                    if v in vals.index
                    else "–"
                    for v in variants
                ]
            )
        if rows:
            parts.append(
                f"<p>Decay rate per generation (least-squares slope over generations 0..G, per seed; mean "
                f"over seeds with the interval), {html.escape(model)} / {html.escape(reward)}. Arrow: the "
                "better direction of the measure, so the better sign of its slope.</p>"
                + _html_table(["measure", "method", *variants], rows, left=2)
            )
    return "".join(parts)


def render(tables: Path, runs_root: Path, out: Path) -> Path:
    table, header = read_table(tables / "eval.csv")
    prompts = _prompts(tables)
    drift = warn_version_drift(tables / "eval.csv", "report")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>t2i-rl-bench report</title>",
        f"<style>{CSS}</style></head><body><h1>t2i-rl-bench: comparative report</h1>",
        "<div class='prov'>" + "<br>".join(html.escape(h) for h in header) + "</div>",
        (
            "<p class='flag'>Installed versions differ from those the tables were made with: "
            + html.escape("; ".join(drift))
            + "</p>"
        )
        if drift
        else "",
        _statistics_note(tables),
    ]
    parts.append(headline_section(tables))
    parts.append(verdict_section(tables))
    parts.append(chain_section(tables))  # PCPO's claim link by link (bench/chain.py)
    parts.append(
        "<h2>Findings</h2><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in findings(table, tables)) + "</ul>"
    )
    parts.append(failures.html_section(tables))  # runs that did not finish, with the reason
    parts.append(hacking_section(tables, runs_root, prompts))
    parts.append("<h2>Reward, gold metrics and compute</h2>")
    for title, uri in curve_figures(table):
        parts.append(
            f"<figure><img alt='{html.escape(title)}' src='{uri}'><figcaption>{html.escape(title)}"
            "</figcaption></figure>"
        )
    parts.append(mechanisms.section(tables))  # what each method had on, and what acted (bench/mechanisms.py)
    parts.append(frontier.section(tables))  # the reward-quality frontier (bench/frontier.py)
    parts.append(calibration_section(tables, runs_root))
    parts.append(probe_section(tables))
    parts.append(across_section(tables))
    parts.append("<h2>Samples (fixed held-out prompts and seeds)</h2>")
    parts += sample_grids(runs_root, table, prompts)
    parts.append(derived_section(tables))
    parts.append(recursive_section(tables, table))
    parts.append("</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n".join(parts))
    return out


QUOTED = ("acceptance", "headline", "verdicts")  # what a README quotes between markers, in this order


def acceptance_sentence(tables: Path) -> str:
    """The headline's one sentence: the acceptance rule's outcome as verdicts.md's header states it
    (docs/study.md#acceptance); '' when the study wrote none."""
    source = tables / "verdicts.md"
    if not source.is_file():
        return ""
    for line in source.read_text().splitlines():
        m = re.match(r"<!-- acceptance \((\w+)\): (.*) -->$", line.strip())
        if m:
            return f"**Headline ({m.group(1)}, by the rule in docs/study.md#acceptance):** {m.group(2)}"
    return ""


def markers(name: str) -> tuple[str, str]:
    source = "verdicts.md's acceptance line" if name == "acceptance" else f"{name}.md"
    return f"<!-- {name}:begin (generated from results/tables/{source}) -->", f"<!-- {name}:end -->"


def quote_tables(readme: Path, tables: Path) -> bool:
    """Replace the text between each pair of markers in a README (`markers(name)` for the tables in
    QUOTED) with the study's table (tables/<name>.md, its provenance comment kept), so the README
    quotes the numbers the study made rather than typed ones. False when nothing was written."""
    text, quoted = readme.read_text(), False
    for name in QUOTED:
        begin, end = markers(name)
        source = tables / f"{name}.md"
        body = (
            acceptance_sentence(tables)
            if name == "acceptance"
            else source.read_text().strip()
            if source.is_file()
            else ""
        )
        if begin not in text or end not in text or not body:
            continue
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text, quoted = f"{head}{begin}\n{body}\n{end}{tail}", True
    if quoted:
        atomic_write_text(readme, text)
    return quoted
