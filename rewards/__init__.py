"""Reward families, one file each; registered as entry points in the group `t2i_rl_bench.rewards`."""
