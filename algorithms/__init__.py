"""The methods, one file each: a settings dataclass with the official defaults and a loss.
Registered as entry points in the group `t2i_rl_bench.algorithms` (see pyproject.toml)."""
