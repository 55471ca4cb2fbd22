"""The diffusers classes of the embedded family, imported from their own modules
(docs/performance.md#start-up-the-embedded-policys-imports), for pretraining and for the
diffusers path of loading (T2I_RL_BENCH_LEAN_MODELS=0); and `defer_dynamo`, which keeps AdamW
from importing torch._dynamo in a job that loads the lean classes instead
(docs/performance.md#start-up-the-lean-embedded-model).

`from diffusers import PixArtTransformer2DModel` runs diffusers.models.transformers' __init__,
which imports every transformer diffusers ships (and through them peft and more of transformers):
about 1.5 s of CPU in every job that loads a policy. `denoiser_class` imports only the module
that defines the class, with that package present but not yet run; the package is taken away
again afterwards, so a later import of it (another model family) runs its __init__ as usual, which
then finds the module already loaded (the same class object)."""

from __future__ import annotations

import importlib
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
