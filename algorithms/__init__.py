"""The methods, one file each: a settings dataclass with the official defaults and a loss.
Registered as entry points in the group `t2i_rl_bench.algorithms` (see pyproject.toml)."""

if __name__ != "t2i_rl_bench.algorithms":
    # the folder is the subpackage t2i_rl_bench.algorithms (pyproject.toml maps it); by its folder's
    # name it would be a second copy of each method beside the installed one
    raise ImportError(f"algorithms/ is t2i_rl_bench.algorithms (pyproject.toml maps it), not {__name__}")
