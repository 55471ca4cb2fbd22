# t2i-rl-bench: the whole study. `snakemake --cores all` (see README).
# The grid (model x reward x algorithm x seed) comes from the validated config; every rule body
# is one `python -m t2i_rl_bench <command>`, so each stage also runs by hand.
import json
import shlex
import sys

from t2i_rl_bench import failures, study
from t2i_rl_bench.layout import study_paths

# the default study unless --configfile names another (a preset replaces it; it is not merged)
if not config:

    configfile: "config/config.yaml"


study.check_files(workflow.configfiles)  # a key given twice is refused (YAML would keep the last)
# schema + semantic checks, and the recorded SHA-256 of every model and judge (t2i_rl_bench.integrity),
# before any job starts; hashed once, by the main process (not again inside each cluster job)
_validated = study.validate(config, verify=workflow.is_main_process)
config.clear()
config.update(_validated)
RUNS = study.runs(config)
RECURSIVE = study.recursive_variants(config)  # the self-consuming loop's named variants


report: "report/snakemake/workflow.rst"  # `snakemake --report report/snakemake.html` after a run
PY = sys.executable
# every output of this study lives in its own folders (bench/layout.py): a preset never
# overwrites another study's results or the committed default study
OUT = study_paths(config)
RUN_DIR = OUT.run_dir
RUNS_ROOT, TABLES, LOGS, BENCH = OUT.runs, OUT.tables, OUT.logs, OUT.benchmarks
JUDGE = [config["evaluation"]["clip_model"] + "/bench_model.json"] if config["evaluation"]["clip_model"] else []
# a job whose process dies (SIGKILL, the OOM killer) is retried (training resumes from its state);
# after Snakemake's last retry its output records status `killed` (no result: it enters no mean), so
# aggregate and report still run, and the kill is counted beside it (failures.kills): that count
# is a parameter of the job, so the next `snakemake` runs the killed job again and training
# resumes from its last state; once it has run, the recorded count is the count and nothing reruns
RETRIES = getattr(workflow.execution_settings, "retries", 0)  # None in a dry run


class NeverKilled:
    """`kills` of a job never killed: a value Snakemake does not record, so the parameters of a job
    that ran before this parameter existed are unchanged (no rerun of a finished study)."""

    def __repr__(self):
        return "0"


def kills(*patterns):
    """The job parameter `kills`: how often the job writing these outputs was killed (patterns
    filled from the job's wildcards; not from `output`, which Snakemake would not compare)."""
    return lambda w: failures.kills(*(p.format(**dict(w.items())) for p in patterns)) or NeverKilled()


def killed(*stages):
    """The fallback after a job's command: one stage per output, in the rule's output order."""
    outs = " ".join(f"--out {{output[{i}]}} --stage {stage}" for i, stage in enumerate(stages))
    return ("|| {PY} -m t2i_rl_bench.failures killed " + outs
            + " --exit-code $? --attempt {resources.attempt} --retries {RETRIES} >> {log} 2>&1")


# T2I_RL_BENCH_JOB_PID: the job's shell; a command of the job ends when it does (bench/jobguard.py);
# T2I_RL_BENCH_REWARD_TIMEOUT: the study's timeouts.reward_s, the limit of every reward call
shell.prefix(
    "export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false T2I_RL_BENCH_JOB_PID=$$ "
    f"T2I_RL_BENCH_REWARD_TIMEOUT={float(config['timeouts']['reward_s']):g}; "
)
wildcard_constraints:
    seed=r"\d+",
    model=r"[^/]+",
    reward=r"[^/]+",
    algorithm=r"[^/]+",
    variant=r"[A-Za-z0-9_.-]+",


def run_config(w):
    return study.run_spec(config, study.RunKey(w.model, w.reward, w.algorithm, int(w.seed))).to_json()


def base_run_config(model, reward=None, algorithm=None):
    return study.run_spec(config, study.base_run_key(config, model, reward, algorithm)).to_json()


TRAIN = study.train_command(config, PY)
EVALUATION = json.dumps({**config["evaluation"], "reward_settings": config["reward_settings"]})


rule all:
    input:
        OUT.report,
        OUT.citable,


rule world:
    output:
        "results/world/prompts.json",
    log:
        LOGS + "/world.log",
    shell:
        "{PY} -m t2i_rl_bench world --out {output} > {log} 2>&1"


rule pretrain:
    # Shipped checkpoints are committed; regenerate with `snakemake --cores 1 --forcerun pretrain`.
    output:
        "results/models/{model}/bench_model.json",
    params:
        p=lambda w: config["models"][w.model].get("pretrain", {}),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    log:
        LOGS + "/pretrain/{model}.log",
    shell:
        "{PY} -m t2i_rl_bench pretrain --out results/models/{wildcards.model} --steps {params.p[steps]} "
        "--seed {params.p[seed]} --objective {params.p[objective]} > {log} 2>&1"


rule pretrain_clip:
    # The in-house CLIP judge (shipped); regenerate with `snakemake --cores 1 --forcerun pretrain_clip`.
    output:
        "results/models/clip16/bench_model.json",
    threads: 1
    log:
        LOGS + "/pretrain/clip16.log",
    shell:
        "{PY} -m t2i_rl_bench pretrain-clip --out results/models/clip16 --steps 1500 --seed 0 > {log} 2>&1"


rule train:
    input:
        model=lambda w: study.model_file(config["models"][w.model]),
        prompts="results/world/prompts.json",
    output:
        RUN_DIR + "/summary.json",
    params:
        run=run_config,
        kills=kills(RUN_DIR + "/summary.json"),
    threads: 1
    resources:
        **config["resources"]["train"],
        attempt=lambda w, attempt: attempt,
    log:
        LOGS + "/train/{model}/{reward}/{algorithm}/seed{seed}.log",
    benchmark:
        BENCH + "/train/{model}/{reward}/{algorithm}/seed{seed}.tsv"
    shell:
        "{TRAIN} train --run-config {params.run:q} --prompts {input.prompts} --out $(dirname {output}) > {log} 2>&1 "
        + killed("train")


rule evaluate_base:
    # the base model (budget 0) is the same for every algorithm, reward and seed: evaluated once
    input:
        model=lambda w: study.model_file(config["models"][w.model]),
        judge=JUDGE,
    output:
        RUNS_ROOT + "/{model}/base_eval.json",
    params:
        run=lambda w: base_run_config(w.model),
        kills=kills(RUNS_ROOT + "/{model}/base_eval.json"),
    threads: 1
    resources:
        **config["resources"]["evaluate"],
        attempt=lambda w, attempt: attempt,
    log:
        LOGS + "/evaluate/{model}/base.log",
    benchmark:
        BENCH + "/evaluate/{model}/base.tsv"
    shell:
        "{PY} -m t2i_rl_bench evaluate-base --run-config {params.run:q} --evaluation {EVALUATION:q} --out {output} > {log} 2>&1 "
        + killed("evaluate")


PROBE = json.dumps(config["probe"]) if config["probe"]["enabled"] else None
ALGORITHMS = list(config["algorithms"])


def probe_base_args(w, output):
    """--run-config/--out for each algorithm of a model x reward: its base probes in one process."""
    return " ".join(
        f"--run-config {shlex.quote(base_run_config(w.model, w.reward, a))} --out {shlex.quote(out)}"
        for a, out in zip(ALGORITHMS, output)
    )


rule probe_base:
    # the base model's probe depends on the algorithm and reward, not on the seed (full fine-tuning);
    # one job per model x reward probes it for every algorithm (the imports and the model paid once)
    input:
        model=lambda w: study.model_file(config["models"][w.model]),
    output:
        expand(RUNS_ROOT + "/{{model}}/{{reward}}/{algorithm}/base_probe.json", algorithm=ALGORITHMS),
    params:
        runs=probe_base_args,
        kills=kills(*(RUNS_ROOT + "/{model}/{reward}/" + a + "/base_probe.json" for a in ALGORITHMS)),
    threads: 1
    resources:
        **config["resources"]["probe"],
        attempt=lambda w, attempt: attempt,
    log:
        LOGS + "/probe/{model}/{reward}/base.log",
    benchmark:
        BENCH + "/probe/{model}/{reward}/base.tsv"
    shell:
        "{PY} -m t2i_rl_bench probe-base {params.runs} --probe {PROBE:q} > {log} 2>&1 "
        + killed(*["probe"] * len(ALGORITHMS))


rule assess:
    # a run's held-out evaluation and gradient probe at every checkpoint, in one process: each
    # writes its own file (`evaluate` and `probe` are also commands of their own, to run by hand)
    input:
        RUN_DIR + "/summary.json",
        base=RUNS_ROOT + "/{model}/base_eval.json",
        base_probe=[RUNS_ROOT + "/{model}/{reward}/{algorithm}/base_probe.json"] if PROBE else [],
        judge=JUDGE,
    output:
        RUN_DIR + "/eval.json",
        [RUN_DIR + "/probe.json"] if PROBE else [],
    params:
        kills=kills(RUN_DIR + "/eval.json", *([RUN_DIR + "/probe.json"] if PROBE else [])),
    threads: 1
    resources:
        **study.assess_resources(config),
        attempt=lambda w, attempt: attempt,
    log:
        LOGS + "/assess/{model}/{reward}/{algorithm}/seed{seed}.log",
    benchmark:
        BENCH + "/assess/{model}/{reward}/{algorithm}/seed{seed}.tsv"
    shell:
        "{PY} -m t2i_rl_bench assess --run-dir $(dirname {output[0]}) --evaluation {EVALUATION:q} "
        "--base-eval {input.base} " + ("--probe {PROBE:q} --base-probe {input.base_probe} " if PROBE else "")
        + "> {log} 2>&1 " + killed("evaluate", *(["probe"] if PROBE else []))


rule recursive:
    # one job per run and variant of the loop (recursive.variants)
    input:
        RUN_DIR + "/summary.json",
        judge=JUDGE,  # none with evaluation.clip_model: null (the real-model presets)
    output:
        RUN_DIR + "/recursive/{variant}.json",
    params:
        settings=lambda w: json.dumps(RECURSIVE[w.variant]),
        kills=kills(RUN_DIR + "/recursive/{variant}.json"),
    threads: 1
    resources:
        **config["resources"]["evaluate"],
        attempt=lambda w, attempt: attempt,
    log:
        LOGS + "/recursive/{model}/{reward}/{algorithm}/seed{seed}/{variant}.log",
    benchmark:
        BENCH + "/recursive/{model}/{reward}/{algorithm}/seed{seed}/{variant}.tsv"
    shell:
        "{PY} -m t2i_rl_bench recursive --run-dir $(dirname $(dirname {output})) --settings {params.settings:q} "
        "--evaluation {EVALUATION:q} > {log} 2>&1 " + killed("recursive")


def run_files(name):
    return expand(RUN_DIR + "/" + name, zip, **{k: [getattr(r, k) for r in RUNS] for k in ("model", "reward", "algorithm", "seed")})


def recursive_files():
    return [f for v in RECURSIVE for f in run_files(f"recursive/{v}.json")]


rule aggregate:
    input:
        evals=run_files("eval.json"),
        recursive=recursive_files() if config["recursive"]["enabled"] else [],
    output:
        table=report(TABLES + "/eval.csv", caption="report/snakemake/tables.rst", category="Tables"),
        citable=OUT.citable,
    params:
        cfg=lambda w: json.dumps(config),
    log:
        LOGS + "/aggregate.log",
    shell:
        "{PY} -m t2i_rl_bench aggregate --config {params.cfg:q} --runs-root {RUNS_ROOT} --out {TABLES} > {log} 2>&1"


# the default study's report also refreshes the verdict table the README quotes (between its markers)
QUOTE = "--quote-in README.md" if config["study"] == "default" else ""


rule report:
    input:
        TABLES + "/eval.csv",
    output:
        report(OUT.report, caption="report/snakemake/comparative.rst", category="Report"),
    log:
        LOGS + "/report.log",
    shell:
        "{PY} -m t2i_rl_bench report --tables {TABLES} --runs-root {RUNS_ROOT} --out {output} {QUOTE} > {log} 2>&1"
