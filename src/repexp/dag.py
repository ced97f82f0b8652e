"""What the DAG is made of: pools, shards, token-level parts, RL splits, the models a config uses.

``workflow/rules/common.smk`` builds its input functions from these pure functions of the config,
so the rules and the job table (:mod:`repexp.jobs`, which lists the jobs of Snakemake's own DAG)
agree by construction. Where the config leaves a size to the runtime model (``inference.pool.
questions_per_shard: null``, ``token_level.responses_per_job: null``), :mod:`repexp.runtime`
gives it: the largest shard or part whose estimated runtime stays within
``cluster.max_job_hours``.
"""

from __future__ import annotations

import re

from repexp import runtime
from repexp.pools import n_shards
from repexp.tasks import expected_questions
from repexp.tokenlevel import method_name, run_shards


def shard_sizes(n_questions: int, per_shard: int) -> list[int]:
    """Questions in each shard (the last one takes the rest).

    >>> shard_sizes(10, 4)
    [4, 4, 2]
    """
    k = n_shards(n_questions, per_shard)
    return [min(per_shard, n_questions - i * per_shard) for i in range(k)]


def used_models(config: dict) -> list[str]:
    """The models some stage of this config uses (the default target prepares these)."""
    inf, tl, rl = config["inference"], config["token_level"], config["rl"]
    names = list(inf["models"]) + [g["model"] for g in inf["grid"]]
    names += [inf["metrics"]["reference_model"], tl["model"], tl["reference_model"], rl["model"]]
    return sorted({n for n in names if n})


# ------------------------------------------------------------------------------------------------
# inference pools
# ------------------------------------------------------------------------------------------------
def inference_pools(config: dict) -> list[tuple[str, str, str]]:
    """(model, task, sampler) of every pool: models x tasks with vanilla, plus the grid."""
    inf = config["inference"]
    pools = [(m, t, "vanilla") for m in inf["models"] for t in inf["tasks"]]
    pools += [(g["model"], g["task"], g["sampler"]) for g in inf["grid"]]
    return list(dict.fromkeys(pools))


def reference_pools(config: dict) -> list[tuple[str, str, str]]:
    """The pools-only pools of the difficulty reference: when ``inference.metrics.reference_model``
    is not an inference model, its vanilla pools of every inference task (generated and scored,
    summarised by ``pool_stats``; no features, no selection, no row of the model-rank figure)."""
    pools = inference_pools(config)
    ref = config["inference"]["metrics"]["reference_model"]
    if not ref or not pools:
        return []
    tasks = config["inference"]["tasks"]
    return [(ref, t, "vanilla") for t in tasks if (ref, t, "vanilla") not in pools]


def stats_pools(config: dict) -> list[tuple[str, str, str]]:
    """The pools whose per-question stats (n, c, format_ok) the inference tables read."""
    return list(dict.fromkeys(inference_pools(config) + reference_pools(config)))


def pool_poolings(config: dict, model: str, task: str, sampler: str) -> list[str]:
    """The poolings cached and selected for one pool: ``inference.features.poolings`` for the
    vanilla pools of ``inference.features.ablation_models`` (null: every model), the paper's mean
    for every other pool (Fig. 4 ablates the feature on vanilla pools only)."""
    feats = config["inference"]["features"]
    ablation = feats.get("ablation_models")
    if sampler == "vanilla" and (ablation is None or model in ablation):
        return list(feats["poolings"])
    return ["mean"]


def feature_layers(config: dict, model: str, task: str, sampler: str) -> list[int]:
    """The middle layers whose mean response state the feature cache of one pool holds (the
    ``mean@L`` poolings, :func:`repexp.features.layer_pooling`): the ``layer`` of every entry of
    ``inference.features.layers`` naming this model and task, for the vanilla pool only. A
    ``null`` layer is the middle block, ``num_hidden_layers // 2`` of the model's shape
    (:func:`repexp.memory.model_shape`: known models and tiny random ones without loading them);
    a layer outside 1..num_hidden_layers - 1 is an error when the shape is known (else the
    ``cache_features`` job checks it on the loaded model)."""
    if sampler != "vanilla":
        return []
    out = []
    for entry in config["inference"]["features"].get("layers") or []:
        if entry["model"] != model or entry["task"] != task:
            continue
        out.append(resolve_layer(config, model, entry.get("layer")))
    return list(dict.fromkeys(out))


def resolve_layer(config: dict, model: str, layer: int | None) -> int:
    from repexp.memory import JobModelError, model_shape

    try:
        blocks = model_shape(config, model).layers
    except JobModelError as e:
        if layer is None:
            raise ValueError(
                f"inference.features.layers: layer null (the middle block) for model {model!r} "
                f"needs its number of blocks, which is not known before the model is prepared "
                f"({e}); give the layer as an integer"
            ) from e
        return int(layer)
    if layer is None:
        return blocks // 2
    if not 1 <= layer <= blocks - 1:
        raise ValueError(
            f"inference.features.layers: layer {layer} of model {model!r}, which has {blocks} "
            f"decoder blocks: a middle layer is 1..{blocks - 1} (the middle one: {blocks // 2}, "
            f"or null)"
        )
    return int(layer)


def cache_poolings(config: dict, model: str, task: str, sampler: str) -> list[str]:
    """The poolings the feature cache of one pool holds: its selection poolings
    (:func:`pool_poolings`) and the ``mean@L`` of each of its :func:`feature_layers` (read by the
    ``repexp_layer<L>`` selectors in the select job of the mean pooling; no select job of their
    own)."""
    from repexp.features import layer_pooling

    layers = [layer_pooling(x) for x in feature_layers(config, model, task, sampler)]
    return pool_poolings(config, model, task, sampler) + layers


def pool_methods(config: dict, model: str, task: str, sampler: str, pooling: str) -> list[str]:
    """The selection methods of one select job (pool and pooling): ``inference.selection.methods``
    less each ``repexp_layer<L>`` that this job cannot run: those run in the job of the ``mean``
    pooling of a pool whose cache holds ``mean@L`` (:func:`feature_layers`). The config check
    refuses a ``repexp_layer<L>`` that no pool can run (:func:`layer_pools`)."""
    from repexp.selectors import SELECTORS

    layers = feature_layers(config, model, task, sampler) if pooling == "mean" else []
    return [
        m
        for m in config["inference"]["selection"]["methods"]
        if SELECTORS[m].layer is None or SELECTORS[m].layer in layers
    ]


def layer_pools(config: dict) -> dict[int, list[str]]:
    """{layer: the pools ("model/task") whose cache holds its mean state} over every inference
    pool (for the config check of ``repexp_layer<L>`` methods)."""
    out: dict[int, list[str]] = {}
    for m, t, s in inference_pools(config):
        for x in feature_layers(config, m, t, s):
            out.setdefault(x, []).append(f"{m}/{t}")
    return out


def pool_setting(config: dict, task: str, key: str):
    """A pool's `n` or `max_new_tokens`: the task's value, else the inference default."""
    value = config["tasks"][task][{"n": "pool_n", "max_new_tokens": "max_new_tokens"}[key]]
    return config["inference"]["pool"][key] if value is None else value


def pool_questions(config: dict, task: str) -> int:
    spec = config["tasks"][task]
    return expected_questions(task, spec["source"], "test", spec["n_questions"], spec["qids"])


def pool_shard_size(config: dict, model: str, task: str) -> int:
    """Questions per inference-pool shard of (model, task); features use the same shards.

    ``inference.pool.questions_per_shard`` when set; else the runtime bound (generation and
    feature caching both within ``cluster.max_job_hours``), at most ``cluster.max_shard_responses``
    responses per shard (the feature job holds every response's states in memory)."""
    fixed = config["inference"]["pool"]["questions_per_shard"]
    if fixed is not None:
        return int(fixed)
    rm = runtime.RuntimeModel.from_config(config)
    cap = max(1, rm.max_shard_responses // pool_setting(config, task, "n"))
    return runtime.questions_per_shard(
        max(runtime.pool_question_hours(config, model, task)),
        rm.max_job_hours,
        overhead_hours=rm.overhead_hours,
        cap=cap,
    )


def pool_n_shards(config: dict, model: str, task: str) -> int:
    return n_shards(pool_questions(config, task), pool_shard_size(config, model, task))


def pool_shard_questions(config: dict, model: str, task: str, shard: int) -> int:
    """Questions of shard ``shard`` of the (model, task) pools."""
    return shard_sizes(pool_questions(config, task), pool_shard_size(config, model, task))[shard]


# ------------------------------------------------------------------------------------------------
# token level
# ------------------------------------------------------------------------------------------------
def token_level_on(config: dict) -> bool:
    return bool(config["token_level"]["model"] and config["token_level"]["task"])


def token_level_methods(config: dict) -> list[str]:
    """vanilla, then one method per beta (named beta<value>)."""
    return ["vanilla"] + [method_name(b) for b in config["token_level"]["betas"]]


def token_level_shard_sizes(config: dict) -> list[int]:
    """(question, seed) runs in each shard of one method."""
    tl = config["token_level"]
    n_runs, per = tl["n_questions"] * tl["seeds"], tl["runs_per_shard"]
    return [
        min(per, n_runs - i * per) for i in range(run_shards(tl["n_questions"], tl["seeds"], per))
    ]


def token_level_responses_per_job(config: dict, method: str) -> int:
    """Responses of each run that one ``token_level_run`` job generates (at most ``k_max``).

    ``token_level.responses_per_job`` when set; else the largest number whose estimated job (a
    full shard, every run using all its responses) stays within ``cluster.max_job_hours``,
    evened out over the parts (1,024 responses of which 300 fit: 4 parts of 256)."""
    tl = config["token_level"]
    k_max, fixed = tl["k_max"], tl.get("responses_per_job")
    if runtime.hf_vanilla(config, method):
        return k_max
    if fixed is not None:
        return min(int(fixed), k_max)
    rm = runtime.RuntimeModel.from_config(config)
    full = min(tl["runs_per_shard"], tl["n_questions"] * tl["seeds"])
    try:
        hours = runtime.run_response_hours(config, method, full)
    except runtime.JobModelError as e:
        raise runtime.JobModelError(
            f"token_level.responses_per_job is null, so the runtime model sizes the token-level "
            f"jobs, but: {e}. Or set token_level.responses_per_job (k_max: one job per run)"
        ) from e
    per = runtime.questions_per_shard(
        hours,
        rm.max_job_hours,
        overhead_hours=rm.overhead_hours,
        cap=k_max,
    )
    return -(-k_max // -(-k_max // per))


def token_level_parts(config: dict, method: str) -> int:
    """Jobs per shard of ``method``: each continues its runs from the previous one's state."""
    tl = config["token_level"]
    return -(-tl["k_max"] // token_level_responses_per_job(config, method))


def token_level_part_files(config: dict, model: str, task: str, method: str, name: str) -> dict:
    """The job behind ``results/token_level/<model>/<task>/<method>/shard-<name>.parquet``.

    ``name`` is ``<s>`` for the last part of shard s (its file holds every response of the
    shard: the summary reads these) or ``<s>.part-<p>`` for an earlier part p. Returns ``shard``,
    ``part``, ``responses_per_job``, the previous part's ``state`` file (None for part 0), the
    earlier parts' ``rows`` files (the last part only) and ``cli``, their command-line options.
    """
    m = re.fullmatch(r"(\d+)(?:\.part-(\d+))?", name)
    parts = token_level_parts(config, method)
    if m is None or (m[2] is not None and int(m[2]) >= parts - 1):
        raise ValueError(
            f"no token-level job shard-{name} of {method}: {parts} part(s) per shard, "
            f"named shard-<s>.part-<p> for p < {parts - 1} and shard-<s> for the last"
        )
    shard = int(m[1])
    part = parts - 1 if m[2] is None else int(m[2])
    base = f"results/token_level/{model}/{task}/{method}/shard-{shard}"
    state = f"{base}.part-{part - 1}.state.pt" if part else None
    rows = [f"{base}.part-{p}.parquet" for p in range(parts - 1)] if part == parts - 1 else []
    cli = (f"--state-in {state} " if state else "") + (
        f"--rows-in {' '.join(rows)}" if rows else ""
    )
    return {
        "shard": shard,
        "part": part,
        "parts": parts,
        "state": state,
        "rows": rows,
        "responses_per_job": token_level_responses_per_job(config, method),
        "cli": cli.strip(),
    }


# ------------------------------------------------------------------------------------------------
# RL
# ------------------------------------------------------------------------------------------------
def rl_on(config: dict) -> bool:
    return bool(config["rl"]["model"] and config["rl"]["tasks"])


def rl_splits(config: dict, task: str) -> tuple[str, str, str, str]:
    """(dev_task, dev_split, test_task, test_split) of RL training on ``task``."""
    from repexp.rl.settings import splits_of, task_settings

    return splits_of(task, task_settings(config["rl"], task))


def rl_split_questions(config: dict, task: str, split: str) -> int:
    spec = config["tasks"][task]
    qids = spec["qids"] if split == "test" else None
    return expected_questions(task, spec["source"], split, spec["n_questions"], qids)


def rl_test_shard_size(config: dict, task: str) -> int:
    """Questions per test-pool shard of the runs trained on ``task``.

    With a fixed ``inference.pool.questions_per_shard``: shards of about as many responses as an
    inference-pool shard (as before). Else the runtime bound for the RL model on the test task."""
    pool, rl = config["inference"]["pool"], config["rl"]
    if pool["questions_per_shard"] is not None:
        return max(1, pool["questions_per_shard"] * pool["n"] // rl["test_samples"])
    rm = runtime.RuntimeModel.from_config(config)
    cap = max(1, rm.max_shard_responses // rl["test_samples"])
    return runtime.questions_per_shard(
        runtime.rl_test_question_hours(config, task),
        rm.max_job_hours,
        overhead_hours=rm.overhead_hours,
        cap=cap,
    )


def rl_test_questions(config: dict, task: str) -> int:
    """Questions of the test set of the runs trained on ``task``."""
    test_task, test_split = rl_splits(config, task)[2:]
    return rl_split_questions(config, test_task, test_split)


def rl_test_n_shards(config: dict, task: str) -> int:
    return n_shards(rl_test_questions(config, task), rl_test_shard_size(config, task))


def rl_test_shard_questions(config: dict, task: str, shard: int) -> int:
    """Questions of test-pool shard ``shard`` of the runs trained on ``task``."""
    return shard_sizes(rl_test_questions(config, task), rl_test_shard_size(config, task))[shard]


def gpus_per_job(config: dict, rule: str) -> int:
    """GPUs of one job of a GPU rule (:data:`repexp.runtime.GPU_RULES`): ``rl.gpus_per_run`` for
    ``rl_train`` (the rule asks for them), else 1 (the Slurm profile's ``gpu: 1``)."""
    if rule == "rl_train":
        return int(config["rl"].get("gpus_per_run") or 1)
    return 1 if rule in runtime.GPU_RULES else 0
