"""The interfaces the training loop, the probe and the evaluation program against, as Protocols:
a sampler's step rule (bench/sampling.py), a reward (bench/reward.py, rewards/) and a policy
(bench/models/). Implementations need not inherit from them; the type checker holds them to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from t2i_rl_bench.sampling import StepResult


@runtime_checkable
class Sampler(Protocol):
    """One stochastic step of a denoising schedule with its Gaussian log-density."""

    family: str  # 'ddim' or 'flow'
    num_steps: int  # K
    timesteps: torch.Tensor  # (K,) the sampler's own time of each step

    def model_timesteps(self) -> torch.Tensor:
        """(K,) the timesteps the denoiser is conditioned on."""
        ...

    def step(
        self,
        model_out: torch.Tensor,
        x: torch.Tensor,
        t: torch.Tensor,
        step_index: torch.Tensor | None = None,
        prev: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> StepResult:
        """From x (B, C, H, W) at time t (B,): sample x_next (generator), or score the recorded `prev`."""
        ...

    def native_weights(self) -> torch.Tensor:
        """(K,) the per-step credit of the step rule (PCPO, docs/algorithms.md#per-step-credit)."""
        ...

    def with_std(self, std: torch.Tensor) -> Sampler:
        """The same schedule with an algorithm's own per-step std (K,) (Algorithm.sampler_noise)."""
        ...


@runtime_checkable
class Reward(Protocol):
    """`fn(images, prompts, metadata) -> (scores (B,), info)`; images (B, 3, H, W) in [0, 1].
    A reward with a gradient in the images also sets `differentiable = True` and implements
    `differentiable_score(images, prompts, metadata) -> (B,)` with autograd (DRaFT, ReFL)."""

    def __call__(
        self, images: torch.Tensor, prompts: list[str], metadata: dict[str, Any] | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]: ...


@runtime_checkable
class Policy(Protocol):
    """A text-conditioned denoiser with its scheduler, encoder and decoder (t2i_rl_bench.models.policy.Policy)."""

    objective: str  # 'epsilon', 'v_prediction' or 'flow'
    denoiser: torch.nn.Module
    scheduler: Any

    @property
    def sample_shape(self) -> tuple[int, ...]: ...

    def encode(self, prompts: list[str]) -> Any: ...

    def predict(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: Any,
        uncond: Any,
        guidance: float,
        detach_uncond: bool = False,
        reference: bool = False,
    ) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...

    def save_denoiser(self, folder: Path) -> None: ...

    def load_denoiser_state(self, folder: Path) -> None: ...
