"""The study config: schema validation with defaults, semantic checks that name the offending key,
the grid of runs (model x reward x algorithm x seed) the Snakefile expands, and the RunSpec of
each run (bench/spec.py), whose fields hold the run defaults."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from t2i_rl_bench.models.checkpoint import MANIFEST, MODEL_INDEX, PIPELINE_FAMILIES
from t2i_rl_bench.sampling import FLOW_VARIANTS
from t2i_rl_bench.spec import RunSpec

SCHEMA = Path(__file__).resolve().parent.parent / "config" / "schema.yaml"


# per-model keys passed to Policy.load (RunSpec.model_options)
MODEL_OPTIONS = ("resolution", "mixed_precision")
# config sections whose keys are RunSpec fields: their defaults are the RunSpec's
SPEC_SECTIONS = ("sampling", "train")


class ConfigError(ValueError):
    """A study config that cannot run; the message names the key. `errors`: every error found
    at once (the schema's), one line each; else the message alone."""

    def __init__(self, message: str, errors: list[str] | None = None):
        super().__init__(message)
        self.errors = errors or [message]


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


# ---- reading a config file: numbers as YAML 1.2 reads them, each key once -------------------------
# YAML 1.1 (PyYAML, Snakemake) reads a number with an exponent and no dot (`2e-4`, `1E5`) as text
EXPONENT_NUMBER = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with two changes: `2e-4` is the number 2.0e-4 (as in YAML 1.2 and
    JSON), and a key given twice in one mapping is refused naming the key and both lines (YAML
    would keep the last one silently)."""

    yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.setdefault(key, line)
                except TypeError:  # an unhashable key: the schema refuses it with its own message
                    continue
                if first != line:
                    raise ConfigError(
                        f"line {line}: the key {key!r} is given twice in one mapping (first on line {first}); "
                        "YAML would keep only the last: write each key once"
                    )
        return super().construct_mapping(node, deep=deep)


ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_NUMBER, list("-+0123456789."))


def read_yaml(path: str | Path) -> Any:
    """A config file's content (ConfigLoader); errors name the file and the line."""
    try:
        return yaml.load(Path(path).read_text(), Loader=ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def numbers_as_numbers(value: Any) -> Any:
    """`value` with every string spelled like a number with an exponent (`2e-4`: text to YAML 1.1,
    which Snakemake reads the config with) as that number; mapping keys stay as they are."""
    if isinstance(value, str) and EXPONENT_NUMBER.match(value.strip()):
        return float(value.strip().replace("_", ""))
    if isinstance(value, dict):
        return {k: numbers_as_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [numbers_as_numbers(v) for v in value]
    return value


# ---- labels: each names a folder (a study, a run) and a table row; none may leave its folder
# one rule for every name a config gives (the study, model and algorithm keys, recursive variants)
LABEL = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
LABEL_RULE = "use ASCII letters, digits, '-', '_' and '.' only, not starting with '.'"
# a reward's folder label is derived from its spec: every other character becomes '-' (a plugin
# path's ':' and a weighted sum's '+' and 'x' stay, as in the folders of earlier studies)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+=:-]|^\.")


# labels a CSV reader takes for a missing value or a number (pandas' defaults): a table row
# labelled so would lose its name when the report reads the tables back
_NOT_NAMES = {
    "",
    "#n/a",
    "#n/a n/a",
    "#na",
    "-1.#ind",
    "-1.#qnan",
    "-nan",
    "1.#ind",
    "1.#qnan",
    "<na>",
    "n/a",
    "na",
    "nan",
    "null",
    "none",
    "true",
    "false",
}


def _reads_as_name(label: str) -> bool:
    if label.lower() in _NOT_NAMES:
        return False
    try:
        float(label)
    except ValueError:
        return True
    return False


def safe_label(label: str) -> str:
    """`label` with every character that cannot be part of one folder name replaced by '-'
    (a reward named by its plugin path, `plugins/r.py:fn`, runs in the folder `plugins-r.py:fn`)."""
    return _UNSAFE.sub("-", label)


def reward_label(spec) -> str:
    """The name a training or evaluation reward has in run folders, tables and metric names."""
    return safe_label(spec if isinstance(spec, str) else "+".join(f"{k}x{v:g}" for k, v in spec.items()))


def check_finite(value: Any, key: str = "") -> None:
    """NaN and infinity are refused wherever a number is set (YAML reads `.nan` and `.inf`), and
    every mapping key is a string (YAML reads `1:` as an integer): each error names the key."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{key}': {value} is not a finite number (use null where a setting is optional)")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(
                    f"config key '{key + '.' if key else ''}{k}': the key {k!r} must be a string (quote it)"
                )
            check_finite(v, f"{key}.{k}" if key else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_finite(v, f"{key}[{i}]")


def check_labels(config: dict) -> None:
    """Labels that name folders are refused when they cannot be one folder name (the study, the
    model and algorithm keys); reward labels are mapped by `reward_label`, and two specs that map to
    the same label are refused. Each error names the key."""
    rule = LABEL_RULE
    if not LABEL.match(config["study"]):
        raise ConfigError(f"config key 'study': {config['study']!r} names the study's output folder; {rule}")
    for section in ("models", "algorithms"):
        for label in config[section]:
            if not _reads_as_name(label):
                raise ConfigError(
                    f"config key '{section}.{label}': the label {label!r} would be read back from "
                    "the tables as a missing value or a number; give it a name with a letter"
                )
            if not LABEL.match(label):
                hint = (
                    " A plugin's file goes under `plugin:`, e.g. `algorithms: {my_algo: {plugin: "
                    "plugins/my_algo.py:MyAlgo}}`."
                    if section == "algorithms"
                    else ""
                )
                raise ConfigError(
                    f"config key '{section}.{label}': the label {label!r} names run folders and "
                    f"table rows; {rule}.{hint}"
                )
    for section in ("models", "algorithms"):  # one folder on a case-insensitive file system (macOS, Windows)
        folded: dict[str, str] = {}
        for label in config[section]:
            if label.casefold() in folded:
                raise ConfigError(
                    f"config key '{section}.{label}': differs from '{section}.{folded[label.casefold()]}' only "
                    "in case, and both name one run folder where file names ignore case; rename one"
                )
            folded[label.casefold()] = label
    seen: dict[str, str] = {}  # case-folded label -> its key
    for i, spec in enumerate(config["rewards"]):
        label = reward_label(spec)
        if label.casefold() in seen:
            raise ConfigError(
                f"config key 'rewards[{i}]': {spec!r} has the same run-folder label {label!r} (case aside) as "
                f"{seen[label.casefold()]}; give each training reward once"
            )
        seen[label.casefold()] = f"rewards[{i}]"


@dataclass(frozen=True)
class RunKey:
    model: str
    reward: str
    algorithm: str
    seed: int

    @property
    def path(self) -> str:
        return f"{self.model}/{self.reward}/{self.algorithm}/seed{self.seed}"


def _fill_spec_defaults(config: dict, schema: dict) -> None:
    """The sampling and train keys the config leaves out, at the RunSpec's defaults (as JSON); a
    key whose default is None stays out unless the schema admits null."""
    fields = {f.name: f for f in dataclasses.fields(RunSpec)}
    for section in SPEC_SECTIONS:
        for key, prop in schema["properties"][section]["properties"].items():
            f = fields[key]
            if key in config[section]:
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if default is None and "null" not in prop.get("type", []):
                continue
            config[section][key] = json.loads(json.dumps(default))


def check_algorithm(label: str, settings: dict | None) -> Any:
    """The algorithm a config label runs, built from its settings (each field's type and range
    checked by its dataclass); errors name `algorithms.<label>[.<key>]`."""
    from t2i_rl_bench.algorithm import SettingError
    from t2i_rl_bench.registry import ALGORITHMS, PluginError

    settings = dict(settings or {})
    ref = settings.pop("plugin", label)
    variant = settings.pop("flow_variant", None)
    if variant is not None and variant not in FLOW_VARIANTS:
        raise ConfigError(f"config key 'algorithms.{label}.flow_variant': one of {list(FLOW_VARIANTS)}")
    window = settings.pop("sde_window", None)
    if window is not None and not (
        isinstance(window, list | tuple)
        and len(window) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in window)
    ):
        raise ConfigError(
            f"config key 'algorithms.{label}.sde_window': [start, length] of integers >= 0, got {window!r}"
        )
    shift = settings.pop("sde_window_shift", None)
    if shift is not None and not (
        isinstance(shift, list | tuple)
        and len(shift) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shift)
    ):
        raise ConfigError(
            f"config key 'algorithms.{label}.sde_window_shift': [every, stride] of integers >= 1, got {shift!r}"
        )
    drawn = settings.pop("sde_window_range", None)
    if drawn is not None and not (
        isinstance(drawn, list | tuple)
        and len(drawn) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in drawn)
    ):
        raise ConfigError(f"config key 'algorithms.{label}.sde_window_range': [lo, hi] of integers >= 0, got {drawn!r}")
    lr = settings.pop("lr", None)
    if lr is not None and not (isinstance(lr, int | float) and not isinstance(lr, bool) and lr > 0):
        raise ConfigError(f"config key 'algorithms.{label}.lr': a learning rate > 0, got {lr!r}")
    micro_batch = settings.pop("micro_batch", None)
    if micro_batch is not None and not (
        isinstance(micro_batch, int) and not isinstance(micro_batch, bool) and micro_batch >= 1
    ):
        raise ConfigError(f"config key 'algorithms.{label}.micro_batch': an integer >= 1, got {micro_batch!r}")
    eta = settings.pop("eta", None)
    if eta is not None and not (isinstance(eta, int | float) and not isinstance(eta, bool) and eta > 0):
        raise ConfigError(f"config key 'algorithms.{label}.eta': the noise level of its SDE, a number > 0, got {eta!r}")
    try:
        return ALGORITHMS.get(ref)(**settings)
    except SettingError as exc:
        raise ConfigError(f"config key 'algorithms.{label}.{exc.key}': {exc.message}") from exc
    except (KeyError, PluginError, ValueError, TypeError) as exc:
        raise ConfigError(f"config key 'algorithms.{label}': {exc}") from exc


def resolve_extends(config: dict, chain: tuple[str, ...] = ()) -> dict:
    """A config that names `extends: <file>` is that file's config with each top-level section the
    config gives in place of the file's: a section is replaced whole, never merged key by key, so a
    preset that lists its own `algorithms` runs exactly those (docs/usage.md#presets-that-extend-another).
    The file is a path from the working directory, as plugin and model paths are; a chain of
    files is followed and a cycle refused. The result holds no `extends`, so a preset written out
    in full and the same preset written as an extension validate to the same config and hash."""
    if "extends" not in config:
        return config
    path = config["extends"]
    where = f"{chain[-1]}: " if chain else ""
    if not isinstance(path, str):
        raise ConfigError(f"{where}config key 'extends': a config file's path, e.g. config/long.yaml; got {path!r}")
    if path in chain:
        raise ConfigError(f"config key 'extends': {' -> '.join((*chain, path))} is a cycle")
    if not Path(path).is_file():
        raise ConfigError(
            f"{where}config key 'extends': {path} is not a file (a path from the working directory, "
            "where snakemake starts, e.g. config/long.yaml)"
        )
    base = read_yaml(path)
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: a study config is a mapping of keys (study, seeds, models, ...)")
    base = resolve_extends(base, (*chain, path))
    own = {key: value for key, value in config.items() if key != "extends"}
    if "study" not in own or own["study"] == base.get("study", "default"):
        raise ConfigError(
            f"{where}config key 'study': a config that extends {path} names a study of its own "
            f"(it would write into {base.get('study', 'default')!r}'s folders)"
        )
    return {**base, **own}


def validate(config: dict, check_paths: bool = True, verify: bool = True) -> dict:
    """Validated copy of the config with defaults filled in; raises ConfigError naming the key.
    A config that `extends` another is resolved first (`resolve_extends`). With check_paths and
    verify (and the config's verify_sha256), every model's and judge's weight files are checked
    against their recorded SHA-256 first (t2i_rl_bench.integrity)."""
    from t2i_rl_bench.registry import REWARDS, PluginError

    config = resolve_extends(copy.deepcopy(config))
    config = numbers_as_numbers(config)  # `2e-4` is a number, however YAML read it
    check_finite(config)
    schema = load_schema()
    validator = _fill_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        messages = [
            f"config key '{'.'.join(str(p) for p in e.absolute_path) or '(top level)'}': {e.message}" for e in errors
        ]
        raise ConfigError(messages[0], messages)  # every schema error, one line each (`validate` prints them all)
    _fill_spec_defaults(config, schema)
    check_labels(config)
    if check_paths and verify:
        from t2i_rl_bench.integrity import check_study

        check_study(config)  # a damaged checkpoint, named with its config key, before anything else
    train = config["train"]
    budgets = train["budgets"]
    if any(b2 <= b1 for b1, b2 in zip(budgets, budgets[1:])):
        raise ConfigError(f"config key 'train.budgets': budgets must be strictly increasing, got {budgets}")
    for b in budgets:
        if b % train["images_per_round"]:
            raise ConfigError(
                f"config key 'train.budgets': budget {b} is not a multiple of "
                f"train.images_per_round={train['images_per_round']}"
            )
    algorithms = {label: check_algorithm(label, settings) for label, settings in config["algorithms"].items()}
    for label, algorithm in algorithms.items():
        check_group_size(config, label, algorithm.recipe.group_size)
    from t2i_rl_bench.reward import check_weights

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
    check_differentiable_rewards(config, algorithms)
    clip_model = config["evaluation"]["clip_model"]
    if check_paths and clip_model and not (Path(clip_model) / MANIFEST).is_file():
        raise ConfigError(
            f"config key 'evaluation.clip_model': no judge at {clip_model} (missing {MANIFEST}); "
            "regenerate it with `python -m t2i_rl_bench pretrain-clip` or set the key to null"
        )
    check_gpu_budget(config)
    recursive_variants(config)  # unique variant names
    num_steps = config["sampling"].get("num_steps", RunSpec.num_steps)
    for key, window in window_settings(config):
        if window[1] < 1 or window[0] + window[1] > num_steps:
            raise ConfigError(
                f"config key '{key}': [start, length] = {window} must lie inside the "
                f"{num_steps} sampler steps, length >= 1"
            )
    check_sliding_windows(config, num_steps)
    for name, model in config["models"].items():
        check_model(name, model, check_paths)
        family = "flow" if model_objective(model) == "flow" else "ddim"
        for key, _ in window_settings(config):
            if family != "flow":
                raise ConfigError(f"config key '{key}': a flow-SDE option, and model {name!r} samples with DDIM")
        for label, algorithm in algorithms.items():
            if family not in algorithm.sampler_families:
                raise ConfigError(
                    f"config key 'algorithms.{label}': {type(algorithm).__name__} is defined for "
                    f"{' and '.join(algorithm.sampler_families)} samplers, and model {name!r} samples "
                    f"with {family}"
                )
            if family == "flow" and algorithm.flow_variants is not None:
                own = (config["algorithms"][label] or {}).get("flow_variant")
                variant = own or config["sampling"].get("flow_variant") or algorithm.flow_variant
                if variant not in algorithm.flow_variants:
                    key = f"algorithms.{label}.flow_variant" if own else "sampling.flow_variant"
                    raise ConfigError(
                        f"config key '{key}': {type(algorithm).__name__} is defined for the flow SDEs "
                        f"{list(algorithm.flow_variants)}, not {variant!r}"
                    )
    return config


def check_differentiable_rewards(config: dict, algorithms: dict[str, Any]) -> None:
    """A differentiable-reward method (DRaFT-K, ReFL) backpropagates through the training reward:
    refuse a grid that pairs one with a reward that has no gradient, naming both keys."""
    from t2i_rl_bench.reward import not_differentiable

    for label, algorithm in algorithms.items():
        if algorithm.family != "differentiable":
            continue
        for i, spec in enumerate(config["rewards"]):
            bad = not_differentiable(spec)
            if bad:
                raise ConfigError(
                    f"config key 'rewards[{i}]': reward {bad[0]!r} is not differentiable, and "
                    f"'algorithms.{label}' ({type(algorithm).__name__}) backpropagates through the "
                    "reward: use a differentiable reward (e.g. clip_alignment) or another method"
                )


def window_settings(config: dict) -> list[tuple[str, list[int]]]:
    """(config key, [start, length]) of every SDE window the config sets: the study's and the
    algorithms' own."""
    found = [("sampling.sde_window", config["sampling"]["sde_window"])] if config["sampling"].get("sde_window") else []
    for label, settings in config["algorithms"].items():
        if (settings or {}).get("sde_window") is not None:
            found.append((f"algorithms.{label}.sde_window", settings["sde_window"]))
    return found


def check_sliding_windows(config: dict, num_steps: int) -> None:
    """Each label's sliding SDE window (its own sde_window_shift or the study's, over its own window
    or the study's): it needs a window, and one that ends before the final step, where it starts
    over. The cps sampler's noise level is an angle in [0, 1]. Errors name the key."""
    sampling = config["sampling"]
    for label, settings in config["algorithms"].items():
        settings = settings or {}
        own = settings.get("sde_window_shift") is not None
        shift = settings["sde_window_shift"] if own else sampling.get("sde_window_shift")
        window = settings.get("sde_window") or sampling.get("sde_window")
        key = f"algorithms.{label}.sde_window_shift" if own else "sampling.sde_window_shift"
        if shift is not None and window is None:
            raise ConfigError(f"config key '{key}': slides an SDE window, and {label!r} has none (set sde_window)")
        if shift is not None and window[0] + window[1] > num_steps - 1:
            raise ConfigError(
                f"config key '{key}': the window {list(window)} of {label!r} must end before the final "
                f"of the {num_steps} sampler steps to slide (it moves while it does, then starts over)"
            )
        own_range = settings.get("sde_window_range") is not None
        drawn = settings["sde_window_range"] if own_range else sampling.get("sde_window_range")
        range_key = f"algorithms.{label}.sde_window_range" if own_range else "sampling.sde_window_range"
        if drawn is not None:
            if window is None:
                raise ConfigError(
                    f"config key '{range_key}': draws the start of an SDE window, and {label!r} has none "
                    "(set sde_window: [start, length]; the length is kept)"
                )
            if shift is not None:
                raise ConfigError(
                    f"config key '{range_key}': {label!r} also slides its window ({key}); a window is "
                    "either drawn each round or sliding"
                )
            lo, hi = drawn
            if not (lo <= window[0] and window[0] + window[1] <= hi <= num_steps - 1):
                raise ConfigError(
                    f"config key '{range_key}': [lo, hi] = {list(drawn)} must hold the window {list(window)} "
                    f"of {label!r} (lo <= start, start + length <= hi) and end before the final of the "
                    f"{num_steps} sampler steps (the step no flow recipe trains)"
                )
        variant = settings.get("flow_variant") or sampling.get("flow_variant")
        flow = any(model_objective(m) == "flow" for m in config["models"].values())
        own_eta = settings.get("eta") is not None
        eta = settings["eta"] if own_eta else sampling.get("eta", RunSpec.eta)
        if flow and variant == "cps" and not eta <= 1:
            key = f"algorithms.{label}.eta" if own_eta else "sampling.eta"
            raise ConfigError(
                f"config key '{key}': {label!r} samples with the cps sampler, whose noise level "
                f"is an angle in [0, 1] (std = sigma_next sin(eta pi / 2)), got {eta}"
            )


def check_group_size(config: dict, label: str, algorithm_group: int | None) -> None:
    """The group size must divide images_per_round; the error names the key the user set: the
    algorithm's own `group_size`, else `train.group_size`, else (an algorithm's built-in group size
    against the user's round) `train.images_per_round`."""
    train = config["train"]
    group = algorithm_group or train["group_size"]
    if train["images_per_round"] % group == 0:
        return
    settings = config["algorithms"][label] or {}
    if "group_size" in settings:
        key, what = f"algorithms.{label}.group_size", f"group_size {group} of algorithm {label!r}"
    elif algorithm_group is None:
        key, what = "train.group_size", f"group_size {group}"
    else:
        key, what = "train.images_per_round", f"the built-in group_size {group} of algorithm {label!r}"
    raise ConfigError(
        f"config key '{key}': {what} does not divide train.images_per_round="
        f"{train['images_per_round']} (a round holds whole prompt groups)"
    )


def model_file(model: dict) -> str:
    """The file that marks a model folder as present: the diffusers pipeline index of a real model
    (family sd or flow), else the harness manifest (what the Snakefile's train rule waits for)."""
    marker = MODEL_INDEX if model.get("family", "embedded") in PIPELINE_FAMILIES.values() else MANIFEST
    return str(Path(model["path"]) / marker)


def check_model(name: str, model: dict, check_paths: bool) -> None:
    """A known family, options the family takes, and (check_paths) a folder of that family."""
    from t2i_rl_bench.registry import MODELS

    family = model.get("family", "embedded")
    if family not in MODELS.names():
        raise ConfigError(
            f"config key 'models.{name}.family': unknown model family {family!r}; known: " + ", ".join(MODELS.names())
        )
    options = sorted(set(model) & set(MODEL_OPTIONS))
    if family == "embedded" and options:
        raise ConfigError(f"config key 'models.{name}.{options[0]}': the embedded family takes no such option")
    if not check_paths:
        return
    folder, marker = Path(model["path"]), Path(model_file(model))
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"config key 'models.{name}.path': {folder} is a file; give a model folder")
    if family == "embedded":  # the pretrain rule builds a missing embedded model, where it writes
        if not marker.is_file() and folder != Path("results/models") / name:
            raise ConfigError(
                f"config key 'models.{name}.path': no embedded model at {folder} (missing {marker.name}); "
                f"the pretrain rule builds one only at results/models/{name}: give that path, or a folder "
                "made by `python -m t2i_rl_bench pretrain`"
            )
        return
    if not marker.is_file():
        raise ConfigError(
            f"config key 'models.{name}.path': no model at {folder} (missing {marker}); give a local model folder"
        )
    if marker.name == MODEL_INDEX:
        pipeline = json.loads(marker.read_text()).get("_class_name")
        if PIPELINE_FAMILIES.get(pipeline) != family:
            raise ConfigError(
                f"config key 'models.{name}.family': {folder} holds a {pipeline!r}, not a family {family!r} pipeline"
            )


def gpu_hours(config: dict) -> float:
    """GPU-hours the grid declares: jobs x gpus x runtime, summed over train, evaluate and probe."""
    n_runs = len(runs(config))
    rules = ["train", "evaluate"] + (["probe"] if config["probe"]["enabled"] else [])
    return sum(n_runs * config["resources"][r]["gpu"] * config["resources"][r]["runtime"] / 60 for r in rules)


def assess_resources(config: dict) -> dict:
    """The resources of the workflow's job that evaluates and then probes a run: the larger of
    the two rules' GPUs, memory and CPUs, and their runtimes added (they run one after the other)."""
    parts = [config["resources"]["evaluate"]] + ([config["resources"]["probe"]] if config["probe"]["enabled"] else [])
    combined = {k: max(part[k] for part in parts) for k in ("gpu", "mem_mb", "cpus_per_task")}
    return {**combined, "runtime": sum(part["runtime"] for part in parts)}


def check_gpu_budget(config: dict) -> None:
    budget = config["resources"]["gpu_hours_budget"]
    needed = gpu_hours(config)
    if budget is not None and needed > budget:
        per_rule = ", ".join(
            f"{r}: {config['resources'][r]['gpu']} GPU x {config['resources'][r]['runtime']} min"
            for r in ("train", "evaluate", "probe")
        )
        raise ConfigError(
            f"config key 'resources.gpu_hours_budget': the grid declares {needed:.1f} GPU-hours "
            f"({len(runs(config))} runs; {per_rule}) but the budget is {budget:g}"
        )


def load(path: str | Path, check_paths: bool = True) -> dict:
    config = read_yaml(path)
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a study config is a mapping of keys (study, seeds, models, ...)")
    return validate(resolve_extends(config, (str(path),)), check_paths)


def check_files(paths) -> None:
    """Read each config file as `read_yaml` does, before the workflow uses what Snakemake read:
    a key given twice is refused naming the file, the key and the line."""
    for path in paths:
        if str(path).endswith((".yaml", ".yml")) and Path(path).is_file():
            read_yaml(path)


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
    t2i_rl_bench.recursive.RecursiveSettings (the shared settings with the variant's overrides), in the
    config's order (the first is the one the verdicts read). No `variants`: one variant of the
    shared settings, named <mode>-real<fraction>."""
    section = {k: v for k, v in config.get("recursive", {}).items() if k not in ("enabled", "variants")}
    variants = config.get("recursive", {}).get("variants") or [
        {"name": f"{section.get('mode', 'replace')}-real{section.get('real_fraction', 0.0):g}"}
    ]
    out: dict[str, dict] = {}
    for v in variants:
        if v["name"] in out:
            raise ConfigError(f"config key 'recursive.variants': the name {v['name']!r} is used twice")
        out[v["name"]] = {**section, **v}
    return out


def base_run_key(config: dict, model: str, reward: str | None = None, algorithm: str | None = None) -> RunKey:
    """A run standing for every run that shares the base model's evaluation (a model) or probe (a
    model x reward x algorithm); the commands compare the settings they depend on before reusing it."""
    return RunKey(
        model,
        reward or reward_label(config["rewards"][0]),
        algorithm or next(iter(config["algorithms"])),
        config["seeds"][0],
    )


def train_command(config: dict, python: str) -> str:
    """How a train job starts: with resources.train.gpu > 1 one torchrun launch, a process per GPU
    (bench/distributed.py); otherwise one process."""
    gpus = config["resources"]["train"].get("gpu", 0)
    if gpus > 1:
        return f"{Path(python).with_name('torchrun')} --standalone --nproc-per-node {gpus} -m t2i_rl_bench"
    return f"{python} -m t2i_rl_bench"


def run_spec(config: dict, key: RunKey) -> RunSpec:
    """The RunSpec of one run of the grid (from the validated config)."""
    from t2i_rl_bench.registry import ALGORITHMS

    reward = next(r for r in config["rewards"] if reward_label(r) == key.reward)
    settings = dict(config["algorithms"][key.algorithm] or {})
    algorithm = settings.pop("plugin", key.algorithm)
    own_variant = settings.pop("flow_variant", None)
    own_window = settings.pop("sde_window", None)
    own_shift = settings.pop("sde_window_shift", None)
    own_range = settings.pop("sde_window_range", None)
    # a learning rate of the method's own (a calibration grid, or the rate a calibration chose by
    # one protocol for every method) over the study's train.lr
    own_lr = settings.pop("lr", None)
    # its own micro-batch (memory only) over the study's train.micro_batch
    own_micro_batch = settings.pop("micro_batch", None)
    # the noise level of its own SDE (DanceGRPO's constant diffusion is 0.3 in its FLUX recipe, Flow-GRPO's
    # a is 0.7) over the study's sampling.eta: docs/study.md#dancegrpos-noise-level
    own_eta = settings.pop("eta", None)
    model = config["models"][key.model]
    sampling = dict(config["sampling"])
    if own_eta is not None:
        sampling["eta"] = float(own_eta)
    if own_window is not None:  # an algorithm's own SDE window (e.g. Flow-GRPO-Fast) over the study's
        sampling["sde_window"] = own_window
    if own_shift is not None:  # its own sliding of the window (MixGRPO) over the study's
        sampling["sde_window_shift"] = own_shift
    if own_range is not None:  # its own drawn window (Flow-GRPO-Fast) over the study's
        sampling["sde_window_range"] = own_range
    study_variant = sampling.pop("flow_variant", None)
    # flow models: the algorithm's own flow_variant, else the study's, else the SDE its paper
    # samples with (Algorithm.flow_variant); DDIM models carry none
    variant = None
    if model_objective(model) == "flow":
        variant = own_variant or study_variant or ALGORITHMS.get(algorithm).flow_variant
    # wandb only when asked: a study without it keeps the run configs it had (RunSpec.to_dict)
    tracking = dict(config.get("tracking") or {})
    train = dict(config["train"])
    if own_lr is not None:
        train["lr"] = float(own_lr)
    if own_micro_batch is not None:
        train["micro_batch"] = int(own_micro_batch)
    return RunSpec(
        tracking=tracking if tracking.get("wandb") else {},
        model_path=model["path"],
        model_options={k: model[k] for k in MODEL_OPTIONS if k in model},
        algorithm=algorithm,
        algorithm_settings=settings,
        reward=reward,
        seed=key.seed,
        reward_settings=config["reward_settings"],
        flow_variant=variant,
        **sampling,
        **train,
    )


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
