"""Training: the loop (loop.py), the step batch shared with the probe (steps.py), the round's
statistics (stats.py), checkpoints and resuming (state.py)."""

from t2i_rl_bench.train.loop import DivergedError, Trainer, train
from t2i_rl_bench.train.steps import trained_steps

__all__ = ["DivergedError", "Trainer", "train", "trained_steps"]
