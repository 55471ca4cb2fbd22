"""A figure of a base model's samples with the prompt under each image, at a study's sampler
settings: what a person checks before trusting accuracy numbers
(docs/usage.md#the-embedded-world-default-offline-cpu, the report)."""

from __future__ import annotations

from pathlib import Path

import torch


def base_sample_figure(
    model: str | Path,
    out: str | Path,
    num_steps: int,
    eta: float,
    guidance: float,
    flow_variant: str = "flowgrpo",
    n_prompts: int = 12,
    per_prompt: int = 2,
    seed: int = 1234,
) -> Path:
    """Samples of the held-out prompts (evenly spread, as the evaluation picks them), `per_prompt`
    images each, every image captioned with the attributes the checker reads back wrong."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from t2i_rl_bench.evaluate import eval_prompts, sample_images
    from t2i_rl_bench.models.policy import Policy
    from t2i_rl_bench.rollout import make_sampler
    from t2i_rl_bench.world.checker import score

    torch.manual_seed(seed)
    policy = Policy.load(model)
    sampler = make_sampler(policy, num_steps, eta, flow_variant=flow_variant)
    prompts = [p for p in eval_prompts("heldout", n_prompts) for _ in range(per_prompt)]
    images = sample_images(policy, sampler, prompts, guidance, seed)
    columns = 2 * per_prompt
    rows = (len(prompts) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 2.9 * rows))
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, prompt in zip(axes.flat, images, prompts):
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        wrong = [k for k, ok in score(image.numpy(), prompt).items() if not ok]
        caption = prompt.replace(" , ", "\n")
        ax.set_title(caption + ("\nwrong: " + ", ".join(wrong) if wrong else "\nall six right"), fontsize=8)
    fig.suptitle(f"{Path(model).name}: held-out prompts, {num_steps} steps, eta {eta:g}, CFG {guidance:g}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
