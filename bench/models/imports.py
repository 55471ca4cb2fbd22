"""The diffusers classes of the embedded family, imported from their own modules
(docs/performance.md#start-up-the-embedded-policys-imports), for pretraining and for the
diffusers path of loading (T2I_RL_BENCH_LEAN_MODELS=0); and `defer_dynamo`, which keeps AdamW
from importing torch._dynamo in a job that loads the lean classes instead
(docs/performance.md#start-up-the-lean-embedded-model); and `fid_kid_classes`, torchmetrics' FID
and KID without the rest of torchmetrics (docs/performance.md#start-up-fid-and-kid).

`from diffusers import PixArtTransformer2DModel` runs diffusers.models.transformers' __init__,
which imports every transformer diffusers ships (and through them peft and more of transformers):
about 1.5 s of CPU in every job that loads a policy. `denoiser_class` imports only the module
that defines the class, with that package present but not yet run; the package is taken away
again afterwards, so a later import of it (another model family) runs its __init__ as usual, which
then finds the module already loaded (the same class object)."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from typing import Any

PACKAGE = "diffusers.models.transformers"


def denoiser_class(module: str = "pixart_transformer_2d", name: str = "PixArtTransformer2DModel") -> Any:
    """The class `name` of `diffusers.models.transformers.<module>`, without the package's __init__."""
    full = f"{PACKAGE}.{module}"
    if PACKAGE in sys.modules or full in sys.modules:
        return getattr(importlib.import_module(full), name)
    importlib.import_module("diffusers.models")  # the parent (a lazy module: cheap)
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.loader is None:
        raise ImportError(f"{PACKAGE} not found: is diffusers installed?")
    sys.modules[PACKAGE] = importlib.util.module_from_spec(spec)  # present, its __init__ not run
    try:
        return getattr(importlib.import_module(full), name)
    finally:
        del sys.modules[PACKAGE]


def scheduler_class(objective: str) -> Any:
    """FlowMatchEulerDiscreteScheduler (objective 'flow') or DDIMScheduler, from their modules."""
    if objective == "flow":
        from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler

    return DDIMScheduler


OPTIMIZER_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def defer_dynamo() -> None:
    """Keep AdamW from importing torch._dynamo (~1 s of CPU, sympy with it) in a process that
    never compiles (docs/performance.md#start-up-the-lean-embedded-model).

    torch wraps `Optimizer.add_param_group`, `zero_grad`, `state_dict` and `load_state_dict` so
    that their first call imports torch._dynamo to wrap them in `torch._dynamo.disable`, and
    `Adam.step` (AdamW's) so that every call imports it for `torch._dynamo.graph_break()`. Outside
    a compiled region both only set and restore a frame hook, or do nothing: the optimiser's
    arithmetic is the same either way. Here the methods run plain until torch._dynamo is imported
    by anything else; from then on torch's own wrappers run, as before. Nothing is changed if
    torch._dynamo is already loaded, an AdamW already exists, or the methods are not the lazy
    wrappers this was written against (another torch version)."""
    if "torch._dynamo" in sys.modules:
        return
    import torch

    for name in OPTIMIZER_METHODS:
        wrapper = getattr(torch.optim.Optimizer, name, None)
        code = getattr(wrapper, "__code__", None)
        if code is None or set(code.co_freevars) != {"fn", "recursive"} or wrapper.__closure__ is None:
            continue
        cells = dict(zip(code.co_freevars, (c.cell_contents for c in wrapper.__closure__), strict=True))
        fn, recursive = cells["fn"], cells["recursive"]
        if getattr(fn, "__dynamo_disable", None) is None:
            setattr(fn, "__dynamo_disable", _plain_until_dynamo(fn, recursive))
    step = torch.optim.Adam.__dict__.get("step")
    if (
        "step" not in torch.optim.AdamW.__dict__  # no AdamW made yet (the first one hooks its step)
        and getattr(step, "__name__", None) == "step"
        and getattr(getattr(step, "__code__", None), "co_name", None) == "_use_grad"
        and callable(getattr(step, "__wrapped__", None))
    ):
        torch.optim.Adam.step = _step_until_dynamo(step)


def _plain_until_dynamo(fn: Any, recursive: bool) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        if "torch._dynamo" in sys.modules:  # loaded since: torch's own wrapper from now on
            import torch._dynamo

            disabled = torch._dynamo.disable(fn, recursive, wrapping=False)
            setattr(fn, "__dynamo_disable", disabled)
            return disabled(*args, **kwargs)
        return fn(*args, **kwargs)

    return call


def _step_until_dynamo(original: Any) -> Any:
    """torch's `_use_grad_for_differentiable(step)` without its graph breaks while torch._dynamo
    is not loaded: grad mode set to the optimiser's `differentiable` around the step, restored after."""
    import functools

    import torch

    step = original.__wrapped__

    @functools.wraps(step)
    def plain_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        if "torch._dynamo" in sys.modules:
            return original(self, *args, **kwargs)
        previous = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(self.defaults["differentiable"])
            return step(self, *args, **kwargs)
        finally:
            torch.set_grad_enabled(previous)

    return plain_step


# ------------------------------------------------------------------------------------------------
# torchmetrics' FID and KID without the package's __init__ (docs/performance.md#start-up-fid-and-kid)

METRICS_PACKAGE = "torchmetrics"
METRICS_SUBPACKAGE = "torchmetrics.image"


def fid_kid_classes() -> tuple[Any, Any]:
    """torchmetrics' `FrechetInceptionDistance` and `KernelInceptionDistance`, from their modules.

    `import torchmetrics.image.fid` runs torchmetrics' __init__, which imports every metric it
    ships and through them transformers (BERTScore), torchvision and `torch._dynamo`: ~2.5 s of
    CPU to compute two metrics. Here `torchmetrics` and `torchmetrics.image` are present in
    sys.modules with their __init__ not run (the first with the `_logger` its utilities read), the
    utilities are imported first (the order the package's own __init__ reaches them in), then the
    two metric modules; the two stand-ins are taken away again, so a later `import torchmetrics`
    runs the package's __init__ as usual and finds the same classes. The classes and their
    arithmetic are torchmetrics' own. If anything in this fails (another torchmetrics version),
    every torchmetrics module it loaded is forgotten and the classes come from the normal import,
    as they do with T2I_RL_BENCH_LEAN_MODELS=0."""
    fid, kid = sys.modules.get(f"{METRICS_SUBPACKAGE}.fid"), sys.modules.get(f"{METRICS_SUBPACKAGE}.kid")
    if fid is not None and kid is not None:  # loaded already (either way)
        return fid.FrechetInceptionDistance, kid.KernelInceptionDistance
    from t2i_rl_bench.models.embedded import lean_models

    if METRICS_PACKAGE in sys.modules or not lean_models():  # T2I_RL_BENCH_LEAN_MODELS=0: the package's import
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        return FrechetInceptionDistance, KernelInceptionDistance
    loaded = set(sys.modules)
    try:
        return _fid_kid_from_modules()
    except Exception:  # noqa: BLE001 - any failure: the normal import, which raises what is wrong
        for name in [m for m in sys.modules if m not in loaded and m.split(".")[0] == METRICS_PACKAGE]:
            del sys.modules[name]
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        return FrechetInceptionDistance, KernelInceptionDistance
    finally:
        removed = []
        for name in (METRICS_SUBPACKAGE, METRICS_PACKAGE):
            module = sys.modules.get(name)
            if module is not None and getattr(module, "__bench_stand_in__", False):
                del sys.modules[name]
                removed.append(name)
        if removed:
            sys.meta_path.insert(0, _LinkLoadedSubmodules(removed))


class _LinkLoadedSubmodules:
    """A finder that finds nothing itself: when a package whose stand-in was taken away is imported
    for real, its loader runs as usual and the submodules loaded meanwhile become the package's
    attributes, as a normal import would have left them (`torchmetrics.image.fid`)."""

    def __init__(self, names: list[str]):
        self.names = set(names)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in self.names:
            return None
        self.names.discard(fullname)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Linking(spec.loader)
                return spec
        return None


class _Linking:
    """A package's own loader, which afterwards sets the submodules already in sys.modules as the
    package's attributes."""

    def __init__(self, loader: Any):
        self.loader = loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        prefix = module.__name__ + "."
        for name, child in list(sys.modules.items()):
            if name.startswith(prefix) and "." not in name[len(prefix) :] and not hasattr(module, name[len(prefix) :]):
                setattr(module, name[len(prefix) :], child)


def _stand_in(name: str, spec: Any) -> Any:
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} not found as a package")
    module = importlib.util.module_from_spec(spec)  # present, its __init__ not run
    module.__bench_stand_in__ = True
    sys.modules[name] = module
    return module


def _fid_kid_from_modules() -> tuple[Any, Any]:
    import logging

    package = _stand_in(METRICS_PACKAGE, importlib.util.find_spec(METRICS_PACKAGE))
    package._logger = logging.getLogger(METRICS_PACKAGE)  # what torchmetrics.utilities.prints reads
    importlib.import_module(f"{METRICS_PACKAGE}.utilities")
    locations = list(package.__spec__.submodule_search_locations)
    image = importlib.machinery.PathFinder.find_spec(METRICS_SUBPACKAGE, locations)
    _stand_in(METRICS_SUBPACKAGE, image)
    fid = importlib.import_module(f"{METRICS_SUBPACKAGE}.fid")
    kid = importlib.import_module(f"{METRICS_SUBPACKAGE}.kid")
    return fid.FrechetInceptionDistance, kid.KernelInceptionDistance


class LazyModule:
    """A module imported on its first attribute access (docs/performance.md#start-up-the-assess-job):
    `stats = LazyModule("scipy.stats")` at the top of a module keeps `stats.t.ppf(...)` as it reads,
    and a job that never calls it never imports it (scipy.stats, optimize and special: ~0.5 s of CPU)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazily imported {self._name}>"
