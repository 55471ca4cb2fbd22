"""Command line: `python -m t2i_rl_bench <command>` (also installed as `t2i-rl-bench`).
Each workflow rule calls one of these commands, so every stage also runs by hand."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _threads(n: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    import torch

    torch.set_num_threads(n)


def cmd_list(args) -> None:
    from t2i_rl_bench.registry import ALGORITHMS, METRICS, MODELS, REWARDS
    from t2i_rl_bench.sampling import FLOW_VARIANTS

    broken = []
    for title, reg in (("algorithms", ALGORITHMS), ("rewards", REWARDS), ("metrics", METRICS), ("models", MODELS)):
        problems = reg.problems()
        names = [f"{n} [FAILS TO IMPORT]" if n in problems else n for n in reg.names()]
        print(f"{title}: {', '.join(names) or '(none)'}")
        broken += [f"  {title[:-1]} {n}: {problems[n]}" for n in sorted(problems)]
    if broken:  # installed, but refused by a study that names it
        print("plugins that fail to import (a study naming one is refused):", *broken, sep="\n")
    # the sampler options any algorithm runs with on a flow model (sampling.* or algorithms.<label>.*)
    print(f"flow SDEs (flow_variant): {', '.join(FLOW_VARIANTS)}")
    print(
        "SDE windows: sde_window [start, length] (fixed), + sde_window_shift [every, stride] (sliding) "
        "or + sde_window_range [lo, hi] (drawn each round)"
    )


def cmd_validate(args) -> None:
    """One line per error, naming the file and the key (the traceback only with --debug)."""
    from t2i_rl_bench import study
    from t2i_rl_bench.registry import PluginError

    try:
        cfg = study.load(args.configfile)
    except (study.ConfigError, PluginError, OSError) as exc:
        if args.debug:
            raise
        lines = getattr(exc, "errors", None) or [str(exc)]
        for line in lines:
            text = " ".join(str(line).split())
            print(text if text.startswith(str(args.configfile)) else f"{args.configfile}: {text}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{args.configfile}: valid; {len(study.runs(cfg))} runs, config hash {study.config_hash(cfg)}")


def cmd_world(args) -> None:
    from t2i_rl_bench.io import atomic_write_json
    from t2i_rl_bench.world.captions import prompt_sets

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sets = prompt_sets()
    atomic_write_json(out, sets)
    print(f"wrote {out}: " + ", ".join(f"{k} {len(v)}" for k, v in sets.items()))


def cmd_pretrain(args) -> None:
    _threads(args.threads)
    from t2i_rl_bench.models.embedded import EmbeddedSpec
    from t2i_rl_bench.world.pretrain import pretrain

    out = pretrain(args.out, steps=args.steps, seed=args.seed, spec=EmbeddedSpec(objective=args.objective))
    if args.evaluate:
        from t2i_rl_bench.world.base_quality import record_base_quality

        record_base_quality(out)
    print(f"wrote {out}")


def cmd_pretrain_clip(args) -> None:
    _threads(args.threads)
    from t2i_rl_bench.judges.clip import pretrain_clip

    print(f"wrote {pretrain_clip(args.out, steps=args.steps, seed=args.seed)}")


def cmd_train(args) -> None:
    _threads(args.threads)
    from t2i_rl_bench.distributed import init_from_env
    from t2i_rl_bench.spec import RunSpec
    from t2i_rl_bench.train import train

    init_from_env()  # under torchrun: one process of a distributed run (t2i_rl_bench.distributed)
    spec = RunSpec.from_json(args.run_config)  # the text of a run_config.json too
    if args.prompts:
        spec = spec.replace(prompts=tuple(json.loads(Path(args.prompts).read_text())["train"]))
    summary = train(spec, args.out, threads=args.threads)
    print(json.dumps({k: summary.get(k) for k in ("status", "images_seen", "device_seconds")}))


def cmd_evaluate(args) -> None:
    _threads(args.threads)
    from t2i_rl_bench.evaluate import evaluate_run
    from t2i_rl_bench.spec import RunSpec

    run_dir = Path(args.run_dir)
    evaluate_run(run_dir, RunSpec.read(run_dir), json.loads(args.evaluation), threads=args.threads, base=args.base)


def cmd_evaluate_base(args) -> None:
    _threads(args.threads)
    from t2i_rl_bench.evaluate import evaluate_base
    from t2i_rl_bench.spec import RunSpec

    evaluate_base(RunSpec.from_json(args.run_config), json.loads(args.evaluation), args.out, threads=args.threads)


def cmd_probe(args) -> None:
    _threads(args.threads)
    from t2i_rl_bench.probe import probe_run
    from t2i_rl_bench.spec import RunSpec

    run_dir = Path(args.run_dir)
    probe_run(run_dir, RunSpec.read(run_dir), json.loads(args.probe), threads=args.threads, base=args.base)


def cmd_probe_base(args) -> None:
    _threads(args.threads)
    from t2i_rl_bench.failures import recorded, subject
    from t2i_rl_bench.probe import probe_base
    from t2i_rl_bench.spec import RunSpec

    if len(args.run_config) != len(args.out):
        raise SystemExit(f"probe-base: {len(args.run_config)} --run-config for {len(args.out)} --out (one each)")
    # several algorithms' base probes in one process: the imports and the model are paid once; a
    # failure of one (a plugin's error) is recorded in its own file and the others still run
    for run_config, out in zip(args.run_config, args.out):
        spec = RunSpec.from_json(run_config)  # the label: the folder of <model>/<reward>/<label>/base_probe.json
        with recorded("probe", Path(out), None, subject(spec, Path(out).parent.name, "probe of the base model")):
            probe_base(spec, json.loads(args.probe), out, threads=args.threads)


def cmd_assess(args) -> None:
    """A run's evaluation, then its probe, in one process (the workflow's job per run): each stage
    writes its own file, and a failure of one is recorded in that file without losing the other."""
    _threads(args.threads)
    from t2i_rl_bench.evaluate import evaluate_run
    from t2i_rl_bench.failures import recorded, subject
    from t2i_rl_bench.probe import probe_run
    from t2i_rl_bench.spec import RunSpec

    run_dir = Path(args.run_dir)
    spec = RunSpec.read(run_dir)
    label = run_dir.parent.name  # <model>/<reward>/<label>/seed<k>
    with recorded("evaluate", run_dir / "eval.json", run_dir, subject(spec, label, "evaluation")):
        evaluate_run(run_dir, spec, json.loads(args.evaluation), threads=args.threads, base=args.base_eval)
    if args.probe is not None:
        with recorded("probe", run_dir / "probe.json", run_dir, subject(spec, label, "probe")):
            probe_run(run_dir, spec, json.loads(args.probe), threads=args.threads, base=args.base_probe)


def cmd_recursive(args) -> None:
    _threads(args.threads)
    from t2i_rl_bench.recursive import RecursiveSettings, recursive_run
    from t2i_rl_bench.spec import RunSpec

    run_dir = Path(args.run_dir)
    settings = RecursiveSettings.from_dict(json.loads(args.settings))
    recursive_run(run_dir, RunSpec.read(run_dir), settings, json.loads(args.evaluation), threads=args.threads)


def cmd_aggregate(args) -> None:
    from t2i_rl_bench import study, tables

    cfg = study.validate(json.loads(args.config), check_paths=False)
    tables.aggregate(cfg, Path(args.runs_root), Path(args.out))


def cmd_report(args) -> None:
    from t2i_rl_bench import report

    report.render(Path(args.tables), Path(args.runs_root), Path(args.out))
    if args.quote_in and report.quote_tables(Path(args.quote_in), Path(args.tables)):
        print(f"quoted the headline and verdict tables in {args.quote_in}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="t2i-rl-bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="what is registered: algorithms, rewards, metrics, models").set_defaults(fn=cmd_list)
    p = sub.add_parser("validate", help="validate a study config")
    p.add_argument("configfile")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.set_defaults(fn=cmd_validate)
    p = sub.add_parser("world", help="write the prompt sets of the embedded world")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_world)
    p = sub.add_parser("pretrain", help="pretrain the embedded base model (seeded)")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objective", choices=["epsilon", "flow"], default="epsilon")
    p.add_argument("--no-evaluate", dest="evaluate", action="store_false")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(fn=cmd_pretrain)
    p = sub.add_parser("pretrain-clip", help="pretrain the in-house CLIP judge (seeded)")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(fn=cmd_pretrain_clip)
    p = sub.add_parser("train", help="one training run")
    p.add_argument("--run-config", required=True, help="JSON of t2i_rl_bench.spec.RunSpec")
    p.add_argument("--prompts", help="prompt-set JSON (its 'train' list); default: the embedded world's")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("evaluate", help="evaluate a run's checkpoints")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--evaluation", required=True, help="JSON of the config's evaluation section")
    p.add_argument("--base", help="the shared base-model row (from evaluate-base), used when its key matches")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(fn=cmd_evaluate)
    p = sub.add_parser("evaluate-base", help="evaluate the base model once for every run that shares it")
    p.add_argument("--run-config", required=True, help="JSON of t2i_rl_bench.spec.RunSpec (any run of the model)")
    p.add_argument("--evaluation", required=True, help="JSON of the config's evaluation section")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(fn=cmd_evaluate_base)
    p = sub.add_parser("probe", help="gradient variance and per-step credit at a run's checkpoints")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--probe", required=True, help="JSON of the config's probe section")
    p.add_argument("--base", help="the shared base-model probe (from probe-base), used when its key matches")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(fn=cmd_probe)
    p = sub.add_parser("probe-base", help="probe the base model once for the runs (seeds) that share it")
    p.add_argument(
        "--run-config",
        required=True,
        action="append",
        help="JSON of t2i_rl_bench.spec.RunSpec (any seed of the run); repeat it, with --out, for several algorithms",
    )
    p.add_argument("--probe", required=True, help="JSON of the config's probe section")
    p.add_argument("--out", required=True, action="append", help="one per --run-config, in order")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(fn=cmd_probe_base)
    p = sub.add_parser("assess", help="evaluate and probe a run's checkpoints in one process (the workflow's job)")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--evaluation", required=True, help="JSON of the config's evaluation section")
    p.add_argument("--base-eval", help="the shared base-model row (from evaluate-base)")
    p.add_argument("--probe", help="JSON of the config's probe section (none: no probe)")
    p.add_argument("--base-probe", help="the shared base-model probe (from probe-base)")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(fn=cmd_assess)
    p = sub.add_parser("recursive", help="the self-consuming loop from a run's final checkpoint")
    p.add_argument("--run-dir", required=True)
    p.add_argument(
        "--settings", required=True, help="JSON of one variant's settings (t2i_rl_bench.study.recursive_variants)"
    )
    p.add_argument("--evaluation", required=True, help="JSON of the config's evaluation section")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(fn=cmd_recursive)
    p = sub.add_parser("aggregate", help="tables over seeds with confidence intervals")
    p.add_argument("--config", required=True, help="JSON of the validated study config")
    p.add_argument("--runs-root", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_aggregate)
    p = sub.add_parser("report", help="render the comparative HTML report")
    p.add_argument("--tables", required=True)
    p.add_argument("--runs-root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--quote-in", help="a README whose table markers get the study's headline and verdict tables")
    p.set_defaults(fn=cmd_report)
    args = parser.parse_args(argv)
    from t2i_rl_bench import jobguard
    from t2i_rl_bench.failures import recorded_failure

    jobguard.bind()  # inside a workflow job: this process ends with its job (no orphan writes)

    with recorded_failure(args):  # a reward error, divergence or OOM ends a job as a failed result
        args.fn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
