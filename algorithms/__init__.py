"""The methods, one file each: a settings dataclass with the official defaults and a loss.
Registered as entry points in the group `bench.algorithms` (see pyproject.toml)."""
