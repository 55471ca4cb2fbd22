"""Reward families, one file each; registered as entry points in the group `bench.rewards`."""
