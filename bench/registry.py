"""Registries of algorithms, rewards and metrics.

A name resolves, in order, to: an entry registered in this process; `path/to/file.py:Name`;
`package.module:Name`; an installed entry point in the group `bench.<kind>s` (this package
registers its own methods that way too, see pyproject.toml). An unknown name fails with the list
of known names; a broken plugin fails naming the plugin.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any


class PluginError(Exception):
    """A plugin that cannot be loaded or does not honour its interface."""


class Registry:
    def __init__(
        self,
        kind: str,
        check: Callable[[str, Any], None] | None = None,
        builtins: str | None = None,
        references: dict[str, str] | None = None,
    ):
        self.kind = kind
        self._builtins = builtins  # a module that registers built-in entries when imported
        self._references = dict(references or {})  # built-in entries as `package.module:Name`, imported when asked for
        self.group = f"t2i_rl_bench.{kind}s"
        self._local: dict[str, Any] = {}
        self._check = check

    def register(self, name: str):
        def deco(obj):
            self._local[name] = obj
            return obj

        return deco

    def _load_builtins(self) -> None:
        if self._builtins is not None:
            module, self._builtins = self._builtins, None
            importlib.import_module(module)

    def _entry_points(self) -> dict:
        self._load_builtins()
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def shipped(self) -> set[str]:
        """The names the harness itself ships (its references), not those plugins add."""
        return set(self._references)

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(set(self._local) | set(self._references) | set(self._entry_points()))

    def problems(self) -> dict[str, str]:
        """{name: why} for every installed plugin (entry point) that cannot be loaded or does not
        honour its interface: what `list` marks (the shipped entries load on demand)."""
        found = {}
        for name in self._entry_points():
            if name in self._local:
                continue
            try:
                self.get(name)
            except (PluginError, KeyError) as exc:
                found[name] = " ".join(str(exc).split())
        return found

    def get(self, name: str) -> Any:
        if not isinstance(name, str) or not name:
            raise KeyError(f"{self.kind} name must be a non-empty string, got {name!r}")
        self._load_builtins()
        if name in self._local:
            return self._local[name]
        if name in self._references:
            obj = _load_reference(self._references[name], self.kind)
        elif ":" in name:
            obj = _load_reference(name, self.kind)
        else:
            eps = self._entry_points()
            if name not in eps:
                raise KeyError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}")
            try:
                obj = eps[name].load()
            except Exception as exc:  # noqa: BLE001 - any import failure of a plugin is reported the same way
                raise PluginError(f"{self.kind} plugin {name!r} ({eps[name].value}) failed to import: {exc!r}") from exc
        if self._check is not None:
            self._check(name, obj)
        return obj


def _load_reference(ref: str, kind: str) -> Any:
    """`path/to/file.py:Name` or `package.module:Name`."""
    target, _, attr = ref.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise FileNotFoundError(f"no such file {path}")
            mod_name = f"bench_plugin_{path.stem}_{abs(hash(str(path.resolve())))}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {path} as a module")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except Exception as exc:  # noqa: BLE001
        raise PluginError(f"{kind} plugin {ref!r} failed to import: {exc!r}") from exc
    if not hasattr(module, attr):
        raise PluginError(f"{kind} plugin {ref!r}: {target} defines no {attr!r}")
    return getattr(module, attr)


def _check_algorithm(name: str, obj: Any) -> None:
    from t2i_rl_bench.algorithm import Algorithm, DifferentiableRewardAlgorithm, ForwardAlgorithm

    if not (isinstance(obj, type) and issubclass(obj, Algorithm)):
        raise PluginError(f"algorithm plugin {name!r} is {obj!r}, not a subclass of t2i_rl_bench.algorithm.Algorithm")
    bases = (Algorithm.loss, ForwardAlgorithm.loss, DifferentiableRewardAlgorithm.loss)
    if getattr(obj.loss, "__isabstractmethod__", False) or obj.loss in bases:
        raise PluginError(f"algorithm plugin {name!r} does not define loss(batch)")


def _check_callable(kind: str):
    def check(name: str, obj: Any) -> None:
        if not callable(obj):
            raise PluginError(f"{kind} plugin {name!r} is {obj!r}, which is not callable")

    return check


ALGORITHMS = Registry("algorithm", _check_algorithm)
REWARDS = Registry("reward", _check_callable("reward"))
METRICS = Registry("metric", _check_callable("metric"), builtins="t2i_rl_bench.metrics")
# the model families, registered here only (a plugin family adds an entry point `t2i_rl_bench.models`)
MODELS = Registry(
    "model",
    _check_callable("model"),
    references={
        "embedded": "t2i_rl_bench.models.policy:Policy",
        "sd": "t2i_rl_bench.models.stable_diffusion:StableDiffusionPolicy",
        "flow": "t2i_rl_bench.models.flow_matching:FlowMatchingPolicy",
    },
)
