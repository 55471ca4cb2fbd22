"""DanceGRPO on DDIM/flow SDE samplers (Xue et al. 2025, arXiv 2505.07818; code XueZeyue/DanceGRPO
fastvideo/train_grpo_sd.py, train_grpo_flux.py; docs/algorithms.md#group-relative-advantages,
docs/algorithms.md#dancegrpo-on-ddim-models, docs/algorithms.md#the-grpo-loss).

    A_i  = (r_i - mean_g r) / (std_g r + 1e-8),  std_g unbiased (torch.std), per prompt group
    loss = mean_{i,t} max(-A_i rho_{i,t}, -A_i clip(rho_{i,t}, 1 - eps, 1 + eps)),  no KL

With kl_beta > 0 it is Flow-GRPO's objective (Liu et al. 2025, yifan123/flow_grpo
scripts/train_sd3.py; docs/algorithms.md#the-flow-grpo-sde): + beta mean_{i,t} KL(pi_theta || pi_ref) of the Gaussian
transitions, the reference being the frozen base weights (LoRA: the adapters switched off).

One x_T is shared by the group (members differ only by the SDE noise) and the last sampler step
is never trained. Group size is left to the study: the official recipes use 16 (SD-1.4, 4 prompts
x 16 per GPU) and 12 (FLUX)."""

from __future__ import annotations

from dataclasses import dataclass

from t2i_rl_bench.algorithm import Algorithm, AlgorithmSettings, Loss, Paper, Recipe, StepBatch, setting
from t2i_rl_bench.losses import gaussian_kl_to_reference, ppo_clip_loss


@dataclass(frozen=True)
class DanceGRPOSettings(AlgorithmSettings):
    clip_range: float = setting(1e-4, gt=0)  # config_sd/dgx.py and the FLUX scripts
    kl_beta: float = setting(0.0, ge=0)  # Flow-GRPO's KL to the reference (config.train.beta); 0 = DanceGRPO, no KL


class DanceGRPO(Algorithm):
    """Group-relative advantages inside the PPO clip; shared initial noise per group."""

    paper = Paper(
        "xue2025dancegrpo",
        "DanceGRPO: Unleashing GRPO on Visual Generation",
        (
            "Xue, Zeyue",
            "Wu, Jie",
            "Gao, Yu",
            "Kong, Fangyuan",
            "Zhu, Lingting",
            "Chen, Mengzhao",
            "Liu, Zhiheng",
            "Liu, Wei",
            "Guo, Qiushan",
            "Huang, Weilin",
            "Luo, Ping",
        ),
        2025,
        arxiv="2505.07818",
    )

    Settings = DanceGRPOSettings
    settings: DanceGRPOSettings
    recipe = Recipe(
        advantages="grpo_group",
        adv_clip=5.0,
        inner_epochs=1,
        updates_per_round=2,  # SD: 512 images / (train batch 4 x grad-accum 8 x 8 GPUs) = 2
        timestep_fraction=1.0,  # train_grpo_sd.py trains all 49 kept steps; FLUX scripts use 0.6
        drop_last_step=True,  # timesteps[:, :-1]
        shuffle_timesteps=True,  # per-sample permutation of the time axis, as DDPO
        same_noise_per_group=True,  # --init_same_noise / one global_input_latents
    )
    flow_variant = "dancegrpo"  # DanceGRPO's flux_step: constant diffusion (Flow-GRPO runs name 'flowgrpo')

    @property
    def needs_reference_means(self) -> bool:
        return self.settings.kl_beta > 0  # Flow-GRPO's KL compares the transition means

    def loss(self, batch: StepBatch) -> Loss:
        loss = ppo_clip_loss(batch.logp, batch.logp_old, batch.advantages, self.settings.clip_range)
        if self.settings.kl_beta <= 0:
            return loss
        if batch.mean_ref is None or batch.mean is None or batch.std is None:
            raise ValueError("kl_beta > 0 needs the reference's transition means (StepBatch.mean_ref)")
        kl = gaussian_kl_to_reference(batch.mean, batch.mean_ref, batch.std).mean()
        return Loss(
            loss.value + self.settings.kl_beta * kl,
            metrics={**loss.metrics, "kl_ref": kl.detach()},
            clipped=loss.clipped,
        )
