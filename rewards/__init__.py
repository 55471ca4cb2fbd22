"""Reward families, one file each; registered as entry points in the group `t2i_rl_bench.rewards`."""

if __name__ != "t2i_rl_bench.rewards":
    # the folder is the subpackage t2i_rl_bench.rewards (pyproject.toml maps it); by its folder's
    # name it would be a second copy of each reward beside the installed one
    raise ImportError(f"rewards/ is t2i_rl_bench.rewards (pyproject.toml maps it), not {__name__}")
