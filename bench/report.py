"""The comparative report: one self-contained HTML file (figures embedded as PNG data URIs)
rendered from the aggregated tables and the runs' sample grids; no training needed to re-render."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bench import failures  # noqa: E402
from bench.io import atomic_write_text  # noqa: E402

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f3f3f3}img{max-width:100%}.prov{color:#555;font-size:13px}figure{margin:1em 0}"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _file_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def read_table(path: Path) -> tuple[pd.DataFrame, list[str]]:
    header = [line[2:].strip() for line in path.read_text().splitlines() if line.startswith("#")]
    return pd.read_csv(path, comment="#"), header


def curve_figures(table: pd.DataFrame) -> list[tuple[str, str]]:
    """Eval metric vs training images, one panel per (model, training reward), CI bands."""
    figures = []
    metrics = [m for m in table["metric"].unique() if m.startswith(("reward/", "attribute/mean"))]
    for (model, reward), part in table.groupby(["model", "reward"]):
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            for algo, rows in part[part["metric"] == metric].groupby("algorithm"):
                rows = rows.sort_values("budget")
                ax.plot(rows["budget"], rows["mean"], marker="o", label=algo)
                ax.fill_between(rows["budget"], rows["ci_low"], rows["ci_high"], alpha=0.2)
            ax.set_title(metric, fontsize=10)
            ax.set_xlabel("training images")
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"{model}, trained on {reward}", fontsize=11)
        figures.append((f"Held-out evaluation vs budget: {model} / {reward}", _png(fig)))
    return figures


def seconds_figures(table: pd.DataFrame) -> list[tuple[str, str]]:
    """The training reward's eval curve against measured device-seconds (mean over seeds)."""
    figures = []
    for (model, reward), part in table.groupby(["model", "reward"]):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for algo, rows in part.groupby("algorithm"):
            r = rows[rows["metric"] == f"reward/{reward}"].set_index("budget")["mean"]
            sec = rows[rows["metric"] == "device_seconds"].set_index("budget")["mean"]
            if len(r) and len(sec):
                ax.plot(sec.reindex(r.index), r, marker="o", label=algo)
        ax.set_xlabel("device-seconds of training")
        ax.set_title(f"eval reward/{reward} vs seconds ({model})", fontsize=10)
        ax.legend(fontsize=8)
        figures.append((f"Eval reward vs device-seconds: {model} / {reward}", _png(fig)))
    return figures


def findings(table: pd.DataFrame, tables: Path) -> list[str]:
    """Sentences generated from the numbers: the best method per reward, the pairwise differences
    whose probability-of-improvement interval excludes 0.5, the credit spread at the start."""
    lines = []
    for (model, reward), part in table.groupby(["model", "reward"]):
        final = part[(part["metric"] == f"reward/{reward}") & (part["budget"] == part["budget"].max())]
        if len(final):
            best = final.sort_values("mean", ascending=False).iloc[0]
            lines.append(f"{model}, trained on {reward}: highest held-out {reward} after {best['budget']} images: "
                         f"{best['algorithm']} ({best['mean']:.4g} [{best['ci_low']:.4g}, {best['ci_high']:.4g}], "
                         f"{best['n_seeds']} seeds).")
        diverged = part.groupby("algorithm")["diverged"].max()
        for algo in diverged[diverged > 0].index:
            lines.append(f"{model} / {reward}: {algo} diverged in {int(diverged[algo])} seed(s); "
                         "its curves stop at the last good checkpoint.")
    poi_path = tables / "improvement.csv"
    if poi_path.is_file():
        poi = pd.read_csv(poi_path, comment="#")
        for (model, reward, metric), part in poi.groupby(["model", "reward", "metric"]):
            wins = part[part["significant"] & (part["poi"] > 0.5)]
            if len(wins):
                for w in wins.itertuples():
                    lines.append(f"{model} / {reward}, {metric}: {w.method} beats {w.over} "
                                 f"(P(improvement) {w.poi:.2f} [{w.ci_low:.2f}, {w.ci_high:.2f}], {w.n_seeds} seeds).")
            else:
                n = int(part["n_seeds"].min()) if len(part) else 0
                lines.append(f"{model} / {reward}, {metric}: no pairwise difference is significant at this "
                             f"confidence with {n} seeds.")
    probe_path = tables / "probe.csv"
    if probe_path.is_file():
        probe = pd.read_csv(probe_path, comment="#")
        start = probe[(probe["metric"] == "credit_gini") & (probe["budget"] == 0)]
        for (model, reward), part in start.groupby(["model", "reward"]):
            desc = ", ".join(f"{r.algorithm} {r.mean:.2f}" for r in part.sort_values("mean").itertuples())
            lines.append(f"{model} / {reward}: Gini of the per-step credit at the start (0 = equal credit for "
                         f"every step): {desc}.")
    return lines


def probe_figures(probe: pd.DataFrame) -> list[tuple[str, str]]:
    """Per-step credit share heat maps (start and final budget) and gradient SNR vs budget."""
    figures = []
    for (model, reward), part in probe.groupby(["model", "reward"]):
        credit = part[part["metric"].str.startswith("credit_share/")].copy()
        credit["step"] = credit["metric"].str.split("/").str[1].astype(int)
        budgets = sorted(credit["budget"].unique())
        shown = [budgets[0], budgets[-1]] if len(budgets) > 1 else budgets
        algos = sorted(credit["algorithm"].unique())
        fig, axes = plt.subplots(1, len(shown), figsize=(6 * len(shown), 0.45 * len(algos) + 1.6), squeeze=False)
        for ax, budget in zip(axes[0], shown):
            grid = credit[credit["budget"] == budget].pivot_table(index="algorithm", columns="step", values="mean")
            grid = grid.reindex(algos)
            im = ax.imshow(grid.to_numpy(), aspect="auto", cmap="viridis", vmin=0)
            ax.set_yticks(range(len(algos)), algos, fontsize=8)
            ax.set_xlabel("sampler step (0 = first, noisiest)")
            ax.set_title(f"credit share per step, budget {budget}", fontsize=10)
            fig.colorbar(im, ax=ax, fraction=0.03)
        figures.append((f"Per-step credit share: {model} / {reward}", _png(fig)))
        snr = part[part["metric"] == "snr"]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for algo, rows in snr.groupby("algorithm"):
            rows = rows.sort_values("budget")
            ax.plot(rows["budget"], rows["mean"], marker="o", label=algo)
            ax.fill_between(rows["budget"], rows["ci_low"], rows["ci_high"], alpha=0.2)
        if len(snr) and (snr["mean"] > 0).all():
            ax.set_yscale("log")
        ax.set_xlabel("training images")
        ax.set_title("gradient SNR = ||mean g||^2 / tr Cov(g)", fontsize=10)
        ax.legend(fontsize=8)
        figures.append((f"Gradient signal-to-noise: {model} / {reward}", _png(fig)))
    return figures


def sample_grids(runs_root: Path, table: pd.DataFrame) -> list[tuple[str, str]]:
    grids = []
    for (model, reward, algo), rows in table.groupby(["model", "reward", "algorithm"]):
        for budget in sorted(rows["budget"].unique()):
            path = runs_root / model / reward / algo / "seed0" / "samples" / f"{budget}.png"
            if not path.is_file():
                seeds = sorted((runs_root / model / reward / algo).glob(f"seed*/samples/{budget}.png"))
                path = seeds[0] if seeds else path
            if path.is_file():
                grids.append((f"{algo} ({model}, {reward}) after {budget} images", _file_png(path)))
    return grids


def render(tables: Path, runs_root: Path, out: Path) -> Path:
    table, header = read_table(tables / "eval.csv")
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>t2i-rl-bench report</title>",
             f"<style>{CSS}</style></head><body><h1>t2i-rl-bench: comparative report</h1>",
             "<div class='prov'>" + "<br>".join(html.escape(h) for h in header) + "</div>"]
    parts.append("<h2>What the study says</h2><ul>")
    parts += [f"<li>{html.escape(line)}</li>" for line in findings(table, tables)]
    parts.append("</ul><p class='prov'>Generated from the tables; intervals are 95% percentile bootstraps "
                 "over seeds, which are too narrow with few seeds.</p>")
    parts.append(failures.html_section(tables))  # runs that did not finish, with the reason
    parts.append("<h2>Reward and alignment vs budget</h2>")
    for title, uri in curve_figures(table):
        parts.append(f"<figure><img alt='{html.escape(title)}' src='{uri}'><figcaption>{html.escape(title)}"
                     "</figcaption></figure>")
    for title, uri in seconds_figures(table):
        parts.append(f"<figure><img alt='{html.escape(title)}' src='{uri}'><figcaption>{html.escape(title)}"
                     "</figcaption></figure>")
    if (tables / "probe.csv").is_file():
        probe, _ = read_table(tables / "probe.csv")
        parts.append("<h2>Gradient variance and per-step credit</h2>")
        for title, uri in probe_figures(probe):
            parts.append(f"<figure><img alt='{html.escape(title)}' src='{uri}'><figcaption>{html.escape(title)}"
                         "</figcaption></figure>")
    parts.append("<h2>Samples (fixed held-out prompts and seeds)</h2>")
    for title, uri in sample_grids(runs_root, table):
        parts.append(f"<figure><img alt='{html.escape(title)}' src='{uri}'><figcaption>{html.escape(title)}"
                     "</figcaption></figure>")
    if (tables / "derived.csv").is_file():
        derived, _ = read_table(tables / "derived.csv")
        parts.append("<h2>Convergence, quality at matched reward, collapse</h2>"
                     + derived.to_html(index=False, float_format=lambda v: f"{v:.4g}"))
    table = table[~table["metric"].str.startswith("attribute/") | (table["metric"] == "attribute/mean")]
    final = table[table["budget"] == table.groupby(["model", "reward", "algorithm"])["budget"].transform("max")]
    parts.append("<h2>Final budget</h2>" + final.to_html(index=False, float_format=lambda v: f"{v:.4g}"))
    parts.append("</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n".join(parts))
    return out
