"""Rewards: `fn(images, prompts, metadata) -> (scores, info)`, batched, the convention shared by
ddpo-pytorch, TRL and Flow-GRPO. images: (B, 3, H, W) float in [0, 1]; scores: (B,).

`build_reward` resolves names through the registry, composes a weighted sum, logs each component,
and refuses non-finite scores naming the reward and the prompt."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from t2i_rl_bench.registry import REWARDS

# seconds one reward call may take (config key timeouts.reward_s, config/schema.yaml); the
# workflow passes the study's value to every job in this environment variable
TIMEOUT_ENV = "T2I_RL_BENCH_REWARD_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0


class RewardError(ValueError):
    """A reward returned something unusable (NaN, inf, wrong shape)."""


class RewardTimeout(RewardError):
    """A reward call did not return within its time limit (timeouts.reward_s)."""


def reward_timeout() -> float:
    """The time limit of one reward call, in seconds (0: none): the study's timeouts.reward_s as
    the workflow passes it, else the default."""
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        return float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise RewardError(f"{TIMEOUT_ENV}={text!r}: give the reward time limit in seconds") from None


@contextlib.contextmanager
def deadline(seconds: float, name: str, what: str = "") -> Iterator[None]:
    """A watchdog around one reward call: past `seconds` it raises RewardTimeout naming the reward
    and the time it ran. A SIGALRM timer in the main thread (the call itself stays in the main
    thread: torch work in a side thread slows the whole process); the exception arrives as soon as
    the call returns to Python (a sleep, a socket read, between two torch ops). No limit when
    `seconds` is 0 or outside the main thread."""
    if not seconds or seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return
    start = time.monotonic()

    def expired(signum, frame):
        raise RewardTimeout(
            f"reward {name!r} did not return within {seconds:g} s{what} (stopped after "
            f"{time.monotonic() - start:.1f} s; config key timeouts.reward_s sets the limit)"
        )

    previous = signal.signal(signal.SIGALRM, expired)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:  # an enclosing timer keeps what is left of its time
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 1e-3))


@dataclass(frozen=True)
class RewardSpec:
    name: str
    weight: float = 1.0
    settings: dict | None = None


def _as_specs(spec) -> list[RewardSpec]:
    if isinstance(spec, str):
        return [RewardSpec(spec)]
    if isinstance(spec, dict) and "name" in spec:
        return [RewardSpec(spec["name"], spec.get("weight", 1.0), spec.get("settings"))]
    if isinstance(spec, dict):  # {name: weight, ...}
        return [RewardSpec(k, float(v)) for k, v in spec.items()]
    if isinstance(spec, list | tuple):
        return [s for item in spec for s in _as_specs(item)]
    raise RewardError(f"cannot read reward spec {spec!r}: give a name, a list, or {{name: weight}}")


def _with_settings(spec, settings: dict | None) -> list[RewardSpec]:
    """The specs, each with `settings[name]` (per-reward settings from the config, e.g. weight paths)
    under its own settings."""
    return [
        RewardSpec(s.name, s.weight, {**((settings or {}).get(s.name) or {}), **(s.settings or {})} or None)
        for s in _as_specs(spec)
    ]


class ComposedReward:
    def __init__(self, spec, settings: dict | None = None, timeout: float | None = None):
        self.timeout = reward_timeout() if timeout is None else timeout  # seconds per component call
        self.specs = _with_settings(spec, settings)
        self.name = "+".join(s.name for s in self.specs)
        self.components = []
        for s in self.specs:
            factory = REWARDS.get(s.name)
            fn = factory(**(s.settings or {})) if isinstance(factory, type) else factory
            self.components.append(fn)

    @property
    def differentiable(self) -> bool:
        """Every component has a gradient in the images (`differentiable_score`)."""
        return all(getattr(fn, "differentiable", False) for fn in self.components)

    def differentiable_score(
        self, images: torch.Tensor, prompts: list[str], metadata: dict | None = None
    ) -> torch.Tensor:
        """(B,) the weighted sum with autograd through the images (DRaFT, ReFL)."""
        if not self.differentiable:
            raise RewardError(f"reward {self.name!r} is not differentiable: {not_differentiable(self.specs)}")
        parts = []
        for s, fn in zip(self.specs, self.components, strict=True):
            with deadline(self.timeout, s.name, f" on {len(prompts)} prompts"):
                parts.append(s.weight * fn.differentiable_score(images, prompts, metadata or {}))
        return torch.stack(parts).sum(0)

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: dict | None = None):
        total = torch.zeros(len(prompts), dtype=torch.float64)
        info: dict = {}
        for spec, fn in zip(self.specs, self.components, strict=True):
            try:
                with deadline(self.timeout, spec.name, f" on {len(prompts)} prompts"):
                    result = fn(images, prompts, metadata or {})
                if not (isinstance(result, tuple) and len(result) == 2):
                    raise RewardError(
                        f"reward {spec.name!r} returned {type(result).__name__} {_short(result)}; a reward "
                        "returns a pair (scores of shape (N,), a metadata dict)"
                    )
                scores, comp_info = result
                if comp_info is not None and not isinstance(comp_info, dict):
                    raise RewardError(
                        f"reward {spec.name!r} returned metadata of type {type(comp_info).__name__}; "
                        "the second item of its pair is a dict (or None)"
                    )
            except RewardError:
                raise
            except Exception as exc:  # noqa: BLE001 - a reward plugin's failure ends the run as a result
                raise RewardError(
                    f"reward {spec.name!r} raised {exc!r} on {len(prompts)} prompts (first: {prompts[0]!r})"
                ) from exc
            scores = check_scores(spec.name, scores, prompts)
            total += spec.weight * scores
            info[spec.name] = scores
            info.update({f"{spec.name}/{k}": v for k, v in (comp_info or {}).items()})
        return total, info


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_scores(name: str, scores, prompts: list[str]) -> torch.Tensor:
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu()
    try:
        scores = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise RewardError(f"reward {name!r} returned scores that are not numbers: {_short(scores)} ({exc})") from exc
    if scores.shape != (len(prompts),):
        raise RewardError(f"reward {name!r} returned shape {tuple(scores.shape)} for {len(prompts)} prompts")
    bad = ~torch.isfinite(scores)
    if bad.any():
        i = int(torch.nonzero(bad)[0])
        raise RewardError(
            f"reward {name!r} returned {scores[i].item()} for prompt {prompts[i]!r} "
            f"({int(bad.sum())} non-finite of {len(prompts)})"
        )
    return scores


def check_weights(spec, settings: dict | None = None) -> list[str]:
    """Problems with the local weights of every component of a reward spec (the spec and settings
    ComposedReward reads), found without loading them: each names the reward, the setting and the
    path. Rewards with no weights (or no `check_weights`) add nothing. Call it before any job starts."""
    problems = []
    for s in _with_settings(spec, settings):
        check = getattr(REWARDS.get(s.name), "check_weights", None)
        if check is not None:
            problems += [p if p.startswith(s.name) else f"{s.name}: {p}" for p in check(dict(s.settings or {}))]
    return problems


def not_differentiable(spec) -> list[str]:
    """The components of a reward spec that have no gradient in the images: a reward is
    differentiable when its registered object sets `differentiable = True` (and then implements
    `differentiable_score(images, prompts, metadata) -> (B,)` with autograd). Read without loading
    any weights, so the study checks it before any job starts."""
    specs = spec if isinstance(spec, list) and all(isinstance(s, RewardSpec) for s in spec) else _as_specs(spec)
    return [s.name for s in specs if not getattr(REWARDS.get(s.name), "differentiable", False)]


def build_reward(spec, settings: dict | None = None, timeout: float | None = None) -> ComposedReward:
    """`settings`: {reward name: settings} applied wherever that reward appears in `spec`;
    `timeout`: seconds per reward call (None: `reward_timeout()`, the study's timeouts.reward_s)."""
    return ComposedReward(spec, settings, timeout)


def zero_spread_fraction(rewards: torch.Tensor, group_ids: torch.Tensor) -> float:
    """Fraction of prompt groups whose rewards are all equal (they carry no GRPO signal; TRL#2086)."""
    groups = torch.unique(group_ids)
    flat = [bool((rewards[group_ids == g].max() - rewards[group_ids == g].min()) == 0) for g in groups]
    return float(np.mean(flat)) if flat else 0.0
