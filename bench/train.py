"""The one training loop every algorithm uses:
sample -> reward -> advantages -> (reference log-probs) -> inner epochs of loss/backward -> step,
with a checkpoint at every budget (a number of sampled training images) and a JSON line per round.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.algorithm import Algorithm, Loss, StepBatch
from bench.distributed import World
from bench.io import atomic_write_json, atomic_write_text, dumps_json, replace_dir
from bench.models.latent import LatentPolicy
from bench.models.policy import Policy
from bench.registry import ALGORITHMS, PluginError
from bench.reward import build_reward, zero_spread_fraction
from bench.rollout import make_sampler, recompute, rollout


class DivergedError(RuntimeError):
    """Training produced a non-finite loss or gradient."""


@dataclass
class RunConfig:
    """Everything one run needs; the Snakefile builds it from the validated study config."""

    model_path: str
    algorithm: str
    reward: object  # a reward spec (bench.reward)
    reward_settings: dict = field(default_factory=dict)  # {reward name: settings}, e.g. weight paths
    seed: int = 0
    model_options: dict = field(default_factory=dict)  # Policy.load keywords: resolution, mixed_precision
    algorithm_settings: dict = field(default_factory=dict)
    prompts: list[str] = field(default_factory=list)  # training prompts; empty = the world's 'train' set
    num_steps: int = 20
    eta: float = 1.0
    guidance: float = 3.0
    logp_reduce: str = "mean"
    flow_variant: str | None = None  # flow models: the SDE ('flowgrpo' or 'dancegrpo'); None: 'flowgrpo'
    images_per_round: int = 32
    group_size: int = 4
    micro_batch: int = 32  # samples per forward/backward (memory), not a hyper-parameter
    step_chunk: int = 0  # steps per forward/backward, 0 = all (memory only)
    lora_rank: int = 0  # 0: full fine-tuning of the denoiser; > 0: LoRA adapters of this rank
    lora_alpha: float | None = None  # None: = rank
    # train the first optimiser step of a round on the sampling forward's own graph (speed only;
    # same log-probs, same gradient up to float rounding; it holds every step's activations, as a
    # full-batch recompute does). None: on for the diffusers families when micro_batch and
    # step_chunk already ask for full-batch training; off for the embedded family, whose committed
    # study numbers depend on its bit-exact path
    reuse_sampling_graph: bool | None = None
    state_every: int = 1  # rounds between resumable states (a killed run continues from the last)
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    budgets: list[int] = field(default_factory=lambda: [64, 128])
    threads: int = 1


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def trained_steps(n: int, num_steps: int, fraction: float, drop_last: bool, shuffle: bool,
                  generator: torch.Generator) -> torch.Tensor:
    """(n, S) sampler-step indices trained per sample: a random subset per sample (ddpo-pytorch's
    per-sample permutation of the time axis) or the first S steps."""
    available = num_steps - int(drop_last)
    s = max(1, int(available * fraction))
    if not shuffle:
        return torch.arange(s).expand(n, s).clone()
    return torch.stack([torch.randperm(available, generator=generator)[:s] for _ in range(n)])


def _check_loss(name: str, loss) -> Loss:
    if not isinstance(loss, Loss):
        raise PluginError(f"algorithm {name!r}: loss() returned {type(loss).__name__}, expected bench.algorithm.Loss")
    if not torch.is_tensor(loss.value) or loss.value.ndim != 0:
        raise PluginError(f"algorithm {name!r}: Loss.value must be a scalar tensor, got {loss.value!r}")
    if not torch.isfinite(loss.value):
        raise DivergedError(f"algorithm {name!r}: non-finite loss {loss.value.item()}")
    return loss


class Trainer:
    def __init__(self, cfg: RunConfig, out: str | Path):
        self.cfg = cfg
        self.out = Path(out)
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.policy = Policy.load(cfg.model_path, **cfg.model_options)
        if cfg.lora_rank:
            self.policy.enable_lora(cfg.lora_rank, cfg.lora_alpha)
        self.algorithm: Algorithm = ALGORITHMS.get(cfg.algorithm)(**cfg.algorithm_settings)
        self.settings = self.algorithm.settings
        self.reward = build_reward(cfg.reward, cfg.reward_settings)
        self.sampler = make_sampler(self.policy, cfg.num_steps, cfg.eta, cfg.logp_reduce,
                                    flow_variant=cfg.flow_variant or "flowgrpo")
        self.algorithm.setup(self.sampler)
        if self.settings.needs_reference:
            self.policy.freeze_reference()
        self.params = self.policy.trainable_parameters()
        self.optimiser = torch.optim.AdamW(self.params, lr=cfg.lr, betas=tuple(cfg.betas),
                                           weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.group_size = self.settings.group_size or cfg.group_size
        if cfg.images_per_round % self.group_size:
            raise ValueError(f"images_per_round={cfg.images_per_round} is not a multiple of the group size "
                             f"{self.group_size} ({cfg.algorithm})")
        if not cfg.prompts:
            from bench.world.captions import prompt_sets

            cfg.prompts = prompt_sets()["train"]
        self.images_seen = 0
        self.seconds = 0.0
        self.reuse_graph = self._can_reuse_graph()
        self.world = World.current()  # several processes under torchrun (bench.distributed), else one

    # ---- one round -----------------------------------------------------------------------
    def sample_round(self):
        n_prompts = self.cfg.images_per_round // self.group_size
        chosen = self.rng.choice(len(self.cfg.prompts), size=n_prompts, replace=len(self.cfg.prompts) < n_prompts)
        share = self.world.share(n_prompts)  # this process's prompt groups (one process: all)
        prompts = [self.cfg.prompts[i] for i in chosen[share] for _ in range(self.group_size)]
        group_ids = torch.arange(n_prompts)[share].repeat_interleave(self.group_size)
        generator = self.world.sample_generator(self.cfg.seed, self.images_seen, self.generator)
        self.policy.denoiser.eval()
        traj = rollout(self.policy, self.sampler, prompts, self.cfg.guidance, generator, group_ids,
                       self.settings.same_noise_per_group, keep_graph=self.reuse_graph)
        return traj

    def _can_reuse_graph(self) -> bool:
        """Whether the first update of a round can backpropagate through the sampling forward: its
        weights are the sampling weights, and it must train every recorded transition (one update
        per inner epoch, all steps), else the graph's unused part would cost a wasted backward.
        The denoiser must compute the same in eval and train mode (no dropout, no batch norm)."""
        cfg = self.cfg
        wanted = cfg.reuse_sampling_graph
        if wanted is None:  # only where the memory of a full-batch recompute was asked for anyway
            full_batch = cfg.micro_batch >= cfg.images_per_round and not cfg.step_chunk
            wanted = isinstance(self.policy, LatentPolicy) and full_batch
        s = self.settings
        trains_all = s.updates_per_round == 1 and s.timestep_fraction >= 1 and not s.drop_last_step
        mode_free = not any((isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0)
                            or isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                            for m in self.policy.denoiser.modules())
        return bool(wanted and trains_all and mode_free)

    def round(self) -> dict:
        cfg, s = self.cfg, self.settings
        t0 = time.perf_counter()
        traj = self.sample_round()
        t1 = time.perf_counter()
        rewards, info = self.reward(self.policy.decode(traj.x0), traj.prompts, {"group_ids": traj.group_ids})
        rewards = rewards.float()
        # the whole round's statistics on every process; each trains its own rows (one process: all)
        rewards_all, group_ids_all = self.world.gather(rewards), self.world.gather(traj.group_ids)
        prompts_all = self.world.gather_list(traj.prompts)
        advantages_all = self.algorithm.advantages(rewards_all, group_ids_all, prompts_all).float()
        t2 = time.perf_counter()
        n, k = len(traj), self.sampler.num_steps
        own = self.world.rows(n)
        rewards, advantages = rewards_all[own], advantages_all[own]
        logp_ref_all = mean_ref_all = None
        if s.needs_reference:
            with torch.no_grad():
                logp_ref_all, mean_ref_all, _ = recompute(self.policy, self.sampler, traj, torch.arange(n),
                                                          torch.arange(k).expand(n, k), cfg.guidance, reference=True)
            if not getattr(s, "kl_beta", 0):  # the reference's means serve only Flow-GRPO's KL
                mean_ref_all = None
        self.policy.denoiser.train()
        stats: dict[str, list] = {"loss": [], "approx_kl": [], "clipfrac": [], "grad_norm": []}
        clip_hits, clip_counts = torch.zeros(k), torch.zeros(k)
        extra: dict[str, list] = {}
        for _ in range(s.inner_epochs):
            chunks = self._update_chunks(group_ids_all)
            steps = trained_steps(len(group_ids_all), k, s.timestep_fraction, s.drop_last_step, s.shuffle_timesteps,
                                  self.generator)[own]
            n_train = steps.shape[1]
            for part in chunks:
                chunk = self.world.own(part, n)  # this process's samples of the step
                self.optimiser.zero_grad(set_to_none=True)
                # only the round's first update still has the sampling weights; the graph holds
                # every sample, so it is backpropagated once, whatever the micro-batch size
                graph, traj.graph = traj.graph, None
                batches = [(chunk, steps[chunk])] if graph is not None else self._micro_batches(chunk, steps)
                batches = batches if len(chunk) else []
                for mb, cols in batches:
                    if graph is not None:
                        logp, mean, std = graph.select(mb, cols)
                    else:
                        logp, mean, std = recompute(self.policy, self.sampler, traj, mb, cols, cfg.guidance)
                    logp_old = torch.gather(traj.logp[mb], 1, cols)
                    batch = StepBatch(
                        logp=logp, logp_old=logp_old, advantages=advantages[mb], rewards=rewards[mb],
                        group_ids=traj.group_ids[mb], timesteps=self.sampler.timesteps[cols], step_index=cols,
                        logp_ref=None if logp_ref_all is None else torch.gather(logp_ref_all[mb], 1, cols),
                        mean=mean, std=std,
                        mean_ref=None if mean_ref_all is None else mean_ref_all[mb[:, None].expand_as(cols), cols],
                    )
                    loss = _check_loss(cfg.algorithm, self.algorithm.loss(batch))
                    (loss.value * cols.numel() / (len(part) * n_train)).backward()  # the global step's mean
                    with torch.no_grad():
                        delta = logp.detach() - logp_old
                        stats["loss"].append(loss.value.item())
                        stats["approx_kl"].append(0.5 * delta.pow(2).mean().item())
                        if loss.clipped is not None:
                            stats["clipfrac"].append(loss.clipped.float().mean().item())
                            clip_hits.index_add_(0, cols.flatten(), loss.clipped.float().flatten())
                            clip_counts.index_add_(0, cols.flatten(), torch.ones(cols.numel()))
                        for key, value in loss.metrics.items():
                            extra.setdefault(key, []).append(float(value))
                self.world.sum_gradients(self.params)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                if not torch.isfinite(grad_norm):
                    raise DivergedError(f"algorithm {cfg.algorithm!r}: non-finite gradient norm")
                stats["grad_norm"].append(grad_norm.item())
                self.optimiser.step()
        t3 = time.perf_counter()
        self.images_seen += len(group_ids_all)
        self.seconds += t3 - t0
        mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
        components = {f"reward/{k}": float(self.world.gather(v).mean()) for k, v in info.items() if torch.is_tensor(v)}
        return {
            "images_seen": self.images_seen,
            "reward_mean": float(rewards_all.mean()),
            "reward_std": float(rewards_all.std(unbiased=False)),
            **components,
            "adv_abs_mean": float(advantages_all.abs().mean()),
            "zero_spread_groups": zero_spread_fraction(rewards_all, group_ids_all),
            "trained_steps_per_sample": n_train,
            "loss": mean(stats["loss"]),
            "approx_kl": mean(stats["approx_kl"]),
            "clipfrac": mean(stats["clipfrac"]),
            "clipfrac_per_step": [round(float(h / c), 5) if c else None for h, c in zip(clip_hits, clip_counts)],
            "grad_norm": mean(stats["grad_norm"]),
            "optimiser_steps": len(stats["grad_norm"]),
            **{k: mean(v) for k, v in extra.items()},
            "seconds_sample": t1 - t0,
            "seconds_reward": t2 - t1,
            "seconds_train": t3 - t2,
            "seconds_total": self.seconds,
            "peak_memory_mb": _peak_memory_mb(),
        }

    def _update_chunks(self, group_ids: torch.Tensor) -> list[torch.Tensor]:
        """Sample indices (of the whole round, group_ids (N,)) of each optimiser step of one inner
        epoch (whole groups when the loss pairs group members)."""
        parts = self.settings.updates_per_round
        if self.algorithm.whole_groups:
            groups = torch.unique(group_ids)
            groups = groups[torch.randperm(len(groups), generator=self.generator)]
            return [torch.cat([torch.nonzero(group_ids == g).flatten() for g in part])
                    for part in torch.tensor_split(groups, parts) if len(part)]
        order = torch.randperm(len(group_ids), generator=self.generator)
        return [c for c in torch.tensor_split(order, parts) if len(c)]

    def _micro_batches(self, chunk: torch.Tensor, steps: torch.Tensor):
        """(samples, step columns) per forward/backward: memory only, the gradient is the same."""
        if self.algorithm.whole_groups:
            yield chunk, steps[chunk]
            return
        for mb in torch.split(chunk, self.cfg.micro_batch):
            cols = steps[mb]
            if self.algorithm.whole_trajectory or not self.cfg.step_chunk:
                yield mb, cols
            else:
                yield from ((mb, c) for c in torch.split(cols, self.cfg.step_chunk, dim=1))

    # ---- the run -------------------------------------------------------------------------
    def checkpoint(self, budget: int) -> None:
        if not self.world.main:  # the weights are the same in every process
            return
        folder = self.out / "checkpoints" / str(budget)
        tmp = folder.with_name(f".{budget}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        self.policy.save_denoiser(tmp)
        state = {"budget": budget, "images_seen": self.images_seen, "device_seconds": self.seconds,
                 "peak_memory_mb": _peak_memory_mb()}
        atomic_write_json(tmp / "state.json", state)
        replace_dir(tmp, folder)

    # ---- resuming ------------------------------------------------------------------------
    def _save_state(self, rounds_done: int) -> None:
        """Everything needed to continue bit-for-bit: weights, optimiser, every RNG, the
        algorithm's cross-round state; swapped into place atomically. (The other processes of a
        distributed run hold the same state, but for their sampling noise, seeded per round.)"""
        if not self.world.main:
            return
        tmp = self.out / ".state.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        self.policy.save_denoiser(tmp)
        torch.save({
            "rounds_done": rounds_done, "images_seen": self.images_seen, "seconds": self.seconds,
            "optimiser": self.optimiser.state_dict(), "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(), "numpy_rng": self.rng.bit_generator.state,
            "algorithm": self.algorithm.state_dict(), "run_config": self._config_key(),
        }, tmp / "trainer.pt")
        replace_dir(tmp, self.out / "state")

    def _config_key(self) -> dict:
        key = asdict(self.cfg)
        key.pop("threads", None)
        return json.loads(json.dumps(key, default=str))

    def _restore(self) -> int:
        """Rounds already done by an earlier, interrupted process (0 when starting fresh)."""
        state_dir = self.out / "state"
        if not (state_dir / "trainer.pt").is_file():
            return 0
        state = torch.load(state_dir / "trainer.pt", weights_only=False)
        if state["run_config"] != self._config_key():
            self.world.barrier()  # every process has read it before process 0 removes it
            if self.world.main:
                shutil.rmtree(state_dir)  # an interrupted run of another config: start over
            return 0
        self.policy.load_denoiser_state(state_dir)
        self.optimiser.load_state_dict(state["optimiser"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.algorithm.load_state_dict(state["algorithm"])
        self.images_seen, self.seconds = state["images_seen"], state["seconds"]
        return state["rounds_done"]

    # ---- the run -------------------------------------------------------------------------
    def run(self) -> dict:
        main = self.world.main  # the other processes of a distributed run write nothing
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out / "run_config.json", asdict(self.cfg))
        budgets = sorted(self.cfg.budgets)
        rounds = math.ceil(budgets[-1] / self.cfg.images_per_round)
        done = self._restore()
        log_path = self.out / "log.jsonl"
        kept = log_path.read_text().splitlines()[:done] if done and log_path.is_file() else []
        if main:
            atomic_write_text(log_path, "".join(line + "\n" for line in kept))
        status, error = "finished", None
        with open(log_path if main else os.devnull, "a") as log:
            try:
                for i in range(done, rounds):
                    line = {"round": i, **self.round()}
                    log.write(dumps_json(line, indent=None) + "\n")
                    log.flush()
                    for b in budgets:
                        if self.images_seen - self.cfg.images_per_round < b <= self.images_seen:
                            self.checkpoint(b)
                    if (i + 1) % self.cfg.state_every == 0 or i + 1 == rounds:
                        self._save_state(i + 1)
            except DivergedError as exc:
                status, error = "diverged", str(exc)
        summary = {"status": status, "error": error, "images_seen": self.images_seen,
                   "device_seconds": self.seconds, "peak_memory_mb": _peak_memory_mb(),
                   "algorithm": self.cfg.algorithm, "settings": asdict(self.settings)}
        if main:
            atomic_write_json(self.out / "summary.json", summary)
        return summary


def train(cfg: RunConfig, out: str | Path) -> dict:
    return Trainer(cfg, out).run()
