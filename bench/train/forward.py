"""What a forward-process loss sees (t2i_rl_bench.algorithm.ForwardAlgorithm): the old policy that samples
and anchors the loss, and the ForwardBatch of a round's clean samples re-noised at sampler times."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from t2i_rl_bench.algorithm import ForwardBatch
from t2i_rl_bench.interfaces import Sampler
from t2i_rl_bench.models.policy import Policy
from t2i_rl_bench.rollout import Trajectory


class OldPolicy:
    """A copy of the trainable weights (DiffusionNFT's 'old' adapter): it samples the rounds and
    predicts v_old; after each round old <- d old + (1 - d) current. With d = 0 it is the weights
    each round started from."""

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = params
        self.weights = [p.detach().clone() for p in params]
        self.optimiser_steps = 0  # the official schedule's global_step

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The old weights in the policy's parameters for the block, the current ones restored after."""
        with torch.no_grad():
            current = [p.detach().clone() for p in self.params]
            for p, w in zip(self.params, self.weights, strict=True):
                p.copy_(w)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, w in zip(self.params, current, strict=True):
                    p.copy_(w)

    @torch.no_grad()
    def update(self, decay: float) -> None:
        for w, p in zip(self.weights, self.params, strict=True):
            w.mul_(decay).add_(p.detach(), alpha=1.0 - decay)

    def state_dict(self) -> dict:
        return {"weights": [w.clone() for w in self.weights], "optimiser_steps": self.optimiser_steps}

    def load_state_dict(self, state: dict) -> None:
        self.weights = [w.clone() for w in state["weights"]]
        self.optimiser_steps = int(state["optimiser_steps"])


def forward_batch(
    policy: Policy,
    sampler: Sampler,
    traj: Trajectory,
    samples: torch.Tensor,
    cols: torch.Tensor,
    advantages: torch.Tensor,
    rewards: torch.Tensor,
    old: OldPolicy | None,
    generator: torch.Generator,
    reference: bool,
) -> ForwardBatch:
    """Samples (B,) of the trajectory, each re-noised at the times of sampler steps cols (B, S) with
    fresh noise: x_t = (1 - t) x0 + t eps at t = the sampler's sigma (train_nft_sd3.py trains at the
    sampling schedule's timesteps). Velocities are conditional (guidance 1: the forward process
    trains the conditional model); the old one from `old` (None: the current weights, no gradient)."""
    b, s = cols.shape
    rows = samples[:, None].expand(b, s).reshape(-1)
    steps = cols.reshape(-1)
    x0 = traj.x0[rows].float()
    t = sampler.timesteps[steps].float().to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)  # the CPU generator, as rollouts
    t_ = t.view(-1, *[1] * (x0.ndim - 1))
    x_t = (1 - t_) * x0 + t_ * noise
    model_t = sampler.model_timesteps()[steps]
    cond = traj.cond[rows]
    with torch.no_grad():
        if old is None:
            pred_old = policy.predict(x_t, model_t, cond, None, 1.0)
        else:
            with old.applied():
                pred_old = policy.predict(x_t, model_t, cond, None, 1.0)
        pred_ref = policy.predict(x_t, model_t, cond, None, 1.0, reference=True) if reference else None
    return ForwardBatch(
        x0=x0,
        noise=noise,
        t=t,
        x_t=x_t,
        pred=policy.predict(x_t, model_t, cond, None, 1.0).float(),
        pred_old=pred_old.float(),
        advantages=advantages[rows],
        rewards=rewards[rows],
        group_ids=traj.group_ids[rows],
        sample_index=rows,
        step_index=steps,
        prompts=[traj.prompts[i] for i in rows.tolist()],
        pred_ref=None if pred_ref is None else pred_ref.float(),
    )
