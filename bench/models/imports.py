"""The diffusers classes of the embedded family, imported from their own modules
(docs/performance.md#start-up-the-embedded-policys-imports).

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
