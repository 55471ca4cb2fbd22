"""A failed run is a result. Whatever stops a job (a reward error, a non-finite loss, out of
memory, a kill beyond the last retry) is written into the job's own output file with its reason
(`status: failed`, `reason`), the job exits 0, and aggregate and report run on: the tables list
the run in `failed_runs.csv` and the report shows it with its reason.

- `recorded_failure(args)`: around a `python -m t2i_rl_bench <command>`; an expected failure becomes the
  command's output file with status 'failed' (bench/cli.py).
- `python -m t2i_rl_bench.failures killed --out FILE --stage S --exit-code RC --attempt A --retries R`:
  the Snakefile's fallback after a job's process died by a signal (SIGKILL, the OOM killer): on
  the last attempt it writes the output with status 'killed' (not a result of the method: it
  enters no mean) and exits 0, so the study's tables and report still come out; on an earlier
  attempt it exits RC so Snakemake retries (and training resumes from its last state). Any other
  exit code (an exception the command did not expect: a bug) stays a failed job. Each kill is also
  appended to `killed.jsonl` beside the output; `kills(path)` counts them, and the Snakefile passes
  that count as a job parameter, so the next `snakemake` (`make study`) runs a killed job again:
  training resumes from its last state (docs/plugins.md#when-a-job-is-killed).
- `failed_runs(cfg, runs_root)`: the table of runs that did not finish, with stage and reason.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import os
import sys
import traceback
from pathlib import Path

from t2i_rl_bench.io import atomic_write_json, atomic_write_text

FINISHED = "finished"
FAILED = "failed"
KILLED = "killed"  # the job's process was killed: not the method's failure; the next run resumes it
KILL_LOG = "killed.jsonl"
# the output file of each guarded command: (stage, file under --run-dir, or None: the --out file)
GUARDED = {
    "train": ("train", "summary.json"),
    "evaluate": ("evaluate", "eval.json"),
    "evaluate-base": ("evaluate", None),
    "probe": ("probe", "probe.json"),
    "recursive": ("recursive", "recursive.json"),
}
RUN_FILES = {"train": "summary.json", "evaluate": "eval.json", "probe": "probe.json", "recursive": "recursive.json"}
COLUMNS = ["model", "reward", "algorithm", "seed", "stage", "status", "images_seen", "reason"]
# every table file aggregate may write; the ones a study does not produce this time are removed
TABLE_SUFFIXES = (".csv", ".md", ".tex")


def expected_failures() -> tuple[type[BaseException], ...]:
    """The exceptions that end a run as a result rather than as a bug of the harness."""
    import torch

    from t2i_rl_bench.registry import PluginError
    from t2i_rl_bench.reward import RewardError
    from t2i_rl_bench.train import DivergedError

    oom = tuple({getattr(torch, "OutOfMemoryError", MemoryError), getattr(torch.cuda, "OutOfMemoryError", MemoryError)})
    return (RewardError, DivergedError, PluginError, MemoryError, *oom)


def _images_seen(run_dir: Path) -> int:
    """Training images of the rounds the run logged before it stopped."""
    log = run_dir / "log.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    return int(json.loads(lines[-1]).get("images_seen", 0)) if lines else 0


REASON_LIMIT = 600  # characters of a reason kept in a record, failed_runs.csv and the report


def short_reason(reason: str, limit: int = REASON_LIMIT) -> str:
    """`reason` cut to `limit` characters (a plugin's error may hold a whole tensor's repr)."""
    reason = " ".join(str(reason).split())
    return reason if len(reason) <= limit else f"{reason[:limit]}... ({len(reason) - limit} more characters cut)"


def subject(spec, label: str, what: str = "") -> str:
    """Who failed, for a reason: the algorithm's config label and, where it differs, its plugin
    path or name; the reward's spec; and the stage (`what`)."""
    algorithm = f"algorithm {label!r}" + (f" (plugin {spec.algorithm})" if spec.algorithm != label else "")
    reward = spec.reward if isinstance(spec.reward, str) else "+".join(spec.reward)
    return f"{what + ' of ' if what else ''}{algorithm} on reward {reward!r}"


def failure_record(stage: str, reason: str, run_dir: Path | None) -> dict:
    reason = short_reason(reason)
    record = {"status": FAILED, "stage": stage, "reason": reason, "rows": []}
    if run_dir is None:  # a shared base row (evaluate-base, probe-base): no run reuses it
        record["key"] = None
    if stage == "train" and run_dir is not None:
        record.update(images_seen=_images_seen(run_dir), device_seconds=None, error=reason)
    return record


def _output_of(args) -> tuple[str, Path, Path | None] | None:
    guarded = GUARDED.get(getattr(args, "command", None))
    if guarded is None:
        return None
    stage, name = guarded
    if name is None:
        return stage, Path(args.out), None
    run_dir = Path(args.out if stage == "train" else args.run_dir)
    return stage, run_dir / name, run_dir


def write_failure(stage: str, path: Path, run_dir: Path | None, reason: str) -> None:
    if os.environ.get("RANK", "0") != "0":  # under torchrun process 0 writes the run's files
        return
    atomic_write_json(path, failure_record(stage, reason, run_dir))


@contextlib.contextmanager
def recorded(stage: str, path: Path, run_dir: Path | None, who: str = ""):
    """Run one stage; an expected failure is written as the stage's output with the reason,
    which starts with `who` failed (`subject`: the label and plugin path) when given."""
    try:
        yield
    except expected_failures() as exc:
        reason = f"{who + ': ' if who else ''}{type(exc).__name__}: {exc}"
        traceback.print_exc()
        write_failure(stage, path, run_dir, reason)
        print(f"{stage} failed, recorded in {path}: {reason}", file=sys.stderr)


@contextlib.contextmanager
def recorded_failure(args):
    """Run a bench command; an expected failure is written as its output with the reason. The
    commands that write several outputs (assess, probe-base) record each one themselves."""
    target = _output_of(args)
    if target is None:
        yield
        return
    with recorded(*target, who=_who(args, *target)):
        yield


def _who(args, stage: str, path: Path, run_dir: Path | None) -> str:
    """`subject` of a command's run, from its run config (the label: the run folder's name)."""
    from t2i_rl_bench.spec import RunSpec

    what = {"train": "training", "evaluate": "evaluation", "probe": "probe"}.get(stage, stage)
    try:
        text = getattr(args, "run_config", None)
        spec = RunSpec.from_json(text) if isinstance(text, str) else RunSpec.read(run_dir or path.parent)
    except (OSError, ValueError, TypeError):
        return ""
    if run_dir is None:  # a base-model result shared by every algorithm of the model
        return f"{what} of the base model {Path(spec.model_path).name!r}"
    return subject(spec, run_dir.parent.name, what)


def killed_reason(exit_code: int, attempts: int, stage: str = "train") -> str:
    """Why a killed job's output holds no result, and what the next run does about it."""
    signal = f" (signal {exit_code - 128})" if exit_code > 128 else ""
    again = (
        "resumes the training from its last saved state"
        if stage == "train"
        else f"runs the {stage} job again from the start"
    )
    return (
        f"killed: the process exited with code {exit_code}{signal} on attempt {attempts}, the last one "
        f"(not a result of the method); the next `snakemake --cores all --rerun-incomplete` (`make study`) {again}"
    )


def _log_kill(out: Path, stage: str, exit_code: int, attempt: int) -> None:
    import time

    with open(out.parent / KILL_LOG, "a") as log:
        log.write(
            json.dumps(
                {
                    "file": out.name,
                    "stage": stage,
                    "exit_code": exit_code,
                    "attempt": attempt,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                }
            )
            + "\n"
        )


def kills(*paths: str | Path) -> int:
    """How many times the jobs writing `paths` were killed on their last attempt (their folders'
    killed.jsonl). The Snakefile makes it a job parameter: a new kill changes it, so Snakemake
    runs the job again on its next invocation, and not again once it has run (the count it
    recorded is the count)."""
    n = 0
    for path in map(Path, paths):
        log = path.parent / KILL_LOG
        if not log.is_file():
            continue
        for line in log.read_text().splitlines():
            try:
                n += json.loads(line).get("file") == path.name
            except ValueError:
                continue
    return n


# ---- the tables' side -------------------------------------------------------------------------
def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def failed_runs(cfg: dict, runs_root: str | Path) -> pd.DataFrame:  # noqa: F821
    """One row per run and stage that did not finish (status diverged, failed, or a missing
    file), with the reason; empty (with the columns) when every run finished."""
    import pandas as pd

    from t2i_rl_bench import study

    rows = []
    for key in study.runs(cfg):
        run = Path(runs_root) / key.path
        for stage, name in RUN_FILES.items():
            if stage == "probe" and not cfg.get("probe", {}).get("enabled"):
                continue
            if stage == "recursive" and not cfg.get("recursive", {}).get("enabled"):
                continue
            record = _read(run / name)
            if record is None:
                status, reason = "missing", f"no readable {name}"
            elif stage != "train" and record.get("stage") != stage:
                continue  # a later stage of a failed run carries the run's status, not its own failure
            else:
                status = record.get("status", FINISHED)
                reason = record.get("reason") or record.get("error")
            if status == FINISHED:
                continue
            rows.append(
                {
                    "model": key.model,
                    "reward": key.reward,
                    "algorithm": key.algorithm,
                    "seed": key.seed,
                    "stage": stage,
                    "status": status,
                    "images_seen": (record or {}).get("images_seen") if stage == "train" else None,
                    "reason": short_reason(reason or ""),
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def write_failed_runs(cfg: dict, runs_root: str | Path, out: str | Path, header: str = "") -> pd.DataFrame:  # noqa: F821
    """failed_runs.csv and .md in the tables folder (written even when empty: the study owns it)."""
    table = failed_runs(cfg, runs_root)
    out = Path(out)
    atomic_write_text(out / "failed_runs.csv", header + table.to_csv(index=False))
    md = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    md += "".join(
        "| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |\n" for row in table.itertuples(index=False)
    )
    comment = "".join(f"<!-- {line[2:]} -->\n" for line in header.splitlines())
    atomic_write_text(out / "failed_runs.md", comment + "\n" + md)
    return table


# ---- runs that are no result: in the tables but in no mean, level or compute-matched reading -----
# a diverged run is a result up to its last good checkpoint (the analysis counts it as never
# reaching a target and keeps it out of the seconds level); a failed or killed one is none
RESULTS = (FINISHED, "diverged")
METHOD_FAILURES = ("diverged", FAILED)  # what the tables' `diverged` column counts (not a kill)


def mask_unfinished(rows: pd.DataFrame) -> pd.DataFrame:  # noqa: F821
    """`rows` (seed level, with `status` and `value`) with the value of every run that is no
    result (failed, killed) set to NaN: the rows stay, so each table counts the run (`diverged`,
    n_seeds), and every mean and interval (which skip NaN) leaves it out."""
    if rows.empty or "status" not in rows:
        return rows
    return rows.assign(value=rows["value"].where(rows["status"].isin(RESULTS)))


def results_only(rows: pd.DataFrame) -> pd.DataFrame:  # noqa: F821
    """The rows of runs that are results (finished or diverged): what levels and readings use."""
    return rows if rows.empty or "status" not in rows else rows[rows["status"].isin(RESULTS)]


def failed_seeds(rows: pd.DataFrame) -> dict[tuple, int]:  # noqa: F821
    """Per (model, reward, algorithm): its seeds that failed as a method (diverged, or stopped by
    its own error; a kill is not one), what the tables' `diverged` column counts on every row of
    the method, at every budget (also the ones the failed seed never reached)."""
    if rows.empty or "status" not in rows:
        return {}
    runs = rows.drop_duplicates(["model", "reward", "algorithm", "seed"])
    failed = runs[runs["status"].isin(METHOD_FAILURES)]
    return {tuple(k): int(n) for k, n in failed.groupby(["model", "reward", "algorithm"]).size().items()}


def with_unfinished(derived: pd.DataFrame, seed_rows: pd.DataFrame) -> pd.DataFrame:  # noqa: F821
    """Derived rows (per run, from results only) plus a NaN row per derived measure for every run
    that is no result, at the measure's final budget, so the derived tables count it as well."""
    import pandas as pd

    run = ["model", "reward", "algorithm", "seed"]
    if seed_rows.empty:
        return derived
    lost = seed_rows[~seed_rows["status"].isin(RESULTS)]
    if lost.empty:
        return derived
    columns = [*run, "budget", "metric", "value", "status"]
    per_run = derived[derived["algorithm"] != "(all)"] if len(derived) else pd.DataFrame(columns=columns)
    finals = per_run.groupby(["model", "reward", "metric"])["budget"].max().reset_index()
    extra = []
    for key, rows in lost.groupby(run):
        measures = finals[(finals["model"] == key[0]) & (finals["reward"] == key[1])]
        if measures.empty:  # no run of this reward is a result: its gain, at the run's last budget
            measures = pd.DataFrame([{"metric": f"change/reward/{key[1]}", "budget": int(rows["budget"].max())}])
        for m in measures.itertuples():
            extra.append(
                {
                    **dict(zip(run, key)),
                    "budget": m.budget,
                    "metric": m.metric,
                    "value": float("nan"),
                    "status": rows["status"].iloc[0],
                }
            )
    extra_rows = pd.DataFrame(extra, columns=columns)
    return pd.concat([derived, extra_rows], ignore_index=True) if len(derived) else extra_rows


def unfinished_note(rows: pd.DataFrame) -> str:  # noqa: F821
    """The headline's marker of a method's seeds that are not in its means: 'seed 1 killed; seed 2
    failed' ('' when every seed finished)."""
    if rows.empty or "status" not in rows:
        return ""
    status = rows.drop_duplicates("seed").set_index("seed")["status"]
    return "; ".join(f"seed {seed} {s}" for seed, s in sorted(status.items()) if s != FINISHED and int(seed) >= 0)


def with_run_status(rows: pd.DataFrame, seed_rows: pd.DataFrame) -> pd.DataFrame:  # noqa: F821
    """`rows` (derived, per run) with each run's own status from the evaluation rows, so the
    diverged count of a derived table is that of the eval table."""
    if rows.empty or seed_rows.empty:
        return rows
    run = ["model", "reward", "algorithm", "seed"]
    status = seed_rows.drop_duplicates(run).set_index(run)["status"]
    keys = list(zip(*(rows[c] for c in run)))
    return rows.assign(status=[status.get(k, FINISHED) for k in keys])


KNOWN_TABLES = (
    "eval",
    "eval_per_seed",
    "derived",
    "derived_per_seed",
    "improvement",
    "probe",
    "probe_per_seed",
    "probe_steps",
    "probe_offpolicy",
    "mechanisms",
    "frontier",
    "frontier_curves",
    "frontier_pairs",
    "frontier_per_seed",
    "recursive",
    "recursive_decay",
    "recursive_per_seed",
    "failed_runs",
    "headline",
    "verdicts",
    "across_rewards",
    "performance_profile",
    "levels",
    "hacking",
    "calibration",
    "calibration_per_seed",
)


def prune_tables(out: str | Path, keep: set[str] = frozenset()) -> None:
    """Remove the table files of an earlier aggregate in this study's tables folder, so that a
    table this run does not produce (improvement.csv of a one-method study) cannot stay behind.
    In a folder named `tables` (every study's, bench/layout.py) that is every .csv/.md/.tex file;
    elsewhere only the tables aggregate is known to write."""
    out = Path(out)
    if not out.is_dir():
        return
    for path in out.iterdir():
        ours = out.name == "tables" or path.stem in KNOWN_TABLES
        if path.is_file() and path.suffix in TABLE_SUFFIXES and ours and path.name not in keep:
            path.unlink()


def html_section(tables: str | Path) -> str:
    """The report's section on runs that did not finish ('' when every run finished)."""
    path = Path(tables) / "failed_runs.csv"
    if not path.is_file():
        return ""
    import pandas as pd

    table = pd.read_csv(path, comment="#")
    if table.empty:
        return ""
    items = "".join(
        f"<li>{html.escape(f'{r.model} / {r.reward} / {r.algorithm} / seed {r.seed}')}: "
        f"<b>{html.escape(str(r.status))}</b> in {html.escape(str(r.stage))}: "
        f"{html.escape(str(r.reason))}</li>"
        for r in table.itertuples()
    )
    return (
        f"<h2>Failed runs</h2><p>{len(table)} run stage(s) did not finish. A failed or killed run enters no "
        "mean, level or compute-matched reading (its seeds are marked in the headline); a diverged one counts up "
        "to its last good checkpoint. A killed job runs again, resuming its training, with the next "
        f"<code>snakemake --cores all --rerun-incomplete</code>.</p><ul>{items}</ul>"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m t2i_rl_bench.failures")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("killed", help="record a job whose process died, on its last attempt")
    p.add_argument("--out", required=True, action="append", help="the job's output file (once per output)")
    p.add_argument(
        "--stage", required=True, action="append", choices=sorted(RUN_FILES), help="the stage of each --out, in order"
    )
    p.add_argument("--exit-code", type=int, required=True)
    p.add_argument("--attempt", type=int, default=1)
    p.add_argument("--retries", type=int, default=0, help="Snakemake's --retries")
    args = parser.parse_args(argv)
    if len(args.out) != len(args.stage):
        parser.error(f"{len(args.out)} --out for {len(args.stage)} --stage: give one stage per output")
    if args.exit_code < 128:  # an exception the command did not expect: a bug, shown as a failed job
        return args.exit_code or 1
    if args.attempt <= args.retries:  # Snakemake starts it again; training resumes from its state
        return args.exit_code
    for stage, out in zip(args.stage, map(Path, args.out)):
        if _read(out) is not None:  # written before the kill (an evaluation before its run's probe): kept
            continue
        reason = killed_reason(args.exit_code, args.attempt, stage)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, {**failure_record(stage, reason, out.parent), "status": KILLED})
        _log_kill(out, stage, args.exit_code, args.attempt)
        print(f"{stage} killed on its last attempt; recorded in {out}; the next run starts it again", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
