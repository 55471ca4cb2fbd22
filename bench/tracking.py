"""Training curves where researchers look: every run's scalars, per-step clip fractions, sample
grids, evaluation and probe results, as TensorBoard event files beside its log.jsonl, and, when
asked (`tracking: {wandb: true}` in the study config), a Weights & Biases run too.

The JSON lines (log.jsonl, eval.json, probe.json) stay the source of truth of every table; a
tracker only mirrors them. The step of everything is the number of training images seen (a
round's end, an evaluation's or probe's budget), so training, evaluation and probe curves share
one axis.

Each kind of writer has its own event file in the run folder (suffix .train, .eval, .probe). A
fresh training run removes every old event file; a resumed one writes a purge marker at the
restored images seen, so the steps a killed process logged past its last state are dropped by
TensorBoard's reader; an evaluation or probe replaces its own earlier file. The other processes
of a distributed run write nothing (t2i_rl_bench.distributed.World.main).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

EVENT_PREFIX = "events.out.tfevents."
KINDS = ("train", "eval", "probe")


class Tracker(Protocol):
    """Where a run's curves go besides its JSON lines."""

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Scalars by tag ('train/reward_mean') at a step (training images seen)."""

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An RGB image, (H, W, 3) uint8."""

    def close(self) -> None: ...


def flatten(prefix: str, values: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a JSON line as tags: lists become one tag per index
    ('clipfrac_per_step/3'), nested mappings a deeper tag; None, text and non-finite values are
    left out (a tag holds numbers)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        tag = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(tag, value))
        elif isinstance(value, list | tuple):
            out.update(flatten(tag, {str(i): v for i, v in enumerate(value)}))
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[tag] = float(value)
    return out


class NullTracker:
    """A process that writes nothing (not the main process of a distributed run)."""

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        pass

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker:
    """Event files in `log_dir` (torch.utils.tensorboard); `purge_step`: a resumed run's first
    step, from which the reader drops what an earlier process logged."""

    def __init__(self, log_dir: Path, kind: str, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step, filename_suffix=f".{kind}")

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # a killed run keeps what its log.jsonl keeps

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, image, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A Weights & Biases run (offline unless `settings['mode']` says otherwise). Training,
    evaluation and probe are separate processes: each resumes the run whose id the run folder
    fixes, and logs against `images_seen` as its step metric (wandb's own step must only grow,
    but an evaluation logs budget 0 after training logged its last round)."""

    def __init__(self, run_dir: Path, kind: str, settings: Mapping[str, Any], config: Mapping[str, Any]):
        import wandb

        name = "/".join(run_dir.resolve().parts[-4:])  # <model>/<reward>/<algorithm>/seed<seed>
        self.run = wandb.init(
            project=settings.get("project", "t2i-rl-bench"),
            entity=settings.get("entity"),
            mode=settings.get("mode", "offline"),
            dir=str(run_dir),
            name=name,
            id=hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16],
            resume="allow",
            config=dict(config),
            job_type=kind,
        )
        self.run.define_metric("images_seen")
        self.run.define_metric("*", step_metric="images_seen")

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        self.run.log({**values, "images_seen": step})

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        import wandb

        self.run.log({tag: wandb.Image(image), "images_seen": step})

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """Every tracker of a run, each told the same."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for t in self.trackers:
            t.scalars(values, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        for t in self.trackers:
            t.image(tag, image, step)

    def close(self) -> None:
        for t in self.trackers:
            t.close()


def remove_events(run_dir: Path, kind: str | None = None) -> None:
    """Old event files of the run folder: of one kind, or (None) all of them."""
    pattern = f"{EVENT_PREFIX}*" + (f".{kind}" if kind else "")
    for path in run_dir.glob(pattern):
        path.unlink()


def open_tracker(
    run_dir: str | Path,
    kind: str,
    settings: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    main: bool = True,
    resume_step: int | None = None,
) -> Tracker:
    """The trackers of one process writing to a run: TensorBoard always, wandb when
    `settings['wandb']` (the spec's `tracking`). kind: 'train', 'eval' or 'probe'.
    `resume_step`: training resumed after this many images (None: a fresh run)."""
    if kind not in KINDS:
        raise ValueError(f"tracker kind {kind!r}: expected one of {KINDS}")
    if not main:
        return NullTracker()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if kind == "train" and resume_step is None:
        remove_events(run_dir)  # another spec's or a restarted run's curves
    elif kind != "train":
        remove_events(run_dir, kind)  # this evaluation or probe replaces the last one
    purge = resume_step + 1 if kind == "train" and resume_step is not None else None
    trackers: list[Tracker] = [TensorBoardTracker(run_dir, kind, purge)]
    settings = settings or {}
    if settings.get("wandb"):
        trackers.append(WandbTracker(run_dir, kind, settings, config or {}))
    return Trackers(trackers)
