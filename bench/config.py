"""The old import path of the study module (bench/study.py), kept for code that still imports it."""

from bench.study import *  # noqa: F401,F403
from bench.study import ConfigError, RunKey, config_hash, load, run_spec, runs, validate  # noqa: F401
