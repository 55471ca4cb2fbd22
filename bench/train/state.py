"""What a run leaves on disk besides its log: a checkpoint at every budget, and the resumable
state (weights, optimiser, every RNG, the algorithm's cross-round state) from which a killed
run continues bit for bit. Only the main process of a distributed run writes."""

from __future__ import annotations

import fcntl
import os
import resource
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from t2i_rl_bench import jobguard
from t2i_rl_bench.algorithm import Algorithm
from t2i_rl_bench.distributed import World
from t2i_rl_bench.io import atomic_write_json, replace_dir
from t2i_rl_bench.models.policy import Policy
from t2i_rl_bench.spec import RunSpec


class Trainer(Protocol):
    """What a checkpoint and the resumable state hold of a trainer (t2i_rl_bench.train.loop.Trainer)."""

    images_seen: int
    seconds: float

    @property
    def spec(self) -> RunSpec: ...

    @property
    def policy(self) -> Policy: ...

    @property
    def algorithm(self) -> Algorithm: ...

    @property
    def optimiser(self) -> torch.optim.Optimizer: ...

    @property
    def generator(self) -> torch.Generator: ...

    @property
    def rng(self) -> np.random.Generator: ...


def _old_policy(trainer: Trainer) -> Any:
    """The forward family's old policy (bench/train/forward.py), or None."""
    return getattr(trainer, "old", None)


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def continues(saved: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether a run of spec `wanted` continues from the state of spec `saved`: the same spec, or
    the same spec but for budgets added after all of the saved ones (a longer horizon; a budget
    only saves a checkpoint, so the rounds already done are the ones the longer run does first,
    bit for bit: tests/test_resume.py, docs/usage.md#extending-a-run)."""
    if saved == wanted:
        return True
    rest = {k: v for k, v in saved.items() if k != "budgets"}
    if rest != {k: v for k, v in wanted.items() if k != "budgets"}:
        return False
    old, new = sorted(saved.get("budgets") or ()), sorted(wanted.get("budgets") or ())
    return bool(old) and new[: len(old)] == old


class RunFolderBusy(RuntimeError):
    """Another live process is training in the same run folder."""


_HELD: dict[Path, Any] = {}  # run folders this process holds (held until it ends; re-entry is free)


class RunState:
    def __init__(self, out: Path, world: World):
        self.out, self.world = out, world
        self._lock: Any = None

    def lock(self) -> None:
        """Hold the run folder for this process's life (the kernel releases it when the process
        ends, however it ends): a second trainer started on the same folder while the first still
        runs (an orphan of a killed workflow) is refused instead of writing beside it."""
        if not self.world.main or self._lock is not None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        key = self.out.resolve()
        if key in _HELD:  # this process trained here before (a test, a notebook): its own lock
            self._lock = _HELD[key]
            return
        handle = open(self.out / ".lock", "a+")  # noqa: SIM115 - held open until the process ends
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunFolderBusy(
                f"run folder {self.out} is being written by another process (pid {holder}); wait for it "
                "to end or kill it, then start this run again (it resumes from its last state)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = _HELD[key] = handle

    def checkpoint(self, trainer: Trainer, budget: int) -> None:
        """The weights at a budget, with the images and seconds it took (what evaluate and probe read)."""
        if not self.world.main:  # the weights are the same in every process
            return
        folder = self.out / "checkpoints" / str(budget)
        tmp = folder.with_name(f".{budget}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        trainer.policy.save_denoiser(tmp)
        state = {
            "budget": budget,
            "images_seen": trainer.images_seen,
            "device_seconds": trainer.seconds,
            "peak_memory_mb": peak_memory_mb(),
        }
        atomic_write_json(tmp / "state.json", state)
        replace_dir(tmp, folder)

    def save(self, trainer: Trainer, rounds_done: int) -> None:
        """Everything needed to continue bit-for-bit, swapped into place atomically. (The other
        processes of a distributed run hold the same state, but for their sampling noise, seeded
        per round.)"""
        if not self.world.main:
            return
        jobguard.check()  # an orphan of an ended workflow job writes no state
        tmp = self.out / ".state.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        trainer.policy.save_denoiser(tmp)
        torch.save(
            {
                "rounds_done": rounds_done,
                "images_seen": trainer.images_seen,
                "seconds": trainer.seconds,
                "optimiser": trainer.optimiser.state_dict(),
                "generator": trainer.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "numpy_rng": trainer.rng.bit_generator.state,
                "algorithm": trainer.algorithm.state_dict(),
                "old_policy": _old_policy(trainer).state_dict() if _old_policy(trainer) is not None else None,
                "run_config": trainer.spec.identity(),
            },
            tmp / "trainer.pt",
        )
        replace_dir(tmp, self.out / "state")

    def restore(self, trainer: Trainer) -> int:
        """Rounds already done by an earlier process of the same spec, interrupted or finished
        with fewer budgets (0 when starting fresh; the state of another spec is removed)."""
        state_dir = self.out / "state"
        if not (state_dir / "trainer.pt").is_file():
            return 0
        state: dict[str, Any] = torch.load(state_dir / "trainer.pt", weights_only=False)
        saved = {k: v for k, v in state["run_config"].items() if k != "tracking"}  # as identity()
        if not continues(saved, trainer.spec.identity()):
            self.world.barrier()  # every process has read it before process 0 removes it
            if self.world.main:
                shutil.rmtree(state_dir)  # an interrupted run of another config: start over
            return 0
        trainer.policy.load_denoiser_state(state_dir)
        trainer.optimiser.load_state_dict(state["optimiser"])
        trainer.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        trainer.rng.bit_generator.state = state["numpy_rng"]
        trainer.algorithm.load_state_dict(state["algorithm"])
        old = _old_policy(trainer)
        if old is not None and state.get("old_policy") is not None:
            old.load_state_dict(state["old_policy"])
        trainer.images_seen, trainer.seconds = state["images_seen"], state["seconds"]
        return int(state["rounds_done"])
