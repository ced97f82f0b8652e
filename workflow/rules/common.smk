# Helpers shared by the rules: config validation, input functions, wildcard constraints.
# Rules stay thin: they call `python -m repexp.<stage>` and take every value through `params:`.
import json
from pathlib import Path

import repexp.dag as repexp_dag
import repexp.memory as repexp_memory
import repexp.pools as repexp_pools
import repexp.runtime as repexp_runtime
from repexp.assets import WHEELS
from repexp.config import check_workflow_config
import repexp.tasks as repexp_tasks
from repexp.figures import figures_for
from repexp.failures import report as report_failures

# the schema, the cross-references and each stage's own settings check: a bad config fails here,
# before any job
check_workflow_config(
    config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
)


wildcard_constraints:
    model=r"[a-z0-9][a-z0-9._-]*",
    task="|".join(repexp_tasks.TASKS),
    split="test|train|dev|test_rest",
    wheel="|".join(WHEELS),


def job_mem_mb(rule):
    """The `mem_mb` resource of a rule's jobs: the memory model's predicted host peak for the
    job's wildcards and threads, x 1.25, in MB, x attempt (`repexp.memory.mem_mb`). The one
    source of every memory request; the Slurm profile sets none."""

    def get(wildcards, threads, attempt):
        return repexp_memory.mem_mb(config, rule, wildcards, threads, attempt)

    return get


def job_runtime(rule):
    """The `runtime` resource (minutes) of a rule's jobs: the Slurm profile's `set-resources`
    entry at this attempt (`repexp.runtime.profile_runtime`), the one source of the time
    requests; on the cluster the profile sets the same."""

    def get(wildcards, attempt):
        return repexp_runtime.profile_runtime(rule, attempt)

    return get


def pool_gpus():
    """The `gpu` resource of the rules that sample or run a model on the pool backend: one GPU
    with vLLM, none with the hf backend (CPU). The Slurm and local-gpu profiles give these rules
    one GPU whatever the backend."""
    return 1 if config["inference"]["pool"]["backend"] == "vllm" else 0


def vllm_engine_args():
    """`generate_pool`'s vLLM engine flags (`repexp.pools.vllm_engine_cli`)."""
    return repexp_pools.vllm_engine_cli(config["inference"]["pool"])


def model_dtype(wildcards):
    """The dtype of the job's model (`models.<model>.dtype`)."""
    return config["models"][wildcards.model]["dtype"]


def used_models():
    """The models some stage of this config uses (the default target prepares these)."""
    return repexp_dag.used_models(config)


def model_wheel(wildcards):
    """The wheels a model is built from, in the order `repexp.models` takes them (one for
    gguf_wheel and tiny_random, every part of a gguf_parts split, none for hub models).
    """
    from repexp.models import model_wheels

    return [
        f"resources/wheels/{name}.whl"
        for name in model_wheels(config["models"][wildcards.model])
    ]


def model_spec(wildcards):
    return json.dumps(config["models"][wildcards.model], sort_keys=True)


def task_wheels(wildcards):
    """The wheels the task's source reads (none for hub data; `repexp.tasks.TASKS`)."""
    source = config["tasks"][wildcards.task]["source"]
    return [
        f"resources/wheels/{w}.whl"
        for w in repexp_tasks.wheels_of(wildcards.task, source)
    ]


def task_data_options(wildcards):
    """The task's data options set in the config, as JSON (`repexp.tasks.data_options`)."""
    return json.dumps(repexp_tasks.data_options(wildcards.task, config), sort_keys=True)


def task_param(key, none=""):
    def get(wildcards):
        value = config["tasks"][wildcards.task][key]
        return none if value is None else value

    return get


def task_qids(wildcards):
    """Explicit question ids apply to the test split (the inference pools)."""
    if wildcards.split != "test":
        return ""
    return ",".join(config["tasks"][wildcards.task]["qids"] or [])


def task_tables():
    return [
        f"resources/tasks/{task}/{split}.parquet"
        for task, spec in sorted(config["tasks"].items())
        for split in spec["splits"]
    ]


def get_final_output():
    """Everything the default target builds: models, task tables, every figure and the index."""
    return (
        [f"resources/models/{m}" for m in used_models()]
        + task_tables()
        + figure_outputs()
    )


# ------------------------------------------------------------------------------------------------
# inference-time stage
# ------------------------------------------------------------------------------------------------
from repexp.features import POOLINGS


wildcard_constraints:
    sampler=r"[a-z0-9][a-z0-9._-]*",
    shard=r"\d+",
    pooling="|".join(POOLINGS),


def inference_pools():
    """(model, task, sampler) of every pool: models x tasks with vanilla, plus the grid."""
    return repexp_dag.inference_pools(config)


def pool_shard_size(wildcards):
    """Questions per shard of the (model, task) pools: `inference.pool.questions_per_shard`, or
    (null) the runtime-bounded size of `repexp.dag` (cluster.max_job_hours)."""
    return repexp_dag.pool_shard_size(config, wildcards.model, wildcards.task)


def task_shards(task, model):
    return range(repexp_dag.pool_n_shards(config, model, task))


def pool_setting(key, wildcards):
    """A pool setting of the task, or the inference default."""
    return repexp_dag.pool_setting(config, wildcards.task, key)


def sampler_args(wildcards):
    """The sampler's flags; a task's top_p (MBPP+: 0.95) applies to its vanilla pools."""
    s = dict(config["inference"]["samplers"][wildcards.sampler])
    task_top_p = config["tasks"][wildcards.task]["top_p"]
    if wildcards.sampler == "vanilla" and task_top_p is not None:
        s["top_p"] = task_top_p
    return (
        f"--temperature {s['temperature']} --top-p {s['top_p']} "
        f"--min-p {s['min_p']} --top-k {s['top_k']}"
    )


def pool_files(kind, model, task, sampler):
    """All shards of one pool: kind = 'pools' (the responses), 'scores' (verdicts) or 'features'
    (manifests)."""
    pattern = {
        "pools": "results/inference/pools/{model}/{task}/{sampler}/shard-{shard}.parquet",
        "scores": "results/inference/pools/{model}/{task}/{sampler}/shard-{shard}.scores.parquet",
        "features": "results/inference/features/{model}/{task}/{sampler}/shard-{shard}.json",
    }[kind]
    return [
        pattern.format(model=model, task=task, sampler=sampler, shard=s)
        for s in task_shards(task, model)
    ]


def pool_shard_files(kind):
    def files(wildcards):
        return pool_files(kind, wildcards.model, wildcards.task, wildcards.sampler)

    return files


def pool_stats_files():
    """Per-question stats (n, c, format_ok) of every inference pool and of the pools-only
    difficulty reference (`repexp.dag.stats_pools`)."""
    return [
        f"results/inference/pools/{m}/{t}/{s}/stats.parquet"
        for m, t, s in repexp_dag.stats_pools(config)
    ]


def poolings_of(model, task, sampler):
    """The selection poolings of one pool, one select job each (`repexp.dag.pool_poolings`):
    all for the vanilla pools of `inference.features.ablation_models` (Fig. 4), the mean for
    the other pools."""
    return repexp_dag.pool_poolings(config, model, task, sampler)


def feature_poolings(wildcards):
    """The poolings its cache holds (`repexp.dag.cache_poolings`): the selection poolings and
    the mean@L of `inference.features.layers`, read by the repexp_layer<L> selectors."""
    w = wildcards
    return " ".join(repexp_dag.cache_poolings(config, w.model, w.task, w.sampler))


def selection_files(kind):
    return [
        f"results/inference/selection/{m}/{t}/{s}/{p}.{kind}.parquet"
        for m, t, s in inference_pools()
        for p in poolings_of(m, t, s)
    ]


def overview_pool():
    """The pool of the overview figure: the first vanilla pool of the config."""
    m, t, s = inference_pools()[0] if inference_pools() else ("", "", "")
    return {"model": m, "task": t, "sampler": s}


def overview_files(kind):
    return pool_files(kind, **overview_pool()) if inference_pools() else []


def verifier_settings(stage):
    """The `verifiers` section as `stage` (inference or rl) applies it, as one JSON value."""
    from repexp.verifiers.settings import VerifierSettings

    return VerifierSettings.for_stage(config["verifiers"], stage).to_json()


def verifier_args(wildcards, stage="inference"):
    """The task and verifier flags of `repexp.score.add_verifier_args`: the `verifiers`
    section as `stage` (inference or rl) scores with it, one JSON value
    (`repexp.verifiers.settings.VerifierSettings.for_stage`)."""
    import shlex

    from repexp.verifiers.settings import VerifierSettings

    settings = VerifierSettings.for_stage(config["verifiers"], stage)
    return (
        f"--task {wildcards.task} --source {config['tasks'][wildcards.task]['source']} "
        f"--verifiers {shlex.quote(settings.to_json())}"
    )


# ------------------------------------------------------------------------------------------------
# token-level stage
# ------------------------------------------------------------------------------------------------
from repexp.tokenlevel import method_name, settings_json


def token_level_on():
    return repexp_dag.token_level_on(config)


def token_level_methods():
    """vanilla, then one method per beta (named beta<value>)."""
    return repexp_dag.token_level_methods(config)


def token_level_beta(wildcards):
    if wildcards.tl_method == "vanilla":
        return "none"
    betas = {method_name(b): b for b in config["token_level"]["betas"]}
    return betas[wildcards.tl_method]


def token_level_shards():
    return range(len(repexp_dag.token_level_shard_sizes(config)))


def token_level_reference_scores(wildcards):
    """The reference model's vanilla pool of the task: its pass@1 ranks the questions."""
    tl = config["token_level"]
    return pool_files("scores", tl["reference_model"], wildcards.task, "vanilla")


def token_level_runs(wildcards):
    tl = config["token_level"]
    return [
        f"results/token_level/{tl['model']}/{tl['task']}/{m}/shard-{s}.parquet"
        for m in token_level_methods()
        for s in token_level_shards()
    ]


def figure_outputs():
    """Every figure (PDF, PNG, executed notebook as HTML) and the results index."""
    if not FIGURES:
        return []
    return [
        f"results/{kind}/{f}.{ext}"
        for f in FIGURES
        for kind, ext in (("figures", "pdf"), ("figures", "png"), ("notebooks", "html"))
    ] + ["results/index.html"]


def config_names(wildcards):
    """The config files of this run, for the results page's provenance line."""
    given = [str(f) for f in workflow.overwrite_configfiles or []]
    return ",".join(["config/config.yaml", *given])


# ------------------------------------------------------------------------------------------------
# RL stage
# ------------------------------------------------------------------------------------------------
from types import SimpleNamespace

from repexp.rl.settings import run_name, task_settings, train_settings


def rl_on():
    return repexp_dag.rl_on(config)


def rl_splits(task):
    """(dev_task, dev_split, test_task, test_split) of RL training on `task`."""
    return repexp_dag.rl_splits(config, task)


def rl_task_table(which):
    """Input function: the dev or the test task table of the run's task."""

    def table(wildcards):
        dev_task, dev_split, test_task, test_split = rl_splits(wildcards.task)
        task, split = (
            (dev_task, dev_split) if which == "dev" else (test_task, test_split)
        )
        return f"resources/tasks/{task}/{split}.parquet"

    return table


def rl_train_settings(wildcards):
    return json.dumps(train_settings(config["rl"], wildcards.task), sort_keys=True)


def rl_gpus():
    """GPUs of one training job: `rl.gpus_per_run`. Like the other model rules under the Slurm
    profile, whatever the backend; a local `--cores` run does not limit `gpu`."""
    return config["rl"]["gpus_per_run"]


def rl_launcher(wildcards):
    """How `rl_train` starts the trainer: one process (`python -m`), or one per GPU through
    `accelerate launch` when `rl.gpus_per_run` > 1 (the config check has made sure that the
    task's settings fit that many processes and that `rl.accelerate_config` exists:
    `repexp.config.stage_errors`). Each run gets its own rendezvous port
    (`repexp.rl.distributed.main_process_port`): two runs on one node would otherwise both take
    accelerate's default 29500."""
    from repexp.rl.distributed import main_process_port

    n = config["rl"]["gpus_per_run"]
    if n == 1:
        return "python -m repexp.rl.train"
    port = main_process_port(
        config["rl"], wildcards.task, wildcards.method, int(wildcards.seed)
    )
    accelerate_config = config["rl"]["accelerate_config"]
    if accelerate_config is None:
        return (
            f"accelerate launch --multi_gpu --num_processes {n} "
            f"--main_process_port {port} -m repexp.rl.train"
        )
    return (
        f"accelerate launch --config_file {accelerate_config} --num_processes {n} "
        f"--main_process_port {port} -m repexp.rl.train"
    )


def rl_max_new_tokens(wildcards):
    return task_settings(config["rl"], wildcards.task)["max_response_length"]


def rl_test_verifier(wildcards):
    """The verifier flags of the test task (dapo is tested on aime2024), with the RL stage's
    settings (`verifiers.math_reward` for MATH), as the trainer's rewards."""
    return verifier_args(SimpleNamespace(task=rl_splits(wildcards.task)[2]), stage="rl")


def rl_questions_per_shard(wildcards):
    """Questions per test-pool shard of the runs trained on the task: about as many
    responses as an inference-pool shard, or runtime-bounded (`repexp.dag`)."""
    return repexp_dag.rl_test_shard_size(config, wildcards.task)


def rl_test_shards(task):
    return range(repexp_dag.rl_test_n_shards(config, task))


def rl_policy(wildcards):
    """The evaluated policy: the base model, or the run's best checkpoint."""
    if wildcards.run == "base":
        return f"resources/models/{wildcards.model}"
    return f"results/rl/{wildcards.model}/{wildcards.task}/{wildcards.run}/best"


def rl_policy_dtype(wildcards):
    """Test pools and log-likelihoods: in the model's dtype on GPUs (bfloat16, as the authors'
    vLLM evaluation); in float32 on the hf backend (the trainer saves float32 weights: a few small
    updates vanish in bfloat16)."""
    if config["inference"]["pool"]["backend"] == "vllm":
        return config["models"][wildcards.model]["dtype"]
    return "float32"


def rl_test_files(kind):
    """Input function: every test-pool shard of one run, as pools or scores."""
    ext = {"pools": "parquet", "scores": "scores.parquet"}[kind]

    def files(wildcards):
        prefix = f"results/rl/{wildcards.model}/{wildcards.task}/{wildcards.run}/test"
        return [f"{prefix}/shard-{s}.{ext}" for s in rl_test_shards(wildcards.task)]

    return files


def rl_outputs(kind):
    """'done' (every training run) or 'questions' (every evaluated policy, base included)."""
    rl = config["rl"]
    if not rl_on():
        return []
    runs = [run_name(m, s) for m in rl["methods"] for s in rl["seeds"]]
    if kind == "done":
        return [
            f"results/rl/{rl['model']}/{t}/{r}/done.json"
            for t in rl["tasks"]
            for r in runs
        ]
    return [
        f"results/rl/{rl['model']}/{t}/{r}/test/questions.parquet"
        for t in rl["tasks"]
        for r in ["base", *runs]
    ]


# ------------------------------------------------------------------------------------------------
# provenance of the result tables
# ------------------------------------------------------------------------------------------------
from repexp.provenance import STAGE_SECTIONS, stage_hash


def stage_provenance(stage):
    """The `--provenance` JSON of a stage's table rules: the hash of the config sections the stage
    reads (`repexp.provenance.STAGE_SECTIONS`), its model(s) and seed(s). The commit and package
    versions are read by the job itself, so a new commit requeues nothing."""
    if stage == "inference":
        model = ",".join(dict.fromkeys(m for m, _, _ in inference_pools()))
        seed = config["seed"]
    elif stage == "token_level":
        model, seed = config["token_level"]["model"], config["seed"]
    else:  # rl: the training seeds (the master seed, which seeds the test pools, is in the hash)
        model = config["rl"]["model"]
        seed = ",".join(str(s) for s in config["rl"]["seeds"])
    info = {
        "stage": stage,
        "config_hash": stage_hash(config, stage),
        "model": model,
        "seed": seed,
    }
    return json.dumps(info, sort_keys=True)


def token_level_job(wildcards):
    """Shard, part and earlier files of one token_level_run job (repexp.dag)."""
    return repexp_dag.token_level_part_files(
        config, wildcards.model, wildcards.task, wildcards.tl_method, wildcards.tl_shard
    )


def token_level_earlier(wildcards):
    """The previous part's run states and, for a shard's last part, the earlier parts' responses."""
    job = token_level_job(wildcards)
    return {k: job[k] for k in ("state", "rows") if job[k]}


# ------------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------------
# Every figure of this config, {name: [result tables it reads]}: the figure table's entries
# (`repexp.figures.FIGURES`) of the stages this config runs; figures.smk draws them.
FIGURES = figures_for(
    {
        stage
        for stage, on in (
            ("inference", bool(inference_pools())),
            ("token_level", token_level_on()),
            ("rl", rl_on()),
        )
        if on
    }
)


def findings_inputs():
    """What `findings` reads (`python -m repexp.findings`), as named inputs. `tables` holds
    the result tables of the stages this config runs (the inference questions, the
    token-level runs and pass@k, RL's pass@k for its provenance) and `rl_questions` every RL
    run's per-question test table."""
    from repexp.findings import TABLE_FILES

    on = {
        "questions": bool(inference_pools()),
        "tokenlevel_runs": token_level_on(),
        "tokenlevel_passk": token_level_on(),
        "rl_passk": rl_on(),
    }
    return {
        "tables": [
            f"results/tables/{f}" for kind, f in TABLE_FILES.items() if on[kind]
        ],
        "rl_questions": rl_outputs("questions"),
    }
