"""The study config: schema validation with defaults, semantic checks that name the offending key,
and the grid of runs (model x reward x algorithm x seed) the Snakefile expands."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

from bench.models.checkpoint import BUILTIN_FAMILIES, MANIFEST, MODEL_INDEX, PIPELINE_FAMILIES

SCHEMA = Path(__file__).resolve().parent.parent / "config" / "schema.yaml"


# per-model keys passed to Policy.load (RunConfig.model_options)
MODEL_OPTIONS = ("resolution", "mixed_precision")
FLOW_VARIANTS = ("flowgrpo", "dancegrpo")  # bench.sampling.FlowSDESampler


class ConfigError(ValueError):
    """A study config that cannot run; the message names the key."""


def _fill_defaults(validator_cls):
    validate_props = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults})


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def reward_label(spec) -> str:
    return spec if isinstance(spec, str) else "+".join(f"{k}x{v:g}" for k, v in spec.items())


@dataclass(frozen=True)
class RunKey:
    model: str
    reward: str
    algorithm: str
    seed: int

    @property
    def path(self) -> str:
        return f"{self.model}/{self.reward}/{self.algorithm}/seed{self.seed}"


def validate(config: dict, check_paths: bool = True) -> dict:
    """Validated copy of the config with defaults filled in; raises ConfigError naming the key."""
    from bench.registry import ALGORITHMS, REWARDS, PluginError

    config = copy.deepcopy(config)
    validator = _fill_defaults(jsonschema.Draft202012Validator)(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        key = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ConfigError(f"config key '{key}': {e.message}")
    train = config["train"]
    budgets = train["budgets"]
    if any(b2 <= b1 for b1, b2 in zip(budgets, budgets[1:])):
        raise ConfigError(f"config key 'train.budgets': budgets must be strictly increasing, got {budgets}")
    for b in budgets:
        if b % train["images_per_round"]:
            raise ConfigError(f"config key 'train.budgets': budget {b} is not a multiple of "
                              f"train.images_per_round={train['images_per_round']}")
    for label, settings in config["algorithms"].items():
        settings = dict(settings or {})
        ref = settings.pop("plugin", label)
        if settings.pop("flow_variant", "flowgrpo") not in FLOW_VARIANTS:
            raise ConfigError(f"config key 'algorithms.{label}.flow_variant': one of {list(FLOW_VARIANTS)}")
        try:
            algo = ALGORITHMS.get(ref)(**settings)
        except (KeyError, PluginError, ValueError, TypeError) as exc:
            raise ConfigError(f"config key 'algorithms.{label}': {exc}") from exc
        group = algo.settings.group_size or train["group_size"]
        if train["images_per_round"] % group:
            raise ConfigError(f"config key 'algorithms.{label}': group size {group} does not divide "
                              f"train.images_per_round={train['images_per_round']}")
    from bench.reward import check_weights

    reward_specs = [(f"rewards[{i}]", spec) for i, spec in enumerate(config["rewards"])]
    reward_specs += [("evaluation.rewards", name) for name in config["evaluation"]["rewards"]]
    for key, spec in reward_specs:
        for name in [spec] if isinstance(spec, str) else list(spec):
            try:
                REWARDS.get(name)
            except (KeyError, PluginError) as exc:
                raise ConfigError(f"config key '{key}': {exc}") from exc
        if check_paths:
            problems = check_weights(spec, config["reward_settings"])
            if problems:
                raise ConfigError(f"config key '{key}': {problems[0]}")
    clip_model = config["evaluation"]["clip_model"]
    if check_paths and clip_model and not (Path(clip_model) / MANIFEST).is_file():
        raise ConfigError(f"config key 'evaluation.clip_model': no judge at {clip_model} (missing {MANIFEST}); "
                          "regenerate it with `python -m bench pretrain-clip` or set the key to null")
    check_gpu_budget(config)
    recursive_variants(config)  # unique variant names
    for name, model in config["models"].items():
        check_model(name, model, check_paths)
    return config


def model_file(model: dict) -> str:
    """The file that marks a model folder as present: the diffusers pipeline index of a real model
    (family sd or flow), else the harness manifest (what the Snakefile's train rule waits for)."""
    marker = MODEL_INDEX if model.get("family", "embedded") in PIPELINE_FAMILIES.values() else MANIFEST
    return str(Path(model["path"]) / marker)


def check_model(name: str, model: dict, check_paths: bool) -> None:
    """A known family, options the family takes, and (check_paths) a folder of that family."""
    from bench.registry import MODELS

    family = model.get("family", "embedded")
    if family not in BUILTIN_FAMILIES and family not in MODELS.names():
        raise ConfigError(f"config key 'models.{name}.family': unknown model family {family!r}; known: "
                          + ", ".join(sorted(set(BUILTIN_FAMILIES) | set(MODELS.names()))))
    options = sorted(set(model) & set(MODEL_OPTIONS))
    if family == "embedded" and options:
        raise ConfigError(f"config key 'models.{name}.{options[0]}': the embedded family takes no such option")
    if not check_paths:
        return
    folder, marker = Path(model["path"]), Path(model_file(model))
    if family == "embedded":  # the pretrain rule builds a missing embedded model
        return
    if not marker.is_file():
        raise ConfigError(f"config key 'models.{name}.path': no model at {folder} "
                          f"(missing {marker}); give a local model folder")
    if marker.name == MODEL_INDEX:
        pipeline = json.loads(marker.read_text()).get("_class_name")
        if PIPELINE_FAMILIES.get(pipeline) != family:
            raise ConfigError(f"config key 'models.{name}.family': {folder} holds a {pipeline!r}, "
                              f"not a family {family!r} pipeline")


def gpu_hours(config: dict) -> float:
    """GPU-hours the grid declares: jobs x gpus x runtime, summed over train, evaluate and probe."""
    n_runs = len(runs(config))
    rules = ["train", "evaluate"] + (["probe"] if config["probe"]["enabled"] else [])
    return sum(n_runs * config["resources"][r]["gpu"] * config["resources"][r]["runtime"] / 60 for r in rules)


def check_gpu_budget(config: dict) -> None:
    budget = config["resources"]["gpu_hours_budget"]
    needed = gpu_hours(config)
    if budget is not None and needed > budget:
        per_rule = ", ".join(f"{r}: {config['resources'][r]['gpu']} GPU x {config['resources'][r]['runtime']} min"
                             for r in ("train", "evaluate", "probe"))
        raise ConfigError(f"config key 'resources.gpu_hours_budget': the grid declares {needed:.1f} GPU-hours "
                          f"({len(runs(config))} runs; {per_rule}) but the budget is {budget:g}")


def load(path: str | Path, check_paths: bool = True) -> dict:
    return validate(yaml.safe_load(Path(path).read_text()), check_paths)


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def runs(config: dict) -> list[RunKey]:
    return [
        RunKey(model, reward_label(reward), algo, seed)
        for model in config["models"]
        for reward in config["rewards"]
        for algo in config["algorithms"]
        for seed in config["seeds"]
    ]


def recursive_variants(config: dict) -> dict[str, dict]:
    """The self-consuming loop's variants of a validated config, name -> the settings of
    bench.recursive.RecursiveSettings (the shared settings with the variant's overrides), in the
    config's order (the first is the one the verdicts read). No `variants`: one variant of the
    shared settings, named <mode>-real<fraction>."""
    section = {k: v for k, v in config.get("recursive", {}).items() if k not in ("enabled", "variants")}
    variants = config.get("recursive", {}).get("variants") or [
        {"name": f"{section.get('mode', 'replace')}-real{section.get('real_fraction', 0.0):g}"}]
    out: dict[str, dict] = {}
    for v in variants:
        if v["name"] in out:
            raise ConfigError(f"config key 'recursive.variants': the name {v['name']!r} is used twice")
        out[v["name"]] = {**section, **v}
    return out


def base_run_key(config: dict, model: str, reward: str | None = None, algorithm: str | None = None) -> RunKey:
    """A run standing for every run that shares the base model's evaluation (a model) or probe (a
    model x reward x algorithm); the commands compare the settings they depend on before reusing it."""
    return RunKey(model, reward or reward_label(config["rewards"][0]), algorithm or next(iter(config["algorithms"])),
                  config["seeds"][0])


def train_command(config: dict, python: str) -> str:
    """How a train job starts: with resources.train.gpu > 1 one torchrun launch, a process per GPU
    (bench/distributed.py); otherwise one process."""
    gpus = config["resources"]["train"].get("gpu", 0)
    if gpus > 1:
        return f"{Path(python).with_name('torchrun')} --standalone --nproc-per-node {gpus} -m bench"
    return f"{python} -m bench"


def run_config(config: dict, key: RunKey) -> dict:
    """The keyword arguments of bench.train.RunConfig for one run of the grid."""
    reward = next(r for r in config["rewards"] if reward_label(r) == key.reward)
    settings = dict(config["algorithms"][key.algorithm] or {})
    algorithm = settings.pop("plugin", key.algorithm)
    model = config["models"][key.model]
    sampling = dict(config["sampling"])
    # the algorithm's own flow_variant, else the study's, else the SDE its paper samples with
    variant = (settings.pop("flow_variant", None) or sampling.pop("flow_variant", None)
               or ("dancegrpo" if algorithm == "dancegrpo" else "flowgrpo"))
    sampling.pop("flow_variant", None)
    # model_options and flow_variant only where they say something (an embedded DDIM run's config,
    # hence its Snakemake params and resumable state, stay as they were; RunConfig's defaults apply)
    options = {k: model[k] for k in MODEL_OPTIONS if k in model}
    return {
        "model_path": model["path"],
        **({"model_options": options} if options else {}),
        "algorithm": algorithm,
        "algorithm_settings": settings,
        "reward": reward,
        "seed": key.seed,
        "reward_settings": config["reward_settings"],
        **({"flow_variant": variant} if model_objective(model) == "flow" else {}),
        **sampling,
        **config["train"],
    }


def model_objective(model: dict) -> str:
    """'flow' or 'epsilon' (v-prediction counts as 'epsilon': DDIM samples it): the family's, or
    for an embedded model the shipped manifest's spec, else the objective its pretrain rule uses."""
    family = model.get("family", "embedded")
    if family in PIPELINE_FAMILIES.values():
        return "flow" if family == "flow" else "epsilon"
    manifest = Path(model["path"]) / MANIFEST
    if manifest.is_file():
        return json.loads(manifest.read_text()).get("spec", {}).get("objective", "epsilon")
    return model.get("pretrain", {}).get("objective", "epsilon")
