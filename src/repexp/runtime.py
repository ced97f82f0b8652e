"""The runtime model of the GPU jobs: the estimated hours of a job from its rule, wildcards, config.

No GPU was measured here: every number is an estimate, to be recalibrated from the ``tok/s`` lines
that ``generate_pool`` (``repexp.pools``) and ``cache_features`` (``repexp.features``) print. The
model's numbers are the ``cluster`` section of the config (config/README.md says where each one
comes from).

* Generation (vLLM, bf16, one GPU): ``cluster.tok_s[model]`` output tokens/s when given, else
  ``reference_tok_s * min(reference_params_b / params_b[model], max_speedup)`` (throughput falls
  with the parameter count; small models are limited by the scheduler, hence the cap).
* Response length: ``min(cluster.response_tokens[task], max_new_tokens)`` tokens on average.
* Forward passes (features, log-likelihoods, training): ``2 * params * tokens`` FLOPs
  (``6 * params * tokens`` forward + backward, times 4/3 with gradient checkpointing) at
  ``cluster.gpu_tflops``.
* Token-level decoding (transformers, the batched engine of ``repexp.tokenlevel.batch``): ``slots``
  runs advance one token per lockstep step; a step costs one single-sequence forward,
  ``cluster.hf_step_s``, plus per slot ``cluster.tl_slot_s`` (its sampling and float64 algebra)
  and the FLOPs of its query tokens (``cluster.tl_candidates`` candidates on a bonus step, 1 on
  a plain one) at ``cluster.gpu_tflops`` (:func:`token_level_step_s`).
* Every job pays ``cluster.overhead_minutes`` (model load, vLLM start-up, writing the shard).

The same model sizes the DAG where the config leaves it to the model (the shard sizes and token-
level parts of :mod:`repexp.dag`), and :func:`job_hours` estimates each GPU job of the DAG for the
job table (``python -m repexp.jobs``): one function per rule in :data:`ESTIMATES`. The jobs' time
requests (``runtime``) are the Slurm profile's (:func:`profile_runtime`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from repexp import dag

SLURM_PROFILE = Path(__file__).resolve().parents[2] / "profiles" / "slurm" / "profile.yaml"


class JobModelError(ValueError):
    """The runtime model lacks a number it needs; the message names the key to set."""


# ------------------------------------------------------------------------------------------------
# the model (pure)
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
# per stage: the hours of one unit of work (a question's pool, a run's response, a training run)
# ------------------------------------------------------------------------------------------------
def pool_question_hours(config: dict, model: str, task: str) -> tuple[float, float]:
    """Estimated (generation, feature-cache) hours of one question's pool, overhead excluded."""
    rm = RuntimeModel.from_config(config)
    n = dag.pool_setting(config, task, "n")
    length = rm.response_len(task, dag.pool_setting(config, task, "max_new_tokens"))
    gen = rm.generation_hours(model, n * length)
    feat = rm.forward_hours(model, n * (rm.prompt_tokens + length))
    return gen, feat


def rl_response_len(config: dict, task: str, length_task: str | None = None) -> float:
    """Expected response length under the run's `max_response_length` (`length_task`: whose
    typical length; default the training task)."""
    from repexp.rl.settings import task_settings

    cap = task_settings(config["rl"], task)["max_response_length"]
    return RuntimeModel.from_config(config).response_len(length_task or task, cap)


def rl_test_question_hours(config: dict, task: str) -> float:
    """Generation hours of one test question's ``rl.test_samples`` samples (runs trained on
    ``task``, sampled on its test task), overhead excluded."""
    rl = config["rl"]
    test_task = dag.rl_splits(config, task)[2]
    tokens = rl["test_samples"] * rl_response_len(config, task, test_task)
    return RuntimeModel.from_config(config).generation_hours(rl["model"], tokens)


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


def hf_vanilla(config: dict, method: str) -> bool:
    """Vanilla runs generated by transformers ``generate`` in batches of one run's responses
    (``vanilla_batch_size`` > 1) instead of the batched engine: whole runs, one part."""
    return method == "vanilla" and config["token_level"]["vanilla_batch_size"] > 1


def run_response_hours(config: dict, method: str, runs: int) -> float:
    """Hours for each of ``runs`` runs of one shard to generate one response: the runs share
    min(runs, slots) slots, in ceil(runs / slots) waves."""
    tl = config["token_level"]
    rm = RuntimeModel.from_config(config)
    length = rm.response_len(tl["task"], tl["max_new_tokens"])
    if hf_vanilla(config, method):  # `vanilla_batch_size` responses of one run per forward
        return runs * length * rm.step_s(tl["model"]) / tl["vanilla_batch_size"] / 3600.0
    slots = min(tl["slots"], runs)
    step = token_level_step_s(config, method != "vanilla", slots)
    return math.ceil(runs / slots) * length * step / 3600.0


def token_level_job_hours(config: dict, method: str, runs: int, part: int) -> float:
    """Estimated hours of part ``part`` of a shard of ``runs`` runs, every run using all of
    its responses (a run stops at its first correct one: an upper estimate)."""
    from repexp.tokenlevel.state import part_range

    tl = config["token_level"]
    rm = RuntimeModel.from_config(config)
    per_job = dag.token_level_responses_per_job(config, method)
    first, last = part_range(part, per_job, tl["k_max"])
    return rm.overhead_hours + (last - first + 1) * run_response_hours(config, method, runs)


def rl_train_hours(config: dict, task: str, method: str) -> float:
    """One training run on one GPU: ``max_steps`` steps of rollouts (vLLM), the policy update
    (forward + backward), the extra forwards (old log-probs when a step spans several updates;
    RepExp's base-model features; Unlikeliness' ranking) and the dev evaluations. Without the
    start-up overhead, the time budget and the GPUs of the job (:func:`rl_train_job_hours`)."""
    from repexp.rl.settings import task_settings

    rm = RuntimeModel.from_config(config)
    s = task_settings(config["rl"], task)
    model = config["rl"]["model"]
    length = rm.response_len(task, s["max_response_length"])
    rollouts = s["train_batch_prompts"] * s["group_size"]
    tokens = rollouts * (rm.prompt_tokens + length)
    generate = rm.generation_hours(model, rollouts * length)
    update = rm.forward_hours(model, tokens, 6.0) * (4 / 3 if s["gradient_checkpointing"] else 1.0)
    forwards = int(s["train_batch_prompts"] > s["mini_batch_prompts"])
    from repexp.rl.methods import method as rl_method  # the extra forwards of its reward

    forwards += rl_method(method).extra_forwards
    extra = forwards * rm.forward_hours(model, tokens)
    dev_t, dev_s = dag.rl_splits(config, task)[:2]
    dev_tokens = (
        dag.rl_split_questions(config, dev_t, dev_s)
        * s["dev_samples"]
        * rm.response_len(dev_t, s["max_response_length"])
    )
    dev = rm.generation_hours(model, dev_tokens)
    evals = s["max_steps"] // s["eval_every"] + 2  # step 0, every eval_every steps, the last step
    return s["max_steps"] * (generate + update + extra) + evals * dev


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


# ------------------------------------------------------------------------------------------------
# one job of the DAG: (rule, wildcards, config) -> (hours, hours without a time budget)
# ------------------------------------------------------------------------------------------------
def _generate_pool(config: dict, wc: Mapping[str, str]) -> tuple[float, float]:
    q = dag.pool_shard_questions(config, wc["model"], wc["task"], int(wc["shard"]))
    h = RuntimeModel.from_config(config).overhead_hours
    h += q * pool_question_hours(config, wc["model"], wc["task"])[0]
    return h, h


def _cache_features(config: dict, wc: Mapping[str, str]) -> tuple[float, float]:
    q = dag.pool_shard_questions(config, wc["model"], wc["task"], int(wc["shard"]))
    h = RuntimeModel.from_config(config).overhead_hours
    h += q * pool_question_hours(config, wc["model"], wc["task"])[1]
    return h, h


def _token_level_run(config: dict, wc: Mapping[str, str]) -> tuple[float, float]:
    job = dag.token_level_part_files(
        config, wc["model"], wc["task"], wc["tl_method"], wc["tl_shard"]
    )
    runs = dag.token_level_shard_sizes(config)[job["shard"]]
    h = token_level_job_hours(config, wc["tl_method"], runs, job["part"])
    return h, h


def _rl_train(config: dict, wc: Mapping[str, str]) -> tuple[float, float]:
    rm = RuntimeModel.from_config(config)
    return rl_train_job_hours(
        rl_train_hours(config, wc["task"], wc["method"]),
        dag.gpus_per_job(config, "rl_train"),
        config["rl"].get("max_hours"),
        rm.overhead_hours,
    )


def _rl_test_pool(config: dict, wc: Mapping[str, str]) -> tuple[float, float]:
    rm, rl = RuntimeModel.from_config(config), config["rl"]
    q = dag.rl_test_shard_questions(config, wc["task"], int(wc["shard"]))
    length = rl_response_len(config, wc["task"], dag.rl_splits(config, wc["task"])[2])
    h = rm.overhead_hours + rm.generation_hours(rl["model"], q * rl["test_samples"] * length)
    return h, h


def _rl_test_questions(config: dict, wc: Mapping[str, str]) -> tuple[float, float]:
    rm = RuntimeModel.from_config(config)
    test_t, test_s = dag.rl_splits(config, wc["task"])[2:]
    n = dag.rl_split_questions(config, test_t, test_s)
    length = rl_response_len(config, wc["task"], test_t)
    h = rm.overhead_hours + rm.forward_hours(config["rl"]["model"], n * (rm.prompt_tokens + length))
    return h, h


# The rules that run a model, each with its estimate: one function per rule. A new GPU rule adds
# its entry here (and its `gpu:` in profiles/slurm/profile.yaml).
ESTIMATES: dict[str, Callable[[dict, Mapping[str, str]], tuple[float, float]]] = {
    "generate_pool": _generate_pool,
    "cache_features": _cache_features,
    "token_level_run": _token_level_run,
    "rl_train": _rl_train,
    "rl_test_pool": _rl_test_pool,
    "rl_test_questions": _rl_test_questions,
}
GPU_RULES = tuple(ESTIMATES)


def job_hours(config: dict, rule: str, wildcards: Mapping[str, str]) -> tuple[float, float] | None:
    """(estimated hours, hours without the time budget) of one job of ``rule`` with these
    wildcards; None for a rule without a GPU estimate. Raises :class:`JobModelError` when the
    model lacks a number (``cluster.params_b``, ``cluster.response_tokens``)."""
    fn = ESTIMATES.get(rule)
    return None if fn is None else fn(config, wildcards)


# ------------------------------------------------------------------------------------------------
# time requests: the Slurm profile is their one source
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def profile_resources(path: str | Path = SLURM_PROFILE) -> dict[str, dict]:
    """``set-resources`` of a profile: {rule: {resource: value or expression}}."""
    import yaml

    path = Path(path)
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()).get("set-resources") or {}


def resource_value(value, attempt: int = 1):
    """A profile's resource value at ``attempt``: a number, or an expression in ``attempt``.

    >>> resource_value("270 * attempt", 2), resource_value(1)
    (540, 1)
    """
    if isinstance(value, str):
        return eval(value, {"__builtins__": {}}, {"attempt": int(attempt)})  # noqa: S307
    return value


def profile_runtime(rule: str, attempt: int = 1, path: str | Path = SLURM_PROFILE) -> int:
    """The ``runtime`` (minutes) of a job of ``rule`` at ``attempt``: the Slurm profile's
    ``set-resources`` entry, the one source of the time requests (the rules call it through
    ``workflow/rules/common.smk`` ``job_runtime``; on the cluster the profile sets it anyway)."""
    res = profile_resources(str(path)).get(rule) or {}
    if "runtime" not in res:
        raise KeyError(f"profiles/slurm/profile.yaml: no `runtime` under set-resources.{rule}")
    return int(resource_value(res["runtime"], attempt))
