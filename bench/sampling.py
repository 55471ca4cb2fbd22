"""The rollout engine's step rules: one stochastic sampler step that returns
`(x_next, logp, mean, std)`, for the DDIM family and for flow-matching SDEs.

Every step rule is a pure function of its inputs (no hidden state), computes the log-density in
fp32, and follows the per-dimension-mean convention of the official code
(docs/algorithms.md#conventions-shared-by-every-method): `logp = mean over C,H,W of log N(x_next;
mean, std^2)`, with the sum as an option. Passing `prev` (the stored x_next) recomputes the log-prob
of a recorded transition instead of sampling.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass

import torch

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
# the flow SDEs of FlowSDESampler; the first is the default. 'cps': coefficients-preserving sampling
FLOW_VARIANTS = ("flowgrpo", "dancegrpo", "cps")


@dataclass
class StepResult:
    x_next: torch.Tensor  # (B, C, H, W)
    logp: torch.Tensor  # (B,) fp32
    mean: torch.Tensor  # (B, C, H, W) fp32
    std: torch.Tensor  # (B,) fp32, std of the Gaussian transition


def gaussian_logp(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """log N(x; mean, std^2 I) per sample, reduced over all non-batch dims. std: (B,) or scalar."""
    x, mean = x.float(), mean.float()
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).reshape(-1, *([1] * (x.ndim - 1)))
    elem = -((x.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - LOG_SQRT_2PI
    dims = tuple(range(1, x.ndim))
    if reduce == "mean":
        return elem.mean(dim=dims)
    if reduce == "sum":
        return elem.sum(dim=dims)
    raise ValueError(f"logp_reduce must be 'mean' or 'sum', got {reduce!r}")


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def _draw(
    mean: torch.Tensor, std: torch.Tensor, prev: torch.Tensor | None, generator: torch.Generator | None
) -> torch.Tensor:
    if prev is not None:
        if generator is not None:
            raise ValueError("give either prev (recompute a recorded step) or generator (sample), not both")
        return prev
    noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32, device=mean.device)
    return mean + _expand(std, mean) * noise


class DDIMSampler:
    """DDIM over an epsilon- or v-prediction model (Song et al. 2021), as ddpo-pytorch's
    `ddim_step_with_logprob`. Timesteps come from the diffusers scheduler. eta > 0 makes each step
    a Gaussian policy; eta = 0 is the deterministic DDIM step (its log-prob is undefined: NaN)."""

    family = "ddim"

    def __init__(self, scheduler, num_steps: int, eta: float = 1.0, logp_reduce: str = "mean"):
        if eta < 0:
            raise ValueError(f"eta must be >= 0 (got {eta}); RL needs eta > 0 (docs/algorithms.md#stochastic-sampling)")
        scheduler.set_timesteps(num_steps)
        self.num_steps = num_steps
        self.eta = eta
        self.logp_reduce = logp_reduce
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        self.alphas_cumprod = scheduler.alphas_cumprod.float().clone()
        self.final_alpha_cumprod = torch.as_tensor(float(scheduler.final_alpha_cumprod))
        self.prediction_type = scheduler.config.prediction_type
        # x0 clipping as in diffusers' DDIMScheduler: pixel-space models with a cosine schedule
        # need it, since alpha_bar(T) ~ 0 amplifies any epsilon error at the first step
        self.clip_sample = bool(scheduler.config.clip_sample)
        self.clip_sample_range = float(scheduler.config.clip_sample_range)
        self.timesteps = scheduler.timesteps.clone().long()  # (K,) model timesteps, descending
        self.sigma_override: torch.Tensor | None = None  # (K,) per-step std, e.g. PCPO's sigma tilde

    def model_timesteps(self) -> torch.Tensor:
        return self.timesteps

    def with_std(self, std: torch.Tensor) -> DDIMSampler:
        """The same schedule with a per-step std (K,) of an algorithm's own (PCPO's sigma tilde)."""
        sampler = copy.copy(self)
        sampler.sigma_override = std
        return sampler

    def prev_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return t - self.num_train_timesteps // self.num_steps

    def _alpha_bars(self, t: torch.Tensor):
        t = torch.as_tensor(t).long()
        # the previous timestep clamped to [0, T - 1] before it is read, as ddpo-pytorch's
        # ddim_step_with_logprob does: the last step goes to alpha_bar(0), never to the scheduler's
        # final_alpha_cumprod, which is 1 with `set_alpha_to_one: true` and would make the last
        # step's std 0 and its log-prob NaN (with `false` it is alpha_bar(0): the same numbers)
        t_prev = self.prev_timestep(t).clamp(0, self.num_train_timesteps - 1)
        ab_t = self.alphas_cumprod[t.clamp(min=0)]
        ab_prev = self.alphas_cumprod[t_prev]
        return ab_t, ab_prev

    def alpha_bars(self, t: torch.Tensor):
        """(alpha_bar_t, alpha_bar_prev) of the steps at timesteps t, as the step rule uses them."""
        return self._alpha_bars(t)

    def variance(self, t: torch.Tensor) -> torch.Tensor:
        ab_t, ab_prev = self._alpha_bars(t)
        return (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)  # DDIM eq. (16), sigma^2 at eta = 1

    def std(self, t: torch.Tensor, step_index: torch.Tensor | None = None) -> torch.Tensor:
        if self.sigma_override is not None and step_index is not None:
            return self.sigma_override[torch.as_tensor(step_index).long()]
        return self.eta * self.variance(t).sqrt()

    def step(
        self,
        model_out: torch.Tensor,
        x: torch.Tensor,
        t: torch.Tensor,
        step_index: torch.Tensor | None = None,
        prev: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> StepResult:
        """One step from x at timestep t (B,) to the next timestep of the schedule."""
        x32, eps = x.float(), model_out.float()
        t = torch.as_tensor(t, device="cpu").long().expand(x.shape[0])
        ab_t, ab_prev = (v.to(x.device) for v in self._alpha_bars(t))
        if self.prediction_type == "epsilon":
            x0 = (x32 - _expand((1 - ab_t).sqrt(), x32) * eps) / _expand(ab_t.sqrt(), x32)  # eq. (12), x0 term
        elif self.prediction_type == "v_prediction":
            x0 = _expand(ab_t.sqrt(), x32) * x32 - _expand((1 - ab_t).sqrt(), x32) * eps
            eps = _expand(ab_t.sqrt(), x32) * eps + _expand((1 - ab_t).sqrt(), x32) * x32
        else:
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        std = self.std(t, step_index).to(x.device).float()
        direction = _expand((1 - ab_prev - std**2).clamp(min=0).sqrt(), x32) * eps  # eq. (12), "direction to x_t"
        mean = _expand(ab_prev.sqrt(), x32) * x0 + direction
        x_next = _draw(mean, std, prev, generator)
        if self.eta == 0:
            return StepResult(mean.to(x.dtype), torch.full((x.shape[0],), float("nan")), mean, std)
        return StepResult(x_next.to(x.dtype), gaussian_logp(x_next, mean, std, self.logp_reduce), mean, std)

    def native_weights(self) -> torch.Tensor:
        """PCPO's per-step credit w(t) = C(t)/sigma_t (docs/algorithms.md#per-step-credit, Proposition 1), (K,)."""
        t = self.timesteps
        ab_t, ab_prev = self._alpha_bars(t)
        alpha = ab_t / ab_prev
        std = self.std(t, torch.arange(len(t)))
        c = (1 - ab_t).sqrt() / alpha.sqrt() - (1 - ab_prev - std**2).clamp(min=0).sqrt()
        return c / std


def flow_sigmas(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """sigma schedule shift(linspace(1, 0, K+1)) with t' = s t / (1 + (s - 1) t) (SD3), (K+1,)."""
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return (shift * t / (1 + (shift - 1) * t)).float()


def diffusers_flow_sigmas(num_steps: int, shift: float = 3.0, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The sigmas of diffusers' FlowMatchEulerDiscreteScheduler(shift=s).set_timesteps(K) (SD3/Flow-GRPO),
    (K+1,): shift(linspace(1, shift(1/N), K)) with 0 appended, N = num_train_timesteps. The training
    sigmas are already shifted, so the smallest is shifted twice; this differs from flow_sigmas."""

    def shifted(t):
        return shift * t / (1 + (shift - 1) * t)

    t = torch.linspace(1.0, shifted(1.0 / num_train_timesteps), num_steps, dtype=torch.float64)
    return torch.cat([shifted(t), torch.zeros(1, dtype=torch.float64)]).float()


class FlowSDESampler:
    """Stochastic steps of the flow ODE's reverse process (docs/algorithms.md#the-flow-grpo-sde,
    docs/algorithms.md#the-dancegrpo-sde). Model output is the velocity v ~ eps - x0; time runs from
    sigma = 1 (noise) to 0.

    variant 'flowgrpo': Euler-Maruyama of the marginal-preserving SDE with std_dev_t = a sqrt(t / (1 - t))
    (Flow-GRPO; t = 1 uses sigmas[1]); 'dancegrpo': the same SDE with constant diffusion a
    (DanceGRPO's flux_step); 'cps': coefficients-preserving sampling (Wang & Yu 2025, arXiv
    2509.05952; IamCreateAI/FlowCPS sd3_sde_with_logprob.py), see `_cps_step`.

    Window (Flow-GRPO-Fast, MixGRPO): noise only at the steps start .. start + length - 1 of
    `sde_window`, the ODE (x + dt v, a point mass: log-prob 0, std 0) elsewhere; only the window's
    steps are trained. `window_shift` = (every, stride) slides it (MixGRPO), `window_range` = (lo, hi)
    draws its start at random each round (Flow-GRPO-Fast): `at_round(r)` is the sampler of training
    round r, see `window_start`."""

    family = "flow"

    def __init__(
        self,
        sigmas: torch.Tensor,
        noise_level: float = 0.7,
        variant: str = FLOW_VARIANTS[0],
        logp_reduce: str = "mean",
        timestep_scale: float = 1000.0,
        sde_window: tuple[int, int] | None = None,
        window_shift: tuple[int, int] | None = None,
        window_range: tuple[int, int] | None = None,
        window_seed: int = 0,
    ):
        if variant not in FLOW_VARIANTS:
            raise ValueError(f"flow SDE variant must be one of {list(FLOW_VARIANTS)}, got {variant!r}")
        if variant == "cps" and not 0 <= noise_level <= 1:
            # the noise level is an angle: std = sigma_next sin(a pi / 2), a = 1 the largest std
            raise ValueError(f"the cps sampler's noise level must lie in [0, 1], got {noise_level}")
        self.sigmas = sigmas.float()
        self.num_steps = len(sigmas) - 1
        self.noise_level = noise_level
        self.variant = variant
        self.logp_reduce = logp_reduce
        self.timestep_scale = timestep_scale
        self.timesteps = self.sigmas[:-1]  # (K,) the sampler's own time t in [0, 1]
        if sde_window is not None:
            start, length = sde_window
            if not (0 <= start and length >= 1 and start + length <= self.num_steps):
                raise ValueError(
                    f"sde_window (start, length) = {tuple(sde_window)} must lie inside the "
                    f"{self.num_steps} sampler steps"
                )
        self.window_origin = None if sde_window is None else (int(sde_window[0]), int(sde_window[1]))
        self.window_shift = None if window_shift is None else (int(window_shift[0]), int(window_shift[1]))
        if self.window_shift is not None:
            if self.window_origin is None:
                raise ValueError("a window shift (every, stride) slides an SDE window: give sde_window too")
            every, stride = self.window_shift
            start, length = self.window_origin
            if every < 1 or stride < 1 or start + length > self.num_steps - 1:
                raise ValueError(
                    f"sliding SDE window: every and stride >= 1 (got {self.window_shift}) and the window "
                    f"{self.window_origin} must end before the final step of the {self.num_steps} steps"
                )
        self.window_range = None if window_range is None else (int(window_range[0]), int(window_range[1]))
        self.window_seed = int(window_seed)
        if self.window_range is not None:
            if self.window_origin is None or self.window_shift is not None:
                raise ValueError("a window range (lo, hi) draws the start of an SDE window: give sde_window, no shift")
            lo, hi = self.window_range
            start, length = self.window_origin
            if not (lo <= start and start + length <= hi <= self.num_steps - 1):
                raise ValueError(
                    f"random SDE window: the range {self.window_range} must hold the window {self.window_origin} "
                    f"and end before the final step of the {self.num_steps} steps"
                )
        self._set_window(self.window_origin)

    def _set_window(self, window: tuple[int, int] | None) -> None:
        self.sde_window = window
        self.stochastic = torch.zeros(self.num_steps, dtype=torch.bool)
        if window is None:
            self.stochastic[:] = True
        else:
            self.stochastic[window[0] : window[0] + window[1]] = True
        if self.variant == "cps":  # the step to sigma = 0 has std sigma_next sin(a pi/2) = 0: deterministic
            self.stochastic &= self.sigmas[1:] > 0
        self.sde_steps = torch.nonzero(self.stochastic).flatten()  # the steps a sample can train

    def window_start(self, round_index: int) -> int:
        """The sliding window's first step at training round r (0-based): it moves `stride` steps
        every `every` rounds, from the configured start, while it ends before the final step (the
        step no flow recipe trains; MixGRPO's range stops short of it too), then starts over
        (MixGRPO's roll_back). A drawn window (window_range) starts at a uniform draw of the round.
        A fixed window stays where it is."""
        if self.window_origin is None:
            raise ValueError("no SDE window")
        start, length = self.window_origin
        if self.window_range is not None:
            # Flow-GRPO-Fast (sd3_pipeline_with_logprob_fast.py): start = random.randint(lo, hi - length),
            # both ends included; here from a generator of (the run's seed, the round) alone, so that a
            # resumed run, every process and the gradient probe all see the round's same window
            lo, hi = self.window_range
            return random.Random(f"sde-window/{self.window_seed}/{round_index}").randint(lo, hi - length)
        if self.window_shift is None:
            return start
        every, stride = self.window_shift
        positions = (self.num_steps - 1 - length - start) // stride + 1
        return start + stride * ((round_index // every) % positions)

    def at_round(self, round_index: int) -> FlowSDESampler:
        """The sampler of training round r: itself unless its window slides or is drawn, and has moved."""
        if (self.window_shift is None and self.window_range is None) or self.window_origin is None:
            return self
        start = self.window_start(round_index)
        if self.sde_window is not None and start == self.sde_window[0]:
            return self
        moved = copy.copy(self)
        moved._set_window((start, self.window_origin[1]))
        return moved

    def model_timesteps(self) -> torch.Tensor:
        return self.timesteps * self.timestep_scale

    def _diffusion(self, sigma: torch.Tensor) -> torch.Tensor:
        if self.variant == "dancegrpo":
            return torch.full_like(sigma, self.noise_level)
        safe = torch.where(sigma >= 1.0, self.sigmas[1].to(sigma), sigma)
        return self.noise_level * (sigma / (1 - safe)).sqrt()

    def cps_std(self, sigma_next: torch.Tensor) -> torch.Tensor:
        """CPS's transition std sigma_next sin(a pi / 2) (the paper's sigma_t), per step."""
        return sigma_next * math.sin(self.noise_level * math.pi / 2)

    def with_std(self, std: torch.Tensor) -> FlowSDESampler:
        raise ValueError("a flow SDE's noise is set by its variant and noise level, not per step")

    def step(
        self,
        model_out: torch.Tensor,
        x: torch.Tensor,
        t: torch.Tensor,
        step_index: torch.Tensor | None = None,
        prev: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> StepResult:
        if step_index is None:
            raise ValueError("the flow SDE step needs the step index (its sigmas are indexed by it)")
        x32, v = x.float(), model_out.float()
        k = torch.as_tensor(step_index, device="cpu").long().expand(x.shape[0])
        sigma, sigma_next = self.sigmas[k].to(x.device), self.sigmas[k + 1].to(x.device)
        noisy = self.stochastic[k].to(x.device)  # (B,) False: an ODE step of the window's outside
        if self.variant == "cps":
            return self._cps_step(x, v, sigma, sigma_next, noisy, prev, generator)
        diffusion = torch.where(noisy, self._diffusion(sigma), torch.zeros_like(sigma))
        dt = _expand(sigma_next - sigma, x32)  # < 0
        s = _expand(sigma, x32)
        g = _expand(diffusion, x32)
        # drift v + g^2/(2t) (x + (1 - t) v): the score correction of the reverse SDE
        mean = x32 + dt * (v + g**2 / (2 * s) * (x32 + (1 - s) * v))
        std = diffusion * (sigma - sigma_next).sqrt()
        x_next = _draw(mean, std, prev, generator)
        logp = gaussian_logp(x_next, mean, torch.where(noisy, std, torch.ones_like(std)), self.logp_reduce)
        return StepResult(x_next.to(x.dtype), torch.where(noisy, logp, torch.zeros_like(logp)), mean, std)

    def _cps_step(
        self,
        x: torch.Tensor,
        v: torch.Tensor,
        sigma: torch.Tensor,
        sigma_next: torch.Tensor,
        noisy: torch.Tensor,
        prev: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> StepResult:
        """Coefficients-preserving step from t = sigma to t' = sigma_next (FlowCPS):

            x0^ = x - t v,   x1^ = x + (1 - t) v          (predicted data and noise)
            std = t' sin(a pi / 2)
            mean = (1 - t') x0^ + sqrt(t'^2 - std^2) x1^,   x' = mean + std z

        With an exact model x1^ is the noise of x, so x' = (1 - t') x0 + t' eps' with eps' standard
        normal: the step keeps the flow's coefficients (1 - t', t') exactly, where the Euler-Maruyama
        SDEs keep them only to first order in dt. The log-prob is FlowCPS's, with every constant
        removed: logp = -mean_dims (x' - mean)^2, i.e. not divided by 2 std^2 (a Gaussian of variance
        1/2 per dimension up to a constant); PPO ratios of it are the transition's ratios raised to
        the power 2 std^2. std = 0 (noise level 0, the final step, outside a window) is the Euler
        ODE step x + (t' - t) v with log-prob 0."""
        x32 = x.float()
        std = torch.where(noisy, self.cps_std(sigma_next), torch.zeros_like(sigma_next))
        s, s_next = _expand(sigma, x32), _expand(sigma_next, x32)
        x0_hat = x32 - s * v
        x1_hat = x32 + (1 - s) * v
        mean = x0_hat * (1 - s_next) + x1_hat * (s_next**2 - _expand(std, x32) ** 2).clamp(min=0).sqrt()
        x_next = _draw(mean, std, prev, generator)
        elem = -((x_next.float().detach() - mean) ** 2)
        dims = tuple(range(1, elem.ndim))
        if self.logp_reduce == "mean":
            logp = elem.mean(dim=dims)
        elif self.logp_reduce == "sum":
            logp = elem.sum(dim=dims)
        else:
            raise ValueError(f"logp_reduce must be 'mean' or 'sum', got {self.logp_reduce!r}")
        return StepResult(x_next.to(x.dtype), torch.where(noisy, logp, torch.zeros_like(logp)), mean, std)

    def native_weights(self) -> torch.Tensor:
        """The per-step credit w(t_i) (docs/algorithms.md#per-step-credit): the scale of d logp / d v = -w eps at
        the sampling weights. Flow-GRPO / DanceGRPO SDEs (Proposition 2):
        sqrt(dt_i)/g_i (1 + (1 - t_i) g_i^2/(2 t_i)). CPS [derived]: the mean's velocity
        coefficient is -C with C = t(1 - t') - (1 - t) sqrt(t'^2 - std^2), and its log-prob has no
        1/(2 std^2), so w = 2 std C."""
        t, t_next = self.sigmas[:-1], self.sigmas[1:]
        if self.variant == "cps":
            std = self.cps_std(t_next)
            c = t * (1 - t_next) - (1 - t) * (t_next**2 - std**2).clamp(min=0).sqrt()
            w = 2 * std * c
        else:
            dt = t - t_next
            g = self._diffusion(t)
            w = dt.sqrt() / g * (1 + (1 - t) * g**2 / (2 * t))
        return torch.where(self.stochastic, w, torch.zeros_like(w))  # an ODE step carries no credit


def sampler_at_round(sampler, round_index: int):
    """The sampler of training round r: a sliding SDE window moved there (FlowSDESampler.at_round);
    any other sampler as it is."""
    at_round = getattr(sampler, "at_round", None)
    return sampler if at_round is None else at_round(round_index)
