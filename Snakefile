# t2i-rl-bench: the whole study. `snakemake --cores all` (see README).
# The grid (model x reward x algorithm x seed) comes from the validated config; every rule body
# is one `python -m bench <command>`, so each stage also runs by hand.
import json
import sys

from bench import config as study

# the default study unless --configfile names another (a preset replaces it; it is not merged)
if not config:

    configfile: "config/config.yaml"


_validated = study.validate(config)  # schema + semantic checks, before any job starts
config.clear()
config.update(_validated)
RUNS = study.runs(config)
RECURSIVE = study.recursive_variants(config)  # the self-consuming loop's named variants


report: "report/snakemake/workflow.rst"  # `snakemake --report report/snakemake.html` after a run
PY = sys.executable
RUN_DIR = "results/runs/{model}/{reward}/{algorithm}/seed{seed}"

shell.prefix("export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false; ")
wildcard_constraints:
    seed=r"\d+",
    model=r"[^/]+",
    reward=r"[^/]+",
    algorithm=r"[^/]+",
    variant=r"[A-Za-z0-9_.-]+",


def run_config(w):
    return json.dumps(study.run_config(config, study.RunKey(w.model, w.reward, w.algorithm, int(w.seed))))


def base_run_config(model, reward=None, algorithm=None):
    return json.dumps(study.run_config(config, study.base_run_key(config, model, reward, algorithm)))


TRAIN = study.train_command(config, PY)
EVALUATION = json.dumps({**config["evaluation"], "reward_settings": config["reward_settings"]})


rule all:
    input:
        "report/index.html",
        "results/citable.json",


rule world:
    output:
        "results/world/prompts.json",
    log:
        "results/logs/world.log",
    shell:
        "{PY} -m bench world --out {output} > {log} 2>&1"


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
        "results/logs/pretrain/{model}.log",
    shell:
        "{PY} -m bench pretrain --out results/models/{wildcards.model} --steps {params.p[steps]} "
        "--seed {params.p[seed]} --objective {params.p[objective]} > {log} 2>&1"


rule pretrain_clip:
    # The in-house CLIP judge (shipped); regenerate with `snakemake --cores 1 --forcerun pretrain_clip`.
    output:
        "results/models/clip16/bench_model.json",
    threads: 1
    log:
        "results/logs/pretrain/clip16.log",
    shell:
        "{PY} -m bench pretrain-clip --out results/models/clip16 --steps 1500 --seed 0 > {log} 2>&1"


rule train:
    input:
        model=lambda w: study.model_file(config["models"][w.model]),
        prompts="results/world/prompts.json",
    output:
        RUN_DIR + "/summary.json",
    params:
        run=run_config,
    threads: 1
    resources:
        **config["resources"]["train"],
    log:
        "results/logs/train/{model}/{reward}/{algorithm}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train/{model}/{reward}/{algorithm}/seed{seed}.tsv"
    shell:
        "{TRAIN} train --run-config {params.run:q} --prompts {input.prompts} --out $(dirname {output}) > {log} 2>&1"


rule evaluate_base:
    # the base model (budget 0) is the same for every algorithm, reward and seed: evaluated once
    input:
        model=lambda w: study.model_file(config["models"][w.model]),
        judge=[config["evaluation"]["clip_model"] + "/bench_model.json"] if config["evaluation"]["clip_model"] else [],
    output:
        "results/runs/{model}/base_eval.json",
    params:
        run=lambda w: base_run_config(w.model),
    threads: 1
    resources:
        **config["resources"]["evaluate"],
    log:
        "results/logs/evaluate/{model}/base.log",
    benchmark:
        "results/benchmarks/evaluate/{model}/base.tsv"
    shell:
        "{PY} -m bench evaluate-base --run-config {params.run:q} --evaluation {EVALUATION:q} --out {output} > {log} 2>&1"


rule evaluate:
    input:
        RUN_DIR + "/summary.json",
        base="results/runs/{model}/base_eval.json",
        judge=[config["evaluation"]["clip_model"] + "/bench_model.json"] if config["evaluation"]["clip_model"] else [],
    output:
        RUN_DIR + "/eval.json",
    threads: 1
    resources:
        **config["resources"]["evaluate"],
    log:
        "results/logs/evaluate/{model}/{reward}/{algorithm}/seed{seed}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}/{reward}/{algorithm}/seed{seed}.tsv"
    shell:
        "{PY} -m bench evaluate --run-dir $(dirname {output}) --evaluation {EVALUATION:q} --base {input.base} "
        "> {log} 2>&1"


rule probe_base:
    # the base model's probe depends on the algorithm and reward, not on the seed (full fine-tuning)
    input:
        model=lambda w: study.model_file(config["models"][w.model]),
    output:
        "results/runs/{model}/{reward}/{algorithm}/base_probe.json",
    params:
        run=lambda w: base_run_config(w.model, w.reward, w.algorithm),
        probe=lambda w: json.dumps(config["probe"]),
    threads: 1
    resources:
        **config["resources"]["probe"],
    log:
        "results/logs/probe/{model}/{reward}/{algorithm}/base.log",
    benchmark:
        "results/benchmarks/probe/{model}/{reward}/{algorithm}/base.tsv"
    shell:
        "{PY} -m bench probe-base --run-config {params.run:q} --probe {params.probe:q} --out {output} > {log} 2>&1"


rule probe:
    input:
        RUN_DIR + "/summary.json",
        base="results/runs/{model}/{reward}/{algorithm}/base_probe.json",
    output:
        RUN_DIR + "/probe.json",
    params:
        probe=lambda w: json.dumps(config["probe"]),
    threads: 1
    resources:
        **config["resources"]["probe"],
    log:
        "results/logs/probe/{model}/{reward}/{algorithm}/seed{seed}.log",
    benchmark:
        "results/benchmarks/probe/{model}/{reward}/{algorithm}/seed{seed}.tsv"
    shell:
        "{PY} -m bench probe --run-dir $(dirname {output}) --probe {params.probe:q} --base {input.base} > {log} 2>&1"


rule recursive:
    # one job per run and variant of the loop (recursive.variants)
    input:
        RUN_DIR + "/summary.json",
        judge=config["evaluation"]["clip_model"] + "/bench_model.json",
    output:
        RUN_DIR + "/recursive/{variant}.json",
    params:
        settings=lambda w: json.dumps(RECURSIVE[w.variant]),
    threads: 1
    resources:
        **config["resources"]["evaluate"],
    log:
        "results/logs/recursive/{model}/{reward}/{algorithm}/seed{seed}/{variant}.log",
    benchmark:
        "results/benchmarks/recursive/{model}/{reward}/{algorithm}/seed{seed}/{variant}.tsv"
    shell:
        "{PY} -m bench recursive --run-dir $(dirname $(dirname {output})) --settings {params.settings:q} "
        "--evaluation {EVALUATION:q} > {log} 2>&1"


def run_files(name):
    return expand(RUN_DIR + "/" + name, zip, **{k: [getattr(r, k) for r in RUNS] for k in ("model", "reward", "algorithm", "seed")})


def recursive_files():
    return [f for v in RECURSIVE for f in run_files(f"recursive/{v}.json")]


rule aggregate:
    input:
        evals=run_files("eval.json"),
        probes=run_files("probe.json") if config["probe"]["enabled"] else [],
        recursive=recursive_files() if config["recursive"]["enabled"] else [],
    output:
        table=report("results/tables/eval.csv", caption="report/snakemake/tables.rst", category="Tables"),
        citable="results/citable.json",
    params:
        cfg=lambda w: json.dumps(config),
    log:
        "results/logs/aggregate.log",
    shell:
        "{PY} -m bench aggregate --config {params.cfg:q} --runs-root results/runs --out results/tables > {log} 2>&1"


rule report:
    input:
        "results/tables/eval.csv",
    output:
        report("report/index.html", caption="report/snakemake/comparative.rst", category="Report"),
    log:
        "results/logs/report.log",
    shell:
        "{PY} -m bench report --tables results/tables --runs-root results/runs --out {output} > {log} 2>&1"
