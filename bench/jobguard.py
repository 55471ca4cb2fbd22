"""A workflow job's processes end with the job: no orphan writes into a run folder after the job
that started it has ended (docs/plugins.md#when-a-job-is-killed).

The Snakefile exports `T2I_RL_BENCH_JOB_PID`, the process id of the job's shell. A command run
under it (`bind()`, called by `python -m t2i_rl_bench`) asks the kernel to kill it when its parent
dies (Linux), and a watcher thread, which only sleeps and reads two process ids, kills it within a
second once the job's shell is gone or it was re-parented (its parent died). Before a command
writes a final status it calls `check()`, which ends the process at once in that case. Outside a
workflow job (a command run by hand) nothing changes."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

JOB_PID = "T2I_RL_BENCH_JOB_PID"
_PR_SET_PDEATHSIG = 1
_bound: dict[str, int] = {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process by now: ours is gone
        return False
    return True


def orphaned() -> bool:
    """Whether the job that started this process has ended (never outside a workflow job)."""
    if not _bound:
        return False
    return os.getppid() != _bound["parent"] or not _alive(_bound["job"])


def _end(why: str) -> None:
    print(f"t2i_rl_bench: {why}; this process ends without writing", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def check() -> None:
    """End this process now when its job has ended (called before writing a final status)."""
    if orphaned():
        _end(f"the workflow job (shell pid {_bound['job']}) that started this process has ended")


def _watch(interval: float) -> None:
    stop = threading.Event()
    while not stop.wait(interval):
        check()


def bind(interval: float = 1.0) -> bool:
    """Tie this process to its workflow job (when `T2I_RL_BENCH_JOB_PID` is set); True if bound."""
    job = os.environ.get(JOB_PID, "")
    if not job.isdigit() or _bound:
        return bool(_bound)
    _bound.update(job=int(job), parent=os.getppid())
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # the watcher below still ends it
            pass
    check()  # the parent may have died before prctl
    threading.Thread(target=_watch, args=(interval,), name="t2i-rl-bench-jobguard", daemon=True).start()
    return True
