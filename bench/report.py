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
    parts.append("<h2>Reward and alignment vs budget</h2>")
    for title, uri in curve_figures(table):
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
    final = table[table["budget"] == table.groupby(["model", "reward", "algorithm"])["budget"].transform("max")]
    parts.append("<h2>Final budget</h2>" + final.to_html(index=False, float_format=lambda v: f"{v:.4g}"))
    parts.append("</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n".join(parts))
    return out
