"""t2i-rl-bench: the harness core (world, models, rollout engine, training loop, metrics, tables)."""

import os

# quiet the libraries' per-load progress bars in job logs; the user's own setting wins
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
