"""The run spec: everything one run needs, typed and frozen, with the only run defaults.

The study module (bench/study.py) builds one per grid point from the validated config; `train`
writes it as `run_config.json` in the run folder, and evaluate, probe and recursive read it back
from there (`RunSpec.from_json`). A field the config does not set keeps the default written here;
config/schema.yaml names the keys but carries no second copy of these defaults."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUN_SPEC_FILE = "run_config.json"
_OMITTED_WHEN_UNSET = ("sde_window", "sde_window_shift", "sde_window_range", "reuse_graph_samples")

# a reward spec (t2i_rl_bench.reward): a registered name, or {name: weight} for a weighted sum
RewardSpec = str | dict[str, float]


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid. Sequences are tuples (the spec is frozen); JSON holds them as lists."""

    # what is trained, on what, with which method
    model_path: str
    algorithm: str  # a registered algorithm (or a plugin reference)
    reward: RewardSpec
    reward_settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # {reward name: settings}
    seed: int = 0
    model_options: dict[str, Any] = field(default_factory=dict)  # Policy.load keywords: resolution, mixed_precision
    # the algorithm's overrides of its loss settings and training recipe (t2i_rl_bench.algorithm), checked
    # against their dataclass fields before any job starts
    algorithm_settings: dict[str, Any] = field(default_factory=dict)
    prompts: tuple[str, ...] = ()  # training prompts; empty = the world's 'train' set
    # sampling
    num_steps: int = 20
    eta: float = 1.0
    guidance: float = 3.0
    logp_reduce: str = "mean"
    flow_variant: str | None = None  # flow models: the SDE; None: the algorithm's own (Algorithm.flow_variant)
    # flow models: (start, length) of the steps that are stochastic and trained; the ODE elsewhere
    # (Flow-GRPO-Fast, MixGRPO's fixed window); None: every step
    sde_window: tuple[int, int] | None = None
    # (every, stride): the window moves `stride` steps every `every` rounds and starts over after its
    # last position (MixGRPO's sliding window; FlowSDESampler.window_start); None: a fixed window
    sde_window_shift: tuple[int, int] | None = None
    # (lo, hi): the window's start is drawn each round from lo .. hi - length, both included, from
    # the run's seed and the round (Flow-GRPO-Fast's sde_window_range; FlowSDESampler.window_start)
    sde_window_range: tuple[int, int] | None = None
    # the round
    images_per_round: int = 32
    group_size: int = 4  # images per prompt, unless the algorithm's recipe fixes it
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
    # the reused graph bounded (docs/performance.md#the-reused-graph-bounded): at most this many of
    # the round's samples keep the sampling graph, the others are recomputed in micro-batches of at
    # most as many (memory scales with it; speed only). None: the family's default
    # (bench/train/loop.py: LATENT_GRAPH_SAMPLES for the diffusers families, all for the embedded
    # one); 0: no graph. Left out of the JSON while unset
    reuse_graph_samples: int | None = None
    state_every: int = 1  # rounds between resumable states (a killed run continues from the last)
    # the optimiser (AdamW)
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    budgets: tuple[int, ...] = (64, 128)  # checkpoints, in sampled training images
    # where the curves go besides the JSON lines (bench/tracking.py): TensorBoard always, Weights &
    # Biases with {"wandb": true, "project": ..., "mode": "offline"}. Bookkeeping, not the run's
    # identity: left out of the JSON when empty (the run configs of earlier studies stay as they
    # were), and a resumed run or a shared base result does not depend on it
    tracking: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # lists from JSON or a caller become tuples, so a spec read back equals the one written
        for name in ("prompts", "betas", "budgets"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("sde_window", "sde_window_shift", "sde_window_range"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples as lists). Fields added after studies were run are left out
        while unset (`tracking` while empty), so the specs of those runs (the workflow's job
        parameters, the keys of shared base evaluations and probes) stay the same."""
        data = json.loads(json.dumps(dataclasses.asdict(self)))
        if not data["tracking"]:
            del data["tracking"]
        return {k: v for k, v in data.items() if not (k in _OMITTED_WHEN_UNSET and v is None)}

    def identity(self) -> dict[str, Any]:
        """What the run's results depend on: its JSON without the tracking settings."""
        return {k: v for k, v in self.to_dict().items() if k != "tracking"}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"run spec: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        return cls.from_dict(json.loads(text))

    @classmethod
    def read(cls, run_dir: str | Path) -> RunSpec:
        """The spec a train job wrote into its run folder."""
        return cls.from_json((Path(run_dir) / RUN_SPEC_FILE).read_text())

    def replace(self, **changes: Any) -> RunSpec:
        return dataclasses.replace(self, **changes)
