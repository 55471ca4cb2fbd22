"""PCPO's claim as a chain, followed link by link on the study's own tables (docs/mechanisms.md#the-chain):
uneven per-step credit (before / after PCPO's reweighting) -> per-step and projected gradient
variance -> convergence (images to the declared target) -> quality drift and collapse under
recursive training. Each link shows the measure for PCPO and the reference with intervals and the
verdict of the matching declared claim (verdicts.csv), and reads as *holds* (supported),
*breaks* (contradicted), *inconclusive*, or *not measured* (the table or the claim is missing).
The chain holds as far as its first link that does not hold.

The self-consuming loop runs as its own presets (config/recursive.yaml on attribute_match,
config/collapse.yaml on shape_iou); when the study's tables have no recursive tables, the section
reads the presets' (results/studies/<preset>/tables, beside results/tables) and says so.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

# an 'equivalent' line (no difference beyond the claim's declared margin) means the claimed effect is absent
READING = {
    "supported": "holds",
    "contradicted": "breaks",
    "equivalent": "breaks",
    "inconclusive": "inconclusive",
    "not run": "not measured",
}


@dataclass(frozen=True)
class Link:
    title: str
    claims: tuple[str, ...]  # verdict ids that decide the link (all must hold)
    measures: tuple[tuple[str, str, str], ...]  # (table, metric, at: "start" | "final") shown beside
    # committed presets that measure this link (at more power, or a loop the study does not run),
    # each with the claims read from it (empty: all of `claims`): their lines decide too
    presets: tuple[tuple[str, tuple[str, ...]], ...] = ()


# the presets a link may read beside the study's own tables (results/studies/<name>/tables)
PRESETS = {
    "gradient": "the gradient probe at K = 64 (config/gradient.yaml)",
    "recursive": "the self-consuming loop on attribute_match, 6 methods x 3 seeds x 5 generations "
    "(config/recursive.yaml)",
    "collapse": "the self-consuming loop on shape_iou, 6 methods x 8 seeds x 5 generations, each at its training SDE "
    "(config/collapse.yaml)",
    "collapse_ode": "the loop on shape_iou drawn and measured at the evaluation ODE for every method "
    "(config/collapse_ode.yaml)",
    "collapse_rate": "the loop on shape_iou for PCPO's and DDPO-IS's losses each at 1e-4 and 3e-5, 8 seeds "
    "(config/collapse_rate.yaml)",
    "power": "the full study's seven arms on shape_iou with 26 seeds (config/power.yaml)",
}


LINKS = (
    Link(
        "1. Per-step credit is uneven, and PCPO evens it (DDPO-IS: before reweighting; PCPO: after)",
        ("pcpo_credit",),
        (("probe", "credit_gini", "start"), ("probe", "credit_gini", "final")),
    ),
    Link(
        "2. Even credit lowers the gradient's variance (per step and projected)",
        ("pcpo_snr",),
        (
            ("probe", "proj_snr", "start"),
            ("probe", "proj_snr", "final"),
            ("probe", "snr_unbiased", "final"),
            ("probe", "update1/proj_snr", "final"),  # off-policy: after the round's first update
            ("probe", "update1/clip_fraction", "final"),
            ("probe", "update1/ess", "final"),
            ("gradient:probe", "proj_snr", "final"),
            ("gradient:probe", "snr_unbiased", "final"),
        ),
        presets=(("gradient", ()),),
    ),
    Link(
        "3. Lower variance converges faster (images and device-seconds to the declared target)",
        ("pcpo_samples", "pcpo_seconds"),
        (("derived", "convergence/rmst_samples_*", "final"), ("derived", "convergence/reached_*", "final")),
        presets=(("power", ()),),  # the same claims on 26 seeds (shape_iou only)
    ),
    Link(
        "4. ... and drifts less in quality, and collapses more slowly when trained on its own samples",
        ("pcpo_fid", "pcpo_diversity", "pcpo_collapse"),
        (
            ("recursive_decay", "decay/quality/fid", "final"),
            ("recursive_decay", "decay/diversity/vendi", "final"),
            ("recursive_decay", "collapse/loop_collapsed", "final"),
        ),
        # their loops; the recursive preset's own pcpo_fid / pcpo_diversity lines are 3-seed RL runs
        presets=(
            ("recursive", ("pcpo_collapse",)),
            ("collapse", ("pcpo_collapse", "pcpo_collapse_fid")),
            ("collapse_ode", ("pcpo_collapse", "pcpo_collapse_fid")),  # the same at one sampler for every method
            # the same loop at equal learning rates: is a difference the loss or the rate?
            ("collapse_rate", tuple(f"loop_loss_{m}_at_{r}" for r in ("1e-4", "3e-5") for m in ("vendi", "fid"))),
        ),
    ),
)


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, comment="#") if path.is_file() else pd.DataFrame()


def _fmt(v, digits: int = 3) -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "–"
    return "–" if not np.isfinite(v) else f"{v:.{digits}g}"


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _interval(mean, low, high) -> str:
    m, lo, hi = _float(mean), _float(low), _float(high)
    if not np.isfinite(m):
        return "–"
    return f"{_fmt(m)} [{_fmt(lo)}, {_fmt(hi)}]" if np.isfinite(lo) and np.isfinite(hi) else _fmt(m)


def _value(frame: pd.DataFrame, model: str, reward: str, algorithm: str, metric: str, at: str) -> str:
    """A table's mean [interval] of one metric (a glob for derived keys) at the start or the final
    budget; for the loop's decay table, the first variant (the fully synthetic loop)."""
    if frame.empty or "metric" not in frame:
        return "not measured"
    part = frame[(frame["model"] == model) & (frame["reward"] == reward) & (frame["algorithm"] == algorithm)]
    part = part[part["metric"].astype(str).str.fullmatch(metric.replace("*", ".*"))]
    if "variant" in part and len(part):
        part = part[part["variant"] == part["variant"].iloc[0]]
    if "budget" in part and len(part):
        part = part[part["budget"] == (part["budget"].min() if at == "start" else part["budget"].max())]
    if part.empty:
        return "not measured"
    r = part.iloc[0]
    low, high = r.get("ci_low"), r.get("ci_high")
    if "budget" in frame and not (np.isfinite(_float(low)) and np.isfinite(_float(high))):
        # measured once (the base model): the probe's own interval, where it has one
        own = frame[
            (frame["model"] == model)
            & (frame["reward"] == reward)
            & (frame["algorithm"] == algorithm)
            & (frame["budget"] == r["budget"])
        ].set_index("metric")["mean"]
        low, high = own.get(f"{r['metric']}_low"), own.get(f"{r['metric']}_high")
    return _interval(r["mean"], low, high)


LOOP_PRESETS = ("recursive", "collapse")  # the presets that run the self-consuming loop


def _recursive_tables(tables: Path) -> tuple[pd.DataFrame, str]:
    """The loop's decay table: the study's own, else the loop presets' (each on its own training
    reward, so at most one of them has rows for a given model and reward)."""
    own = tables / "recursive_decay.csv"
    if own.is_file():
        return _read(own), ""
    found = {name: tables.parent / "studies" / name / "tables" / "recursive_decay.csv" for name in LOOP_PRESETS}
    found = {name: path for name, path in found.items() if path.is_file() and path.parent.resolve() != tables.resolve()}
    if found:
        names = " and ".join(f"the {name} preset's (config/{name}.yaml)" for name in found)
        return pd.concat([_read(path) for path in found.values()]), f"the self-consuming loop read from {names} tables"
    return pd.DataFrame(), ""


def _preset_tables(tables: Path, name: str) -> Path | None:
    """A committed preset's tables beside the study's (none when the study is that preset)."""
    folder = tables.parent / "studies" / name / "tables"
    return folder if folder.is_dir() and folder.resolve() != tables.resolve() else None


def _claim_lines(verdicts: pd.DataFrame, ids: tuple[str, ...], model: str, reward: str, source: str = "") -> list[dict]:
    """The verdict lines of claims `ids` on one (model, reward); a claim with none reads 'not run'
    (for a preset's claims: only where the preset has a line on this model and reward)."""
    lines = []
    for claim in ids:
        if verdicts.empty:
            rows = pd.DataFrame()
        else:
            rows = verdicts[(verdicts["id"] == claim) & (verdicts["model"] == model) & (verdicts["reward"] == reward)]
        if rows.empty:
            if not source:
                lines.append(
                    {"id": claim, "claim": claim, "verdict": "not run", "effect": "–", "note": "no verdict line"}
                )
            continue
        for r in rows.itertuples():
            lines.append(
                {
                    "id": f"{claim} ({source})" if source else claim,
                    "claim": claim,
                    "verdict": r.verdict,
                    "effect": _interval(
                        getattr(r, "effect", None), getattr(r, "ci_low", None), getattr(r, "ci_high", None)
                    ),
                    "note": f"vs {r.over}" + (f"; {r.note}" if isinstance(r.note, str) and r.note else ""),
                }
            )
    return lines


def _link_reading(
    verdicts: pd.DataFrame,
    ids: tuple[str, ...],
    model: str,
    reward: str,
    presets: list[tuple[pd.DataFrame, str, tuple[str, ...]]] = (),
) -> tuple[str, list[dict]]:
    """The link's reading: breaks if any of its claims is contradicted (or shown equivalent), holds
    if all are supported, not measured if none was tested, else inconclusive; and the claim lines.
    `presets`: each a preset's verdicts, its name and the claims read from it (empty: all of `ids`;
    a preset may add claims of its own), whose lines decide alongside, replacing the study's 'not
    run' placeholder for a claim it answers (a preset without a line on this model and reward adds
    nothing)."""
    lines = _claim_lines(verdicts, ids, model, reward)
    for frame, name, claims in presets:
        extra = _claim_lines(frame, claims or ids, model, reward, name)
        answered = {line["claim"] for line in extra}
        # a claim the study does not run but the preset does is decided by the preset's line alone
        lines = [line for line in lines if not (line["verdict"] == "not run" and line["claim"] in answered)] + extra
    readings = [READING.get(str(line["verdict"]), "inconclusive") for line in lines]
    if "breaks" in readings:
        return "breaks", lines
    if all(r == "holds" for r in readings):
        return "holds", lines
    if all(r == "not measured" for r in readings):
        return "not measured", lines
    return "inconclusive", lines


def chain_section(tables: Path, method: str = "pcpo", reference: str = "ddpo_is") -> str:
    """The report's section: per (model, training reward), one row per link with the measures
    for `method` and `reference`, the link's claims with their effect [interval] and verdict, and
    a closing sentence on where the chain holds and where it breaks. Empty without verdict lines
    on `method` (not in the study); `reference` is the one those lines compare with."""
    verdicts = _read(tables / "verdicts.csv")
    if verdicts.empty or "verdict" not in verdicts:
        return ""
    ran = verdicts[(verdicts["method"] == method) & (verdicts["verdict"] != "not run")]
    if ran.empty:  # the method (or every method it is compared with) is not in this study
        return ""
    if "over" in ran and ran["over"].notna().any():  # the reference the declared claims compare with
        reference = str(ran["over"].dropna().mode().iloc[0])
    probe = pd.concat([_read(tables / f"{n}.csv") for n in ("probe", "probe_offpolicy", "probe_steps")])
    frames = {"probe": probe, "derived": _read(tables / "derived.csv")}
    frames["recursive_decay"], source = _recursive_tables(tables)
    presets: dict[str, pd.DataFrame] = {}
    for name in {name for link in LINKS for name, _ in link.presets}:
        folder = _preset_tables(tables, name)
        if folder is not None:
            presets[name] = _read(folder / "verdicts.csv")
            if (folder / "probe.csv").is_file():
                frames[f"{name}:probe"] = _read(folder / "probe.csv")
    parts = [
        "<h2>PCPO's claim, link by link</h2>",
        "<p>PCPO claims a causal chain: uneven per-step credit &rarr; higher gradient variance &rarr; slower "
        "convergence and quality collapse (worst when a model trains on its own samples). Each link below is "
        "read from this study's tables: the measure for "
        f"{html.escape(method)} and {html.escape(reference)} (mean over seeds [interval]; start = the base model, "
        "final = the final budget; the loop's decay: the fully synthetic variant), and the declared claims "
        "that decide it (effect [interval], verdict). A link <b>holds</b> when all its claims are supported, "
        "<b>breaks</b> when one is contradicted, and is <b>not measured</b> when its table or claim is "
        "missing (docs/mechanisms.md#the-chain).</p>",
    ]
    if source:
        parts.append(f"<p class='prov'>{html.escape(source)}</p>")
    for name in sorted(presets):
        parts.append(
            f"<p class='prov'>Lines marked ({html.escape(name)})"
            + (f" and the measures {html.escape(name)}:probe" if f"{name}:probe" in frames else "")
            + " are read "
            f"from the committed preset results/studies/{html.escape(name)}: {html.escape(PRESETS[name])}; "
            "they decide their link alongside this study's own lines.</p>"
        )
    pairs = sorted({(m, r) for m, r in verdicts[["model", "reward"]].itertuples(index=False)})
    for model, reward in pairs:
        rows, readings = [], []
        for link in LINKS:
            read = [(presets[name], name, ids) for name, ids in link.presets if name in presets]
            reading, lines = _link_reading(verdicts, link.claims, model, reward, read)
            readings.append(reading)
            shown = "<br>".join(
                f"{html.escape(t.split(':')[0] + ': ' if ':' in t else '')}{html.escape(metric)} ({at}): "
                f"{html.escape(method)} "
                f"{_value(frames[t], model, reward, method, metric, at)}, {html.escape(reference)} "
                f"{_value(frames[t], model, reward, reference, metric, at)}"
                for t, metric, at in link.measures
                if t in frames
            )
            claims = "<br>".join(
                f"{html.escape(str(line['id']))}: {html.escape(str(line['verdict']))}, effect "
                f"{html.escape(line['effect'])} ({html.escape(line['note'])})"
                for line in lines
            )
            rows.append(
                f"<tr><td>{html.escape(link.title)}</td><td>{shown}</td><td>{claims}</td><td><b>{reading}</b></td></tr>"
            )
        parts.append(
            f"<h3>{html.escape(model)} / {html.escape(reward)}</h3><table><tr><th>link</th><th>measures</th>"
            "<th>claims (verdict, effect [interval])</th><th>reading</th></tr>" + "".join(rows) + "</table>"
        )
        parts.append(f"<p>{html.escape(summary(readings))}</p>")
    return "\n".join(parts)


def summary(readings: list[str]) -> str:
    """One sentence: how far the chain holds, and where it breaks or stops being measured."""
    held = 0
    for r in readings:
        if r != "holds":
            break
        held += 1
    if held == len(readings):
        return "The chain holds end to end on this study's data."
    where = f"link {held + 1}"
    first = readings[held]
    head = f"The chain holds through link {held}; " if held else "The chain does not get past its first link: "
    tail = {
        "breaks": f"it breaks at {where} (the claim is contradicted).",
        "inconclusive": f"{where} is inconclusive at this study's precision.",
        "not measured": f"{where} is not measured in this study.",
    }[first]
    later = [f"link {i + 1}: {r}" for i, r in enumerate(readings) if i > held]
    return head + tail + (f" Further links: {', '.join(later)}." if later else "")
