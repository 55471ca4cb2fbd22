"""Provenance of plugin code: the commit stamp covers the repository, not an untracked plugin file
nor an installed plugin package, so every table header and citable.json also names each plugin a
study uses: a file plugin by its SHA-256, a plugin package by its distribution's name and version.
Built-in methods, rewards and model families (this distribution's own) are covered by the commit."""

from __future__ import annotations

import hashlib
import importlib.util
from importlib import metadata
from pathlib import Path

OWN_DISTRIBUTION = "t2i-rl-bench"
OWN_PACKAGES = ("bench", "algorithms", "rewards")


def _file(path: Path) -> str:
    if not path.is_file():
        return f"file {path} (missing)"
    return f"file {path} sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"


def _module(module: str) -> str | None:
    """A module reference: its distribution's name and version, else its file's hash; None for
    this distribution's own modules."""
    top = module.split(".")[0]
    if top in OWN_PACKAGES:
        return None
    dists = metadata.packages_distributions().get(top, [])
    if dists:
        return f"package {dists[0]} {metadata.version(dists[0])}"
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    return _file(Path(spec.origin)) if spec is not None and spec.origin else f"module {module} (not found)"


def _entry_point(group: str, name: str) -> str | None:
    eps = {ep.name: ep for ep in metadata.entry_points(group=group)}
    ep = eps.get(name)
    if ep is None or ep.dist is None:
        return None  # registered in-process (a test), or unknown: validation refuses unknown names
    if ep.dist.name == OWN_DISTRIBUTION:
        return None
    return f"package {ep.dist.name} {ep.dist.version} ({ep.value})"


def describe(ref: str, group: str) -> str | None:
    """How a plugin reference is pinned, or None for a built-in."""
    if ":" in ref:
        target = ref.rpartition(":")[0]
        return _file(Path(target)) if target.endswith(".py") else _module(target)
    return _entry_point(group, ref)


def _reward_names(spec) -> list[str]:
    if isinstance(spec, str):
        return [spec]
    if isinstance(spec, dict) and "name" in spec:
        return [spec["name"]]
    return list(spec)


def plugin_provenance(config: dict) -> dict[str, str]:
    """{config key: pin} of every plugin a validated study config uses; {} when it uses none.
    File plugins are hashed as read from the working directory (where `plugin:` paths resolve)."""
    out: dict[str, str] = {}
    for label, settings in config.get("algorithms", {}).items():
        pin = describe((settings or {}).get("plugin", label), "t2i_rl_bench.algorithms")
        if pin:
            out[f"algorithms.{label}"] = pin
    rewards = [(f"rewards[{i}]", spec) for i, spec in enumerate(config.get("rewards", []))]
    rewards += [("evaluation.rewards", name) for name in config.get("evaluation", {}).get("rewards", [])]
    for key, spec in rewards:
        for name in _reward_names(spec):
            pin = describe(name, "t2i_rl_bench.rewards")
            if pin:  # rewards[0] for a single reward, rewards[0].name in a weighted sum
                single = isinstance(spec, str) and key != "evaluation.rewards"
                out[key if single else f"{key}.{name}"] = pin
    from t2i_rl_bench.registry import MODELS

    builtin = MODELS.shipped()  # the families the harness ships; a plugin family is pinned
    for name, model in config.get("models", {}).items():
        family = model.get("family", "embedded")
        if family not in builtin:
            pin = describe(family, "t2i_rl_bench.models")
            if pin:
                out[f"models.{name}.family"] = pin
    return out


# ---- what a citation of the tables needs beyond the commit ------------------------------------

VERSIONED = (
    "t2i-rl-bench",
    "torch",
    "torchvision",
    "torchmetrics",
    "open_clip_torch",
    "diffusers",
    "transformers",
    "peft",
    "numpy",
    "scipy",
    "pandas",
    "snakemake",
)


def versions(packages: tuple[str, ...] = VERSIONED) -> dict[str, str]:
    """Python's and each package's installed version ('absent' when not installed)."""
    import platform

    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def version_drift(recorded: dict[str, str], installed: dict[str, str] | None = None) -> list[str]:
    """'name recorded -> installed' for every package whose installed version differs from the one
    recorded in a table's provenance (empty when they agree); packages not recorded are ignored."""
    installed = versions(tuple(k for k in recorded if k != "python")) if installed is None else installed
    return [
        f"{name} {want} -> {installed.get(name, 'absent')}"
        for name, want in sorted(recorded.items())
        if name in installed and installed[name] != want
    ]


def recorded_versions(table: Path) -> dict[str, str]:
    """{package: version} from a table's provenance header (its 'packages:' line); {} when the
    file or the line is missing."""
    try:
        lines = Path(table).read_text().splitlines()[:20]
    except OSError:
        return {}
    for line in lines:
        text = line.lstrip("#%<!- ").removesuffix("-->").strip()
        if text.startswith("packages:"):
            pairs = (item.strip().rpartition(" ") for item in text[len("packages:") :].split(","))
            return {name: version.removesuffix(" -->").strip() for name, _, version in pairs if name}
    return {}


def warn_version_drift(table: Path, what: str) -> list[str]:
    """Print (stderr) and return the packages whose installed version differs from the one a
    table's header records: numbers made with other versions are being extended or re-rendered."""
    import sys

    drift = version_drift(recorded_versions(table))
    if drift:
        print(
            f"{what}: installed versions differ from those {table} was made with: {'; '.join(drift)} "
            "(install with `pip install -c constraints.txt`, or rerun the study to remake the tables)",
            file=sys.stderr,
        )
    return drift


def folder_hashes(folder: str | Path) -> dict[str, str] | str:
    """The SHA-256 of every file of a model or judge folder as recorded beside it (the harness's
    manifest, or a pipeline's sha256.json; the study verifies them before it runs), else a
    sentence saying why there are none."""
    from t2i_rl_bench.models.checkpoint import HASHES, MANIFEST

    folder = Path(folder)
    manifest = folder / MANIFEST
    if manifest.is_file():
        import json

        recorded = json.loads(manifest.read_text()).get("sha256")
        if recorded:
            return dict(recorded)
    if (folder / HASHES).is_file():
        import json

        return dict(json.loads((folder / HASHES).read_text()))
    return f"no recorded hashes in {folder}" if folder.exists() else f"{folder} (missing)"


def weight_hashes(config: dict) -> dict[str, dict[str, str] | str]:
    """{config key: {file: sha256}} of every model and of the evaluation's feature network."""
    out: dict[str, dict[str, str] | str] = {}
    for name, model in config.get("models", {}).items():
        if isinstance(model, dict) and model.get("path"):
            out[f"models.{name}"] = folder_hashes(model["path"])
    judge = config.get("evaluation", {}).get("clip_model")
    if judge:
        out["evaluation.clip_model"] = folder_hashes(judge)
    return out


def resolved_algorithms(config: dict) -> dict[str, dict]:
    """Per method label: the class, its paper, and every field of its recipe and loss settings as
    the study resolved them (defaults filled in, the config's overrides applied), plus the loop's
    own keys the config set (lr, micro_batch, flow_variant, ...)."""
    from t2i_rl_bench.registry import ALGORITHMS
    from t2i_rl_bench.study import check_algorithm

    out = {}
    for label, settings in config.get("algorithms", {}).items():
        settings = dict(settings or {})
        algorithm = check_algorithm(label, settings)
        cls = ALGORITHMS.get(settings.get("plugin", label))
        loop_keys = {k: v for k, v in settings.items() if k not in algorithm.describe() and k != "plugin"}
        out[label] = {
            "class": f"{cls.__module__}:{cls.__qualname__}",
            "paper": getattr(getattr(cls, "paper", None), "key", None),  # its key in references.bib
            "settings": algorithm.describe(),
            "loop": loop_keys,
        }
    return out
