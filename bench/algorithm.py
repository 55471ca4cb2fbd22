"""The interface every algorithm implements: loss settings (a frozen dataclass with the official
defaults), a training recipe (how the loop feeds the loss: inner epochs, updates per round,
trained steps, group size, ...) and a loss over a batch of recorded denoising steps.

Three families of loss, each with its batch: 'step' (the per-step log-prob methods: a StepBatch
of recorded denoising transitions), 'forward' (likelihood-free methods trained on the forward
process: a ForwardBatch of clean samples re-noised at sampler times; DiffusionNFT) and
'differentiable' (a differentiable reward backpropagated through the last sampling steps: a
RewardBatch; DRaFT-K, ReFL). `Algorithm.family` tells the training loop which batch to build.

An algorithm never touches the sampler, the optimiser or the files; what it needs from them it
declares: `sampler_noise` (a per-step std of its own, PCPO's credit='sigma'), `needs_reference`
and `needs_reference_means` (the frozen reference's log-probs / transition means, PRDP and
Flow-GRPO's KL), `flow_variant` (the flow SDE its paper samples with). The training loop
(bench/train/) reads these, the same way for all."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from t2i_rl_bench import advantages as adv
from t2i_rl_bench.sampling import FLOW_VARIANTS


class SettingError(ValueError):
    """A setting of the wrong type or out of range; `key` names it (the config prefixes its path)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def setting(
    default: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    """A dataclass field with a declared range or set of values, checked by `check_fields`
    when the settings are built (so before any job starts: the study config builds them)."""
    bounds = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if v is not None}
    return field(default=default, metadata={"bounds": bounds, "choices": choices})


def _accepts(value: Any, hint: Any) -> bool:
    """isinstance for the hints settings use: int, float, str, bool, X | None, tuple[...]."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:  # an int is a float; a bool is neither
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, hint) if isinstance(hint, type) else True


_OPS = {
    "gt": (lambda v, b: v > b, ">"),
    "ge": (lambda v, b: v >= b, ">="),
    "lt": (lambda v, b: v < b, "<"),
    "le": (lambda v, b: v <= b, "<="),
}


def check_fields(obj: Any) -> None:
    """Type and declared range of every field of a settings dataclass; raises SettingError."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not _accepts(value, hints.get(f.name, Any)):
            expected = getattr(hints[f.name], "__name__", str(hints[f.name]))
            raise SettingError(f.name, f"expected {expected}, got {value!r}")
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise SettingError(f.name, f"one of {list(choices)}, got {value!r}")
        if value is None or isinstance(value, str | bool):
            continue
        for op, bound in f.metadata.get("bounds", {}).items():
            test, sign = _OPS[op]
            if not test(value, bound):
                raise SettingError(f.name, f"must be {sign} {bound:g}, got {value!r}")


@dataclass(frozen=True)
class Checked:
    """Base of settings dataclasses: fields are type- and range-checked when built (subclasses
    inherit the check; one that defines __post_init__ calls super().__post_init__())."""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class Recipe(Checked):
    """How the training loop feeds an algorithm's loss. An algorithm declares its defaults as the
    class attribute `recipe`; the config overrides them under the same keys as the loss settings."""

    advantages: str = setting("batch", choices=adv.MODES)
    adv_clip: float = setting(5.0, gt=0)  # advantages are clamped to [-adv_clip, adv_clip] (all official code)
    inner_epochs: int = setting(1, ge=1)  # passes over each round's samples
    updates_per_round: int = setting(1, ge=1)  # optimiser steps per inner epoch (the samples are split evenly)
    timestep_fraction: float = setting(1.0, gt=0, le=1)  # fraction of the sampler's steps trained per sample
    drop_last_step: bool = False  # DanceGRPO / Flow-GRPO never train the final step
    shuffle_timesteps: bool = True  # per-sample random subset of steps (ddpo-pytorch), else the first ones
    same_noise_per_group: bool = False  # one x_T per prompt group (DanceGRPO)
    # leave samples whose advantage is exactly 0 (a group of equal rewards) out of the updates (Flow-GRPO)
    drop_zero_advantage: bool = False
    group_size: int | None = setting(None, ge=1)  # images per prompt; None keeps the study's value
    tracker_buffer: int = setting(16, ge=1)  # per-prompt stat tracker (ddpo-pytorch defaults)
    tracker_min_count: int = setting(16, ge=1)


@dataclass(frozen=True)
class AlgorithmSettings(Checked):
    """The loss's own settings; each algorithm subclasses with its fields and official defaults
    (declare ranges with `setting(default, gt=..., choices=...)`)."""


@dataclass
class StepBatch:
    """B samples x S trained steps each. Log-probs follow the sampler's convention (per-dim mean)."""

    logp: torch.Tensor  # (B, S) current policy, differentiable
    logp_old: torch.Tensor  # (B, S) at sampling time
    advantages: torch.Tensor  # (B,) already clamped
    rewards: torch.Tensor  # (B,)
    group_ids: torch.Tensor  # (B,)
    timesteps: torch.Tensor  # (B, S) model timesteps
    step_index: torch.Tensor  # (B, S) index k of each step in the sampler's schedule
    logp_ref: torch.Tensor | None = None  # (B, S) frozen reference policy, when needs_reference
    mean: torch.Tensor | None = None  # (B, S, C, H, W) current transition mean
    std: torch.Tensor | None = None  # (B, S)
    mean_ref: torch.Tensor | None = None  # (B, S, C, H, W) frozen reference's mean, when needs_reference_means
    mean_old: torch.Tensor | None = None  # (B, S, C, H, W) the recorded transition means (sampling time)


@dataclass
class ForwardBatch:
    """N = B samples x S times each, flattened: a clean sample x0 re-noised at a sampler time t,
    x_t = (1 - t) x0 + t noise (rectified flow, velocity v ~ noise - x0), and the velocities the
    current, old (sampling) and reference policies predict there, conditional (guidance 1)."""

    x0: torch.Tensor  # (N, C, H, W) clean samples of the round (the sampler's final latents)
    noise: torch.Tensor  # (N, C, H, W)
    t: torch.Tensor  # (N,) flow time in (0, 1] (the sampler's sigma at the trained step)
    x_t: torch.Tensor  # (N, C, H, W)
    pred: torch.Tensor  # (N, C, H, W) current policy's velocity, differentiable
    pred_old: torch.Tensor  # (N, C, H, W) the old policy's (the weights that sampled), no gradient
    advantages: torch.Tensor  # (N,) already clamped to [-adv_clip, adv_clip]
    rewards: torch.Tensor  # (N,)
    group_ids: torch.Tensor  # (N,)
    sample_index: torch.Tensor  # (N,) the round's sample each row re-noises
    step_index: torch.Tensor  # (N,) the sampler step whose time t is
    prompts: list[str]  # (N,)
    pred_ref: torch.Tensor | None = None  # (N, C, H, W) frozen reference's velocity, when needs_reference


@dataclass
class RewardBatch:
    """B samples whose reward is differentiable in the weights (through the last sampling steps)."""

    rewards: torch.Tensor  # (B,) differentiable
    group_ids: torch.Tensor  # (B,)
    prompts: list[str]


@dataclass
class Loss:
    value: torch.Tensor  # scalar, averaged over the batch's elements
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    clipped: torch.Tensor | None = None  # (B, S) bool, the steps whose gradient the clip removed


@dataclass(frozen=True)
class Paper:
    """The publication an algorithm implements: `references.bib` is generated from these
    (`python -m t2i_rl_bench.citation`), so a table's method is cited as \\cite{key}."""

    key: str  # the BibTeX key
    title: str
    authors: tuple[str, ...]  # "Last, First" each
    year: int
    arxiv: str | None = None  # e.g. "2305.13301"
    venue: str | None = None  # the proceedings it appeared in; None: an arXiv preprint
    url: str | None = None


class Algorithm:
    """Subclass, set `Settings` (and `recipe`), implement `loss`. Register in an entry point
    `t2i_rl_bench.algorithms`."""

    paper: ClassVar[Paper | None] = None  # the publication it implements (references.bib)
    Settings: ClassVar[type[AlgorithmSettings]] = AlgorithmSettings
    recipe: Recipe = Recipe()  # the class's defaults; an instance holds the config's overrides
    # True when the loss couples the steps of a sample (it gets all of them at once) or the
    # samples of a group (optimiser steps and micro-batches then hold whole groups, each
    # micro-batch weighted by its share of `loss_terms`): PRDP's pairwise regression.
    whole_trajectory: ClassVar[bool] = False
    whole_groups: ClassVar[bool] = False
    flow_variant: ClassVar[str] = FLOW_VARIANTS[0]  # the flow SDE of its runs unless the config names one
    # the sampler families ('ddim', 'flow') its loss is defined for; the study refuses other models
    sampler_families: ClassVar[tuple[str, ...]] = ("ddim", "flow")
    # the flow SDEs (flow_variant values) its loss is defined for; None: every one
    flow_variants: ClassVar[tuple[str, ...] | None] = None
    # the batch its loss reads: 'step' (StepBatch), 'forward' (ForwardBatch), 'differentiable' (RewardBatch)
    family: ClassVar[str] = "step"

    def __init__(self, **overrides: Any):
        """`overrides`: one flat namespace (the config's keys): recipe fields and loss settings."""
        recipe_keys = {f.name for f in dataclasses.fields(Recipe)}
        known = recipe_keys | {f.name for f in dataclasses.fields(self.Settings)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown setting(s) {unknown}; known: {sorted(known)}")
        self.recipe = dataclasses.replace(type(self).recipe, **{k: v for k, v in overrides.items() if k in recipe_keys})
        self.settings = self.Settings(**{k: v for k, v in overrides.items() if k not in recipe_keys})
        self._advantages = adv.AdvantageEstimator(
            self.recipe.advantages,
            buffer_size=self.recipe.tracker_buffer,
            min_count=self.recipe.tracker_min_count,
        )

    # ---- what the algorithm asks of the loop ------------------------------------------------
    @property
    def needs_reference(self) -> bool:
        """The loss reads the frozen initial policy's log-probs (StepBatch.logp_ref)."""
        return self.needs_reference_means

    @property
    def needs_reference_means(self) -> bool:
        """The loss reads the frozen initial policy's transition means (StepBatch.mean_ref)."""
        return False

    def sampler_noise(self, sampler: Any) -> torch.Tensor | None:
        """A per-step std (K,) the algorithm samples and scores with instead of the sampler's
        own (PCPO's credit='sigma'), or None. Training and the probe use it; the evaluation
        samples every method with the study's sampler."""
        return None

    def setup(self, sampler: Any) -> None:
        """Called once with the (noise-adjusted) sampler before training (e.g. PCPO reads its schedule)."""

    # ---- the math ---------------------------------------------------------------------------
    def advantages(self, rewards: torch.Tensor, group_ids: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        a = self._advantages(rewards, group_ids, prompts)
        return a.clamp(-self.recipe.adv_clip, self.recipe.adv_clip)

    def loss(self, batch: StepBatch) -> Loss:
        raise NotImplementedError

    def loss_terms(self, rewards: torch.Tensor, group_ids: torch.Tensor, steps: int) -> int:
        """How many terms `Loss.value` averages over for a batch of these samples (whole prompt
        groups; rewards, group_ids (B,)) with `steps` trained steps each; it must add up over
        groups. Read for `whole_groups` losses only: the loop cuts an optimiser step's samples into
        micro-batches of whole groups and weights each by its share of the step's terms, so the
        accumulated gradient is the whole step's. Default: the (sample, step) elements; a loss
        that averages over something else overrides it (PRDP: its reward pairs)."""
        return len(rewards) * steps

    def describe(self) -> dict[str, Any]:
        """Recipe and settings as one flat dict (the config's keys), for summary.json."""
        return {**dataclasses.asdict(self.recipe), **dataclasses.asdict(self.settings)}

    def state_dict(self) -> dict:
        """State that carries across rounds (the per-prompt tracker's buffers), for resuming."""
        tracker = self._advantages.tracker
        return {"tracker": None if tracker is None else {k: list(v) for k, v in tracker.buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        tracker = self._advantages.tracker
        if tracker is not None and state.get("tracker") is not None:
            tracker.buffers = {k: deque(v, maxlen=tracker.buffer_size) for k, v in state["tracker"].items()}


FAMILIES = ("step", "forward", "differentiable")


class ForwardAlgorithm(Algorithm):
    """A likelihood-free method trained on the forward process (DiffusionNFT; DGPO, AWM and
    Diffusion-DPO fit the same batch): subclass, set `Settings`, implement `loss(ForwardBatch)`.
    The loop re-noises each round's clean samples at `recipe.timestep_fraction` of the sampler's
    times (a random subset per sample), and keeps an old policy that samples, updated after
    each round as old <- d old + (1 - d) current with d = `old_policy_decay(optimiser steps)`."""

    family: ClassVar[str] = "forward"
    sampler_families: ClassVar[tuple[str, ...]] = ("flow",)  # x_t = (1 - t) x0 + t noise

    def old_policy_decay(self, optimiser_steps: int) -> float:
        """d in [0, 1): 0 keeps no history (the old policy is the weights at the round's start)."""
        return 0.0

    def loss(self, batch: ForwardBatch) -> Loss:  # type: ignore[override]  # the family's own batch
        raise NotImplementedError


class DifferentiableRewardAlgorithm(Algorithm):
    """A method that backpropagates a differentiable reward through the sampler (DRaFT-K, ReFL):
    subclass, implement `backprop_window` and `loss(RewardBatch)`. The study refuses rewards
    that are not differentiable (t2i_rl_bench.reward.is_differentiable)."""

    family: ClassVar[str] = "differentiable"

    def backprop_window(self, num_steps: int, generator: torch.Generator) -> tuple[int, int]:
        """(start, stop) with 0 <= start <= stop <= num_steps: the sampler runs steps before `start`
        without gradient, steps start..stop-1 with it (the chain of their inputs kept); when
        stop < num_steps the image is the model's x0 prediction at step `stop` (with gradient),
        else the sampler's final latent."""
        raise NotImplementedError

    def loss(self, batch: RewardBatch) -> Loss:  # type: ignore[override]  # the family's own batch
        raise NotImplementedError
