"""t2i-rl-bench: the harness core (world, models, rollout engine, training loop, metrics, tables).

The folder bench/ is the import package `t2i_rl_bench` (pyproject.toml maps it; algorithms/ and
rewards/ are its subpackages): `import t2i_rl_bench`, `python -m t2i_rl_bench`."""

import os

if __name__ != "t2i_rl_bench":
    # imported by its folder's name from the repository root, it would be a second copy of every
    # module beside the installed t2i_rl_bench (two registries, two Algorithm classes): refuse it
    raise ImportError(
        f"bench/ is the package t2i_rl_bench (pyproject.toml maps it): import t2i_rl_bench, not {__name__}"
    )

# quiet the libraries' per-load progress bars in job logs; the user's own setting wins
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
