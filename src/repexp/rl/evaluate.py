"""Evaluation of RL post-training (paper.md §3.5, §3.6, Table 3): from trained runs to small tables.

``repexp.rl.train`` writes, per (task, method, seed), the checkpoint with the best dev pass@1
(``best/``), ``best.json``, the dev curve ``dev.csv`` and the training log ``train_log.csv``.
The test set is then sampled with the pool machinery (``repexp.pools``, ``repexp.score``: τ = 1,
top-p = 1, ``rl.test_samples`` responses per question) from every best checkpoint and from the base
model (the "Base Model" curve). This module turns those pools into tables:

* per run, one row per test question (``questions`` command): n, c and, for the question's sample 0,
  its log-likelihood under the **base** model (the "beyond sharpening" analysis, paper.md §3.6);
* over all runs (``tables`` command): pass@k (mean over questions per seed, then mean ± SEM over
  seeds), the sample-efficiency factors, the dev curves, the training logs, the selected
  checkpoints, the log-likelihood table and the divergence of every method's run from GRPO's run of
  the same seed (:func:`divergence_table`: rollouts step by step, final weights);
* the hyper-parameter table (``hparams`` command), rendered from the configuration actually used.

The settings the workflow needs to build the DAG (a run's ``--settings``, its dev and test sets,
run names) live in :mod:`repexp.rl.settings` (re-exported here); the methods in
:mod:`repexp.rl.methods`.

CLI (rules ``rl_test_questions``, ``rl_tables``, ``rl_hparams``)::

    python -m repexp.rl.evaluate questions --base-model resources/models/m \\
        --pools P0 P1 --scores S0 S1 --task gsm8k --run grpo/seed41 \\
        --out results/rl/m/gsm8k/grpo/seed41/test/questions.parquet
    python -m repexp.rl.evaluate tables --questions Q1 Q2 ... \\
        --runs results/rl/m/gsm8k/grpo/seed41/done.json ... --out-dir results/tables
    python -m repexp.rl.evaluate hparams --rl '<rl section as JSON>' --model-spec '<JSON>' \\
        --out rl_hparams.csv
    python -m repexp.rl.evaluate divergence results/rl/m/arith/repexp/seed41 \\
        results/rl/m/arith/grpo/seed41
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from repexp import provenance
from repexp.atomic import atomic_path, write_parquet
from repexp.metrics import pass_at_k_curve
from repexp.parallel import start_cli
from repexp.rl.methods import BASE, METHODS, OURS, REFERENCE

# the DAG's settings live in repexp.rl.settings; re-exported here, where they used to be
from repexp.rl.settings import (  # noqa: F401
    GRID_KEYS,
    parse_run,
    run_name,
    splits_of,
    task_settings,
    train_settings,
)

log = logging.getLogger(__name__)

# what RepExp's sample efficiency is measured against: the base model and every other method
BASELINES = (BASE, *(m for m in METHODS if m != OURS))
METHOD_ORDER = (BASE, *METHODS)


# ------------------------------------------------------------------------------------------------
# checkpoint picking
# ------------------------------------------------------------------------------------------------
def pick_best(dev: pd.DataFrame) -> tuple[int, float]:
    """The checkpoint with the highest dev pass@1: ``(step, dev_pass1)``.

    As the authors' trainer: steps in order, a later step replaces the best only when it is
    strictly greater, so ties keep the earliest step; step 0 is the base model (when no checkpoint
    beats it, the base model is "best"). NaN values are skipped.

    >>> dev = {"step": [0, 10, 20, 30], "dev_pass1": [0.5, 0.6, 0.6, float("nan")]}
    >>> pick_best(pd.DataFrame(dev))
    (10, 0.6)
    """
    d = dev[["step", "dev_pass1"]].dropna().sort_values("step", kind="stable")
    if d.empty:
        raise ValueError("no finite dev pass@1 to pick a checkpoint from")
    best_step, best = None, -math.inf
    for step, value in zip(d["step"], d["dev_pass1"], strict=True):
        if value > best:
            best_step, best = int(step), float(value)
    return best_step, best


# ------------------------------------------------------------------------------------------------
# pass@k over seeds, sample efficiency
# ------------------------------------------------------------------------------------------------
def _method_key(method: pd.Series) -> pd.Series:
    order = {m: i for i, m in enumerate((BASE, *METHODS))}  # METHOD_ORDER, read at call time
    return method.map(lambda m: order.get(m, len(order)))


def passk_per_seed(questions: pd.DataFrame, ks: Sequence[int] | None = None) -> pd.DataFrame:
    """pass@k of each (task, method, seed): the unbiased estimator per question, mean over
    questions.

    ``questions`` has columns task, method, seed (NA for the base model), qid, n, c. k runs over
    ``ks`` (default 1, 2, 4, ... up to the smallest n of the run, and that n). Columns: task,
    method, seed, k, passk, questions.
    """
    from repexp.inference import pass_ks

    rows = []
    for (task, method, seed), g in questions.groupby(
        ["task", "method", "seed"], dropna=False, sort=True
    ):
        n_min = int(g["n"].min())
        kk = np.array([k for k in (ks or pass_ks(n_min)) if k <= n_min], dtype=np.int64)
        curve = np.mean(
            [pass_at_k_curve(int(n), int(c), kk) for n, c in zip(g["n"], g["c"], strict=True)],
            axis=0,
        )
        rows += [
            {
                "task": task,
                "method": method,
                "seed": seed,
                "k": int(k),
                "passk": float(p),
                "questions": len(g),
            }
            for k, p in zip(kk, curve, strict=True)
        ]
    out = pd.DataFrame(rows, columns=["task", "method", "seed", "k", "passk", "questions"])
    out["seed"] = out["seed"].astype("Int64")
    return out


def passk_table(questions: pd.DataFrame, ks: Sequence[int] | None = None) -> pd.DataFrame:
    """Test pass@k per (task, method, k): mean and standard error over seeds (Fig. 2).

    Per seed the mean over questions (:func:`passk_per_seed`); then ``mean`` = mean over seeds,
    ``se`` = sample standard deviation / sqrt(seeds) (NaN with a single seed, so always for the
    base model), ``seeds`` = how many seeds, ``questions`` = questions per seed (the largest).
    """
    per_seed = passk_per_seed(questions, ks)
    g = per_seed.groupby(["task", "method", "k"], sort=False)
    out = g.agg(
        mean=("passk", "mean"),
        sd=("passk", "std"),
        seeds=("passk", "size"),
        questions=("questions", "max"),
    ).reset_index()
    out["se"] = np.where(out["seeds"] > 1, out["sd"] / np.sqrt(out["seeds"]), np.nan)
    out = out.sort_values(
        ["task", "method", "k"], key=lambda s: _method_key(s) if s.name == "method" else s
    )
    return out[["task", "method", "k", "mean", "se", "seeds", "questions"]].reset_index(drop=True)


def efficiency_factor(ks, repexp, target: float, k_max: float | None = None) -> tuple[float, float]:
    """RepExp's test-time sample-efficiency factor against a baseline (paper.md §5): ``(k*, k_max /
    k*)``.

    k* is where RepExp's pass@k curve first reaches ``target`` (the baseline's pass@k_max),
    interpolated linearly in log k between the two k that bracket it:
    log k* = log k_{i-1} + (target - p_{i-1}) / (p_i - p_{i-1}) * (log k_i - log k_{i-1}).
    When RepExp already reaches the target at its smallest k, k* is that k (so the factor is a
    lower bound); when it never does, both are NaN. ``k_max`` defaults to the largest k.

    >>> k_star, factor = efficiency_factor([1, 2, 4, 8], [0.2, 0.4, 0.5, 0.6], 0.45)
    >>> # halfway between k = 2 and 4 in log k: sqrt(8); 8 / sqrt(8)
    >>> round(k_star, 6), round(factor, 6)
    (2.828427, 2.828427)
    """
    ks = np.asarray(ks, dtype=np.float64)
    p = np.asarray(repexp, dtype=np.float64)
    ok = np.isfinite(ks) & np.isfinite(p)
    order = np.argsort(ks[ok], kind="stable")
    ks, p = ks[ok][order], p[ok][order]
    if ks.size == 0 or not np.isfinite(target):
        return math.nan, math.nan
    k_max = float(ks.max() if k_max is None else k_max)
    hit = np.flatnonzero(p >= target)
    if hit.size == 0:
        return math.nan, math.nan
    i = int(hit[0])
    if i == 0:
        k_star = float(ks[0])
    else:
        lo, hi = math.log(ks[i - 1]), math.log(ks[i])
        frac = (target - p[i - 1]) / (p[i] - p[i - 1])
        k_star = math.exp(lo + frac * (hi - lo))
    return k_star, k_max / k_star


def efficiency_table(
    passk: pd.DataFrame, ours: str = OURS, baselines: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per task x baseline: how many times fewer samples RepExp needs to match the
    baseline's pass@k at the largest k both curves have (paper: 256 / k*). ``note`` says why a
    factor is missing (no curve, never reached, a baseline that solves nothing) or only a bound.
    ``baselines`` defaults to the base model and every other method of ``repexp.rl.methods``."""
    if baselines is None:
        baselines = (BASE, *(m for m in METHODS if m != ours))
    rows = []
    for task, t in passk.groupby("task", sort=False):
        mine = t[t["method"] == ours].sort_values("k")
        for b in baselines:
            theirs = t[t["method"] == b].sort_values("k")
            row = {
                "task": task,
                "baseline": b,
                "k_max": np.nan,
                "baseline_at_kmax": np.nan,
                "repexp_at_kmax": np.nan,
                "k_star": np.nan,
                "factor": np.nan,
                "reached": False,
            }
            if mine.empty or theirs.empty:
                row["note"] = f"no {ours if mine.empty else b} curve"
                rows.append(row)
                continue
            common = sorted(set(mine["k"]) & set(theirs["k"]))
            k_max = max(common) if common else None
            if k_max is None:
                row["note"] = "no common k"
                rows.append(row)
                continue
            target = float(theirs.loc[theirs["k"] == k_max, "mean"].iloc[0])
            row.update(
                k_max=k_max,
                baseline_at_kmax=target,
                repexp_at_kmax=float(mine.loc[mine["k"] == k_max, "mean"].iloc[0]),
            )
            if not target > 0:  # any curve "reaches" 0 at once: no factor to speak of
                row["note"] = f"{b} pass@{k_max} is {target:g}: no factor"
                rows.append(row)
                continue
            k_star, factor = efficiency_factor(mine["k"], mine["mean"], target, k_max)
            row.update(k_star=k_star, factor=factor, reached=bool(np.isfinite(factor)))
            if not np.isfinite(factor):
                row["note"] = f"not reached: {ours} pass@k stays below {b} pass@{k_max}"
            elif k_star <= mine["k"].min():
                row["note"] = f"reached at the smallest k ({int(k_star)}): a lower bound"
            else:
                row["note"] = ""
            rows.append(row)
    cols = [
        "task",
        "baseline",
        "k_max",
        "baseline_at_kmax",
        "repexp_at_kmax",
        "k_star",
        "factor",
        "reached",
        "note",
    ]
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------------------------------------
# log-likelihood under the base model (paper.md §3.6)
# ------------------------------------------------------------------------------------------------
def base_loglik(
    model,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    *,
    batch_tokens: int = 8192,
    head_rows: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Log-likelihood of each response given its prompt under ``model`` (a causal LM):
    ``(sum, mean per token)``, float64 arrays.

    sum_t log softmax(logits_{P+t-1})[y_t] over the T response tokens (an end-of-sequence token
    the response ended with is one of them): the model's own distribution, no temperature. The
    last-layer states come from one forward pass per batch (sequences packed by length into at most
    ``batch_tokens`` right-padded tokens); the LM head and the log-softmax are applied in float32
    to ``head_rows`` positions at a time, so a long response never materialises its full
    (T x vocabulary) logits at once. An empty response has sum 0 and mean NaN.
    """
    import torch

    from repexp.features import length_batches

    for attr in ("final_logit_softcapping", "logit_scale"):
        if getattr(model.config, attr, None) not in (None, 1, 1.0):
            raise NotImplementedError(
                f"{type(model).__name__} rescales its logits ({attr}); base_loglik "
                f"applies the plain LM head"
            )
    n = len(prompt_ids)
    if n != len(response_ids):
        raise ValueError("prompt_ids and response_ids differ in length")
    body, head = model.base_model, model.get_output_embeddings()
    weight = head.weight.float()
    bias = head.bias.float() if getattr(head, "bias", None) is not None else None
    device = weight.device
    total = np.zeros(n, dtype=np.float64)
    lengths = np.array([len(p) + len(r) for p, r in zip(prompt_ids, response_ids, strict=True)])
    with torch.inference_mode():
        for idx in length_batches(lengths, batch_tokens) if n else []:
            width = int(lengths[idx].max())
            ids = torch.zeros((len(idx), width), dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                seq = list(prompt_ids[i]) + list(response_ids[i])
                ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, : len(seq)] = 1
            h = body(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            for row, i in enumerate(idx):
                p, t = len(prompt_ids[i]), len(response_ids[i])
                if t == 0:
                    continue
                if p == 0:
                    raise ValueError(
                        f"response {i} has no prompt: its first token has no prediction"
                    )
                states = h[
                    row, p - 1 : p + t - 1
                ]  # the state before each response token predicts it
                target = torch.tensor(list(response_ids[i]), dtype=torch.long, device=device)
                acc = 0.0
                for j in range(0, t, head_rows):
                    logits = torch.nn.functional.linear(
                        states[j : j + head_rows].float(), weight, bias
                    )
                    lp = torch.log_softmax(logits, dim=-1).gather(
                        1, target[j : j + head_rows, None]
                    )
                    acc += float(lp.double().sum())
                total[i] = acc
    count = np.array([len(r) for r in response_ids], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return total, mean


def run_questions(pool: pd.DataFrame, scores: pd.DataFrame, *, task: str, run: str) -> pd.DataFrame:
    """One row per test question of one evaluated policy: ``n`` responses, ``c`` correct, and
    sample 0's length, finish reason, correctness and log-probability under the policy that
    sampled it (``policy_logprob``). Rows in pool order."""
    method, seed = parse_run(run)
    merged = pool.merge(
        scores[["qid", "sample", "correct"]],
        on=["qid", "sample"],
        how="left",
        validate="one_to_one",
    )
    if merged["correct"].isna().any():
        bad = merged[merged["correct"].isna()].iloc[0]
        raise ValueError(
            f"no score for question {bad.qid} sample {bad['sample']}: pools and scores are out of "
            "step"
        )
    merged["correct"] = merged["correct"].astype(bool)
    counts = merged.groupby("qid", sort=False)["correct"].agg(n="size", c="sum").reset_index()
    first = merged[merged["sample"] == 0].set_index("qid")
    missing = set(counts["qid"]) - set(first.index)
    if missing:
        raise ValueError(f"{len(missing)} question(s) have no sample 0, e.g. {sorted(missing)[:3]}")
    first = first.loc[counts["qid"]]
    out = counts.assign(
        task=task,
        method=method,
        seed=seed,
        n_tokens=first["n_tokens"].to_numpy(),
        finish_reason=first["finish_reason"].to_numpy(),
        correct=first["correct"].to_numpy(),
        policy_logprob=first["logprob"].to_numpy(),
    )
    out["seed"] = out["seed"].astype("Int64")
    out["c"] = out["c"].astype(int)
    return out[
        [
            "task",
            "method",
            "seed",
            "qid",
            "n",
            "c",
            "n_tokens",
            "finish_reason",
            "correct",
            "policy_logprob",
        ]
    ]


# ------------------------------------------------------------------------------------------------
# the hyper-parameter table (Table 3)
# ------------------------------------------------------------------------------------------------
COMMON = "GRPO (all methods)"
HPARAMS = [  # (section, key in the task's settings, label); "@..." are derived rows
    (COMMON, "model", "base model (initial policy; RepExp's feature model)"),
    (COMMON, "group_size", "rollouts per prompt (group size)"),
    (COMMON, "train_batch_prompts", "prompts per training step"),
    (COMMON, "mini_batch_prompts", "prompts per mini-batch (policy update)"),
    (COMMON, "ppo_epochs", "epochs per training step"),
    (COMMON, "micro_batch_size", "micro-batch size (sequences per device)"),
    (COMMON, "learning_rate", "learning rate (AdamW, constant, no warm-up)"),
    (COMMON, "weight_decay", "weight decay"),
    (COMMON, "max_grad_norm", "gradient clipping (max norm)"),
    (COMMON, "clip_ratio", "PPO clip ratio"),
    (COMMON, "kl_coef", "KL loss coefficient"),
    (COMMON, "entropy_coef", "entropy coefficient"),
    (COMMON, "loss_type", "loss aggregation (TRL loss_type)"),
    (COMMON, "adv_eps", "advantage ε: (r − group mean) / (group std + ε)"),
    (COMMON, "temperature", "rollout temperature"),
    (COMMON, "max_prompt_length", "max prompt length (tokens)"),
    (COMMON, "max_response_length", "max response length (tokens)"),
    (COMMON, "max_steps", "max training steps"),
    (COMMON, "max_hours", "time budget (hours of training; stops at the next step)"),
    (COMMON, "gpus_per_run", "GPUs (training processes) per run"),
    (COMMON, "accelerate_config", "accelerate config (FSDP) of a multi-GPU run"),
    (COMMON, "eval_every", "dev evaluation every (steps)"),
    (COMMON, "dev_samples", "dev samples per question (pass@1)"),
    (COMMON, "gradient_checkpointing", "gradient checkpointing"),
    (COMMON, "use_vllm", "vLLM rollouts"),
    (COMMON, "vllm_gpu_memory_utilization", "vLLM GPU memory fraction"),
    (COMMON, "vllm_tensor_parallel_size", "vLLM tensor parallelism"),
    (COMMON, "vllm_enable_sleep_mode", "vLLM sleep mode (memory freed between rollouts)"),
    (COMMON, "reward_workers", "verifier processes"),
    ("Evaluation", "@dev", "dev set (checkpoint selection)"),
    ("Evaluation", "@test", "test set"),
    ("Evaluation", "test_samples", "test samples per question (τ = 1, top-p = 1)"),
    ("Evaluation", "seeds", "seeds"),
    ("Unlikeliness", "unlikeliness.beta_rank", "rank penalty β_rank"),
    ("RepExp", "repexp.beta", "bonus weight β"),
    ("RepExp", "repexp.lam", "ridge λ"),
    ("RepExp", "repexp.proj_dim", "sparse random projection dimension"),
    ("RepExp", "repexp.zero_if_none_correct", "no bonus for a prompt with no correct rollout"),
    ("RepExp", "repexp.feature_dtype", "dtype of the feature model (the frozen base model)"),
    ("RepExp", "repexp.offload_base", "frozen base model on the host between reward calls"),
]
_NOT_ROWS = {"tasks", "methods", "task_overrides", "dev_task"}


def _flat(settings: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in settings.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def run_settings(rl: dict, task: str) -> dict:
    """Every setting a training run on ``task`` uses: its ``--settings`` (:func:`train_settings`)
    completed with the trainer's own defaults (``repexp.rl.trainer.RLSettings``), plus the grid
    keys that shape the evaluation (model, seeds, test samples)."""
    from repexp.rl.trainer import RLSettings

    settings = RLSettings.from_dict(train_settings(rl, task)).to_dict()
    settings.update({k: rl[k] for k in ("model", "seeds", "test_samples") if k in rl})
    return settings


def hparams_table(rl: dict, model_spec: dict | None = None) -> pd.DataFrame:
    """Table 3: one row per hyper-parameter (section, parameter, key) and one column per RL task
    with the value that task's runs use (:func:`run_settings`: overrides applied, the trainer's
    defaults filled in). Settings the table has no label for (added later) are listed under
    "other (config key)" with their key, so the table always shows every setting of the runs."""
    tasks = list(rl.get("tasks") or [])
    columns = tasks or ["(no task)"]
    flat, splits = {}, {}
    for t in columns:
        s = run_settings(rl, t) if tasks else copy.deepcopy(rl)
        flat[t] = _flat({k: v for k, v in s.items() if k not in _NOT_ROWS})
        if tasks:
            dev_task, dev_split, test_task, test_split = splits_of(t, s)
            splits[t] = {"@dev": f"{dev_task}/{dev_split}", "@test": f"{test_task}/{test_split}"}
        else:
            splits[t] = {"@dev": "-", "@test": "-"}
    model = rl.get("model")
    if model and model_spec:
        model = model_spec.get("repo_id") or f"{model} ({model_spec.get('source', '?')})"
    rows, known = [], set()
    for section, key, label in HPARAMS:
        known.add(key)
        if not key.startswith("@") and key != "model" and all(key not in flat[t] for t in columns):
            continue  # a setting this version of the trainer does not have
        row = {"section": section, "parameter": label, "key": key}
        for t in columns:
            if key.startswith("@"):
                row[t] = splits[t][key]
            elif key == "model":
                row[t] = _fmt(model)
            else:
                row[t] = _fmt(flat[t].get(key))
        rows.append(row)
    extra = sorted({k for t in columns for k in flat[t]} - known)
    for key in extra:
        rows.append(
            {
                "section": "other (config key)",
                "parameter": key,
                "key": key,
                **{t: _fmt(flat[t].get(key)) for t in columns},
            }
        )
    return pd.DataFrame(rows, columns=["section", "parameter", "key", *columns])


# ------------------------------------------------------------------------------------------------
# divergence of two runs of one seed (RepExp or Unlikeliness against GRPO)
# ------------------------------------------------------------------------------------------------
SKETCH_SIZE = 2**18  # buckets of a run's weights_sketch.npz (2 MiB per vector)
_SKETCH_CHUNK = 1 << 22  # coordinates hashed at a time


def rollout_divergence(a, b) -> dict:
    """How far the rollouts of two runs (``rollouts.csv`` tables or paths, same seed) drift apart.

    Rollouts are compared position by position within each step both runs have (the same seed
    draws the same prompts in the same order, and generation is seeded alike, so runs agree until
    their policies differ): ``steps`` compared, ``steps_differing`` (any rollout differs),
    ``first_step_differing`` (None if none), ``rollouts``, ``rollouts_differing`` and their fraction
    ``frac_rollouts_differing``; ``per_step``: one row per step (``step``, ``rollouts``,
    ``differing``).
    """
    ta, tb = (pd.read_csv(x) if isinstance(x, str | Path) else x for x in (a, b))
    both = ta.merge(tb, on="step", suffixes=("_a", "_b")).sort_values("step")
    rows = []
    for step, ha, hb in zip(both["step"], both["hashes_a"], both["hashes_b"], strict=True):
        ha, hb = str(ha).split(), str(hb).split()
        n = max(len(ha), len(hb))
        same = sum(x == y for x, y in zip(ha, hb, strict=False))
        rows.append({"step": int(step), "rollouts": n, "differing": n - same})
    per_step = pd.DataFrame(rows, columns=["step", "rollouts", "differing"])
    differing = per_step[per_step["differing"] > 0]
    total = int(per_step["rollouts"].sum())
    return {
        "steps": len(per_step),
        "steps_differing": len(differing),
        "first_step_differing": int(differing["step"].iloc[0]) if len(differing) else None,
        "rollouts": total,
        "rollouts_differing": int(per_step["differing"].sum()),
        "frac_rollouts_differing": float(per_step["differing"].sum() / total)
        if total
        else float("nan"),
        "per_step": per_step,
    }


def _safetensors_files(model_dir: Path) -> list[Path]:
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir} has no *.safetensors weights")
    return files


def weight_sketch(final_dir, base_dir, size: int | None = SKETCH_SIZE, seed: int = 0) -> dict:
    """CountSketches of the weights of ``final_dir`` (a trained policy) and ``base_dir`` (its
    initial model): ``{"names", "size", "seed", "final", "base"}``.

    Over the tensors both hold (same name and shape), coordinate i of tensor t goes to bucket h(i)
    with sign σ(i) (drawn from a generator seeded by ``seed`` and t's name, so every run of a base
    model hashes alike): S(x)_j = Σ_{h(i) = j} σ(i)·x_i. The sketch is linear and
    E‖S(x) − S(y)‖² = ‖x − y‖², with a relative standard deviation of at most √(2/size) (0.3% for
    2^18 buckets) whatever the difference looks like (sparse embedding rows included), so two runs'
    sketches give the L2 distance of their final weights. ``size=None``: the weights themselves
    (exact; memory of the whole model).
    """
    import zlib

    from safetensors import safe_open

    def index(model_dir):
        out = {}
        for f in _safetensors_files(model_dir):
            with safe_open(f, framework="pt") as h:
                for k in h.keys():
                    out[k] = (f, tuple(h.get_slice(k).get_shape()))
        return out

    def rows(entry, name, start, stop):  # rows [start, stop) of a tensor, flattened, float64
        with safe_open(entry[0], framework="pt") as h:
            sl = h.get_slice(name)
            t = sl[start:stop] if len(entry[1]) else h.get_tensor(name)
            return t.double().reshape(-1).numpy()

    fin, base = index(final_dir), index(base_dir)
    names = sorted(k for k in fin if k in base and fin[k][1] == base[k][1])
    if not names:
        raise ValueError(f"{final_dir} and {base_dir} share no weight tensor (name and shape)")
    out = (
        {"final": [], "base": []}
        if size is None
        else {"final": np.zeros(size), "base": np.zeros(size)}
    )
    for k in names:
        shape = fin[k][1]
        n_rows = shape[0] if shape else 1
        per_row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        step = max(1, _SKETCH_CHUNK // per_row)
        rng = np.random.default_rng([seed, zlib.crc32(k.encode())])
        for start in range(0, n_rows, step):
            stop = min(n_rows, start + step)
            x = {"final": rows(fin[k], k, start, stop), "base": rows(base[k], k, start, stop)}
            if size is None:
                for key in out:
                    out[key].append(x[key])
                continue
            bits = rng.integers(
                0, 2**32, len(x["final"]), dtype=np.uint64
            )  # 32 random bits per coordinate
            bucket = bits % size  # (nearly uniform: size is far below 2^32)
            sign = ((bits >> np.uint64(31)) & np.uint64(1)).astype(np.float64) * 2.0 - 1.0
            for key in out:
                out[key] += np.bincount(bucket, weights=sign * x[key], minlength=size)
    if size is None:
        out = {key: np.concatenate(v) for key, v in out.items()}
    return {
        "names": np.array(names),
        "size": np.int64(-1 if size is None else size),
        "seed": np.int64(seed),
        **out,
    }


def write_weight_sketch(final_dir, base_dir, out, **kw) -> None:
    sketch = weight_sketch(final_dir, base_dir, **kw)
    with atomic_path(Path(out)) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **sketch)


def weight_divergence(a, b) -> dict:
    """The L2 distance of two runs' final weights from their sketches (:func:`weight_sketch`; dicts
    or ``weights_sketch.npz`` paths of runs from one base model): ``l2`` = ‖a − b‖, ``rel_update`` =
    ‖a − b‖ / ‖b − base‖ (against the update of run b, e.g. GRPO), ``rel_weights`` = ‖a − b‖ / ‖b‖,
    and each run's update from the base, ``update_a``, ``update_b``."""
    sa, sb = (
        {k: v for k, v in np.load(x).items()} if isinstance(x, str | Path) else x for x in (a, b)
    )
    for key in ("names", "size", "seed"):
        if not np.array_equal(sa[key], sb[key]):
            raise ValueError(
                f"the two weight sketches differ in {key!r}: not the same model and sketch"
            )
    if not np.array_equal(sa["base"], sb["base"]):
        raise ValueError("the two runs started from different base weights")

    def norm(x):
        return float(np.sqrt(np.sum(x * x)))

    d = norm(sa["final"] - sb["final"])
    ua, ub = norm(sa["final"] - sa["base"]), norm(sb["final"] - sb["base"])
    return {
        "l2": d,
        "rel_update": d / ub if ub > 0 else float("nan"),
        "rel_weights": d / norm(sb["final"]),
        "update_a": ua,
        "update_b": ub,
    }


DIVERGENCE_COLUMNS = [
    "task",
    "seed",
    "method",
    "versus",
    "steps",
    "steps_differing",
    "first_step_differing",
    "rollouts",
    "rollouts_differing",
    "frac_rollouts_differing",
    "weights_l2",
    "weights_rel_update",
    "weights_rel_weights",
    "update_l2",
    "versus_update_l2",
]


def divergence_table(run_dirs: Sequence[str | Path], versus: str = REFERENCE) -> pd.DataFrame:
    """One row per run of another method than ``versus`` that has a ``versus`` run of the same task
    and seed: :func:`rollout_divergence` and :func:`weight_divergence` of the two (NaN where a run
    lacks ``rollouts.csv`` / ``weights_sketch.npz``)."""
    runs = {}
    for d in map(Path, run_dirs):
        best = json.loads((d / "best.json").read_text())
        runs[(best["task"], int(best["seed"]), best["method"])] = d
    rows = []
    for (task, seed, method), d in sorted(runs.items()):
        ref = runs.get((task, seed, versus))
        if method == versus or ref is None:
            continue
        row = {"task": task, "seed": seed, "method": method, "versus": versus}
        if (d / "rollouts.csv").is_file() and (ref / "rollouts.csv").is_file():
            r = rollout_divergence(d / "rollouts.csv", ref / "rollouts.csv")
            row.update({k: v for k, v in r.items() if k != "per_step"})
        if (d / "weights_sketch.npz").is_file() and (ref / "weights_sketch.npz").is_file():
            w = weight_divergence(d / "weights_sketch.npz", ref / "weights_sketch.npz")
            row.update(
                {
                    "weights_l2": w["l2"],
                    "weights_rel_update": w["rel_update"],
                    "weights_rel_weights": w["rel_weights"],
                    "update_l2": w["update_a"],
                    "versus_update_l2": w["update_b"],
                }
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=DIVERGENCE_COLUMNS)


SUMMARY_COLUMNS = [
    "task",
    "method",
    "seed",
    "dev_pass1_step0",
    "dev_pass1_best",
    "best_step",
    "groups_all_correct",
    "groups_reordered",
    "shaping_share",
    "test_pass1",
    "test_passk",
    "k",
    "frac_rollouts_differing",
    "weights_rel_update",
]


def summary_table(
    best: pd.DataFrame, train: pd.DataFrame, passk: pd.DataFrame, divergence: pd.DataFrame
) -> pd.DataFrame:
    """One row per training run (and the base model): what the RL stage did, from its tables.

    Per run: dev pass@1 at step 0 and at the selected checkpoint (``rl_best``); the means over the
    training steps of the fraction of all-correct groups, of groups whose advantage order the
    shaping changed and of the shaping's share of mean |advantage| (``rl_train``); test pass@1
    and pass@k at the largest k (``rl_passk``: the mean over the method's seeds); and how far its
    rollouts and final weights drifted from GRPO's run of the same seed (``rl_divergence``; NaN
    for GRPO itself).

    >>> best = pd.DataFrame({"task": ["t"], "method": ["repexp"], "seed": [1], "step": [4],
    ...                      "dev_pass1": [0.7], "base_dev_pass1": [0.6]})
    >>> train = pd.DataFrame({"task": "t", "method": "repexp", "seed": 1, "step": [1, 2],
    ...     "groups_all_correct": [0.5, 0.0], "groups_reordered": [0.5, 0.0],
    ...     "shaping_share": [0.2, 0.0]})
    >>> passk = pd.DataFrame({"task": "t", "method": ["base", "base", "repexp", "repexp"],
    ...     "k": [1, 8] * 2, "mean": [0.5, 0.9, 0.6, 1.0]})
    >>> div = pd.DataFrame({"task": ["t"], "seed": [1], "method": ["repexp"],
    ...     "frac_rollouts_differing": [0.75], "weights_rel_update": [0.3]})
    >>> row = summary_table(best, train, passk, div).set_index("method").loc["repexp"]
    >>> cols = ["dev_pass1_step0", "groups_all_correct", "test_passk", "frac_rollouts_differing"]
    >>> [float(row[c]) for c in cols]
    [0.6, 0.25, 1.0, 0.75]
    """
    keys = ["task", "method", "seed"]
    rows = []
    kmax = int(passk["k"].max()) if len(passk) else np.nan
    for _, b in best.iterrows():
        t = train[
            (train["task"] == b["task"])
            & (train["method"] == b["method"])
            & (train["seed"] == b["seed"])
        ]
        p = passk[(passk["task"] == b["task"]) & (passk["method"] == b["method"])]
        p = p.set_index("k")["mean"]
        d = divergence[
            (divergence["task"] == b["task"])
            & (divergence["method"] == b["method"])
            & (divergence["seed"] == b["seed"])
        ]
        rows.append(
            {
                **{k: b[k] for k in keys},
                "dev_pass1_step0": b["base_dev_pass1"],
                "dev_pass1_best": b["dev_pass1"],
                "best_step": b["step"],
                **{
                    c: float(t[c].mean()) if c in t and len(t) else np.nan
                    for c in ("groups_all_correct", "groups_reordered", "shaping_share")
                },
                "test_pass1": float(p.get(1, np.nan)),
                "test_passk": float(p.get(kmax, np.nan)),
                "k": kmax,
                "frac_rollouts_differing": float(d["frac_rollouts_differing"].iloc[0])
                if len(d)
                else np.nan,
                "weights_rel_update": float(d["weights_rel_update"].iloc[0]) if len(d) else np.nan,
            }
        )
    base = passk[passk["method"] == BASE]
    for task, g in base.groupby("task"):
        p = g.set_index("k")["mean"]
        rows.append(
            {
                "task": task,
                "method": BASE,
                "seed": pd.NA,
                "test_pass1": float(p.get(1, np.nan)),
                "test_passk": float(p.get(kmax, np.nan)),
                "k": kmax,
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _cmd_questions(a) -> int:
    import torch

    from repexp.models import load_model

    if a.threads:
        from repexp.parallel import cap_threads

        cap_threads(a.threads)  # torch, BLAS and OpenMP threads = the rule's threads
    t0 = time.perf_counter()
    pool = pd.concat([pd.read_parquet(p) for p in a.pools], ignore_index=True)
    scores = pd.concat([pd.read_parquet(s) for s in a.scores], ignore_index=True)
    out = run_questions(pool, scores, task=a.task, run=a.run)
    first = pool[pool["sample"] == 0].set_index("qid").loc[out["qid"]]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(a.base_model, dtype=a.dtype, device=device)
    total, mean = base_loglik(
        model, list(first["prompt_ids"]), list(first["response_ids"]), batch_tokens=a.batch_tokens
    )
    out["loglik_sum"], out["loglik_mean"] = total, mean
    write_parquet(out, a.out, task=a.task, run=a.run, base_model=str(a.base_model))
    log.info(
        "%s %s: %d questions, pass@1 %.3f; base-model log-likelihood of sample 0: mean %.2f "
        "(%.3f per token) in %.1fs",
        a.task,
        a.run,
        len(out),
        float((out["c"] / out["n"]).mean()),
        float(np.nanmean(total)),
        float(np.nanmean(mean)),
        time.perf_counter() - t0,
    )
    return 0


def read_run(done: str | Path) -> dict:
    """A finished training run (the folder of its ``done.json``): identity, best checkpoint,
    logs."""
    d = Path(done).parent
    best = json.loads((d / "best.json").read_text())
    keys = {"task": best["task"], "method": best["method"], "seed": int(best["seed"])}
    dev = pd.read_csv(d / "dev.csv")
    train = pd.read_csv(d / "train_log.csv")
    step, pass1 = pick_best(dev)
    if step != int(best["step"]):
        log.warning(
            "%s: best.json says step %s, dev.csv's best (strictly greater) is step %d",
            d,
            best["step"],
            step,
        )
    base = dev.loc[dev["step"] == 0, "dev_pass1"]
    summary = {
        **keys,
        "step": int(best["step"]),
        "dev_pass1": float(best["dev_pass1"]),
        "base_dev_pass1": float(base.iloc[0]) if len(base) else np.nan,
        "steps_trained": int(train["step"].max()) if len(train) else 0,
        "agrees_with_dev_csv": step == int(best["step"]),
    }
    return {
        "keys": keys,
        "best": summary,
        "dev": dev.assign(**keys, best=dev["step"] == int(best["step"])),
        "train": train.assign(**keys),
    }


def _front(df: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    return df[[*cols, *[c for c in df.columns if c not in cols]]]


def _cmd_tables(a) -> int:
    out = Path(a.out_dir)
    questions = pd.concat([pd.read_parquet(q) for q in a.questions], ignore_index=True)
    questions["seed"] = questions["seed"].astype("Int64")
    passk = passk_table(questions)
    eff = efficiency_table(passk)
    runs = [read_run(r) for r in a.runs]
    keys = ["task", "method", "seed"]
    best = pd.DataFrame([r["best"] for r in runs])
    dev = (
        pd.concat([r["dev"] for r in runs], ignore_index=True)
        if runs
        else pd.DataFrame(columns=[*keys, "step"])
    )
    train = (
        pd.concat([r["train"] for r in runs], ignore_index=True)
        if runs
        else pd.DataFrame(columns=[*keys, "step"])
    )
    loglik = questions[
        [
            *keys,
            "qid",
            "n_tokens",
            "finish_reason",
            "correct",
            "policy_logprob",
            "loglik_sum",
            "loglik_mean",
        ]
    ]
    prov = provenance.from_cli(a.provenance)
    _write_csv(provenance.stamp(passk, prov), out / "rl_passk.csv")
    _write_csv(provenance.stamp(eff, prov), out / "rl_efficiency.csv")
    _write_csv(provenance.stamp(_front(dev, keys), prov), out / "rl_dev.csv")
    _write_csv(provenance.stamp(_front(train, keys), prov), out / "rl_train.csv")
    _write_csv(provenance.stamp(best, prov), out / "rl_best.csv")
    write_parquet(provenance.stamp(loglik.reset_index(drop=True), prov), out / "rl_loglik.parquet")
    div = divergence_table([Path(r).parent for r in a.runs])
    _write_csv(provenance.stamp(div, prov), out / "rl_divergence.csv")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        top = passk[passk["k"].isin([1, passk["k"].max()])] if len(passk) else passk
        log.info("test pass@k:\n%s", top.round(4).to_string(index=False))
        log.info("sample efficiency of RepExp:\n%s", eff.round(3).to_string(index=False))
        log.info("divergence from GRPO (same seed):\n%s", div.round(4).to_string(index=False))
    return 0


def _cmd_summary(a) -> int:
    """Print :func:`summary_table` of a results/tables folder."""
    d = Path(a.tables_dir)
    missing = [
        f"rl_{n}.csv"
        for n in ("best", "train", "passk", "divergence")
        if not (d / f"rl_{n}.csv").is_file()
    ]
    if missing:
        log.error(
            "%s has no %s: run the RL stage first (snakemake results/tables/rl_passk.csv)",
            d,
            ", ".join(missing),
        )
        return 2
    table = summary_table(
        *(
            provenance.strip(pd.read_csv(d / f"rl_{name}.csv"))
            for name in ("best", "train", "passk", "divergence")
        )
    )
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table.round(4).to_string(index=False))
    return 0


def _cmd_divergence(a) -> int:
    """Print how far run A drifted from run B (same seed): rollouts step by step and final
    weights."""
    da, db = Path(a.run_a), Path(a.run_b)
    r = rollout_divergence(da / "rollouts.csv", db / "rollouts.csv")
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(r.pop("per_step").to_string(index=False))
    print(json.dumps(r, indent=2))
    if (da / "weights_sketch.npz").is_file() and (db / "weights_sketch.npz").is_file():
        print(
            json.dumps(
                weight_divergence(da / "weights_sketch.npz", db / "weights_sketch.npz"), indent=2
            )
        )
    return 0


def _cmd_hparams(a) -> int:
    table = hparams_table(json.loads(a.rl), json.loads(a.model_spec) if a.model_spec else None)
    # a key/value table: the provenance as rows of section "provenance", so its columns stay the
    # tasks
    _write_csv(provenance.stamp_rows(table, provenance.from_cli(a.provenance)), Path(a.out))
    with pd.option_context(
        "display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60
    ):
        log.info("RL hyper-parameters:\n%s", table.drop(columns="key").to_string(index=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m repexp.rl.evaluate", description=__doc__.split("\n")[0]
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("questions", help="per-question test table of one evaluated policy")
    q.add_argument("--base-model", required=True, help="the base model folder (log-likelihoods)")
    q.add_argument("--dtype", default="bfloat16", help="dtype the base model is loaded in")
    q.add_argument("--pools", nargs="+", required=True, help="the policy's test pool shards")
    q.add_argument("--scores", nargs="+", required=True, help="their score tables")
    q.add_argument("--task", required=True, help="the RL training task")
    q.add_argument("--run", required=True, help="'base' or '<method>/seed<N>'")
    q.add_argument("--batch-tokens", type=int, default=8192)
    q.add_argument("--threads", type=int, default=None)
    q.add_argument("--out", required=True)
    t = sub.add_parser("tables", help="the RL result tables of all runs")
    t.add_argument("--questions", nargs="+", required=True, help="per-run question tables")
    t.add_argument("--runs", nargs="*", default=[], help="done.json of every training run")
    t.add_argument("--out-dir", required=True)
    provenance.add_argument(t)
    h = sub.add_parser("hparams", help="the hyper-parameter table (Table 3)")
    h.add_argument("--rl", required=True, help="the rl config section (defaults filled), as JSON")
    h.add_argument("--model-spec", default="", help="the models.<rl.model> entry, as JSON")
    h.add_argument("--out", required=True)
    provenance.add_argument(h)
    v = sub.add_parser(
        "divergence", help="rollouts and final weights of run A against run B (same seed)"
    )
    v.add_argument(
        "run_a", help="a run folder (rollouts.csv, weights_sketch.npz), e.g. .../repexp/seed41"
    )
    v.add_argument("run_b", help="the run to compare with, e.g. .../grpo/seed41")
    sm = sub.add_parser(
        "summary", help="one row per run: dev pass@1, shaping diagnostics, test pass@k, divergence"
    )
    sm.add_argument("--tables-dir", default="results/tables", help="where the rl_*.csv tables are")
    a = ap.parse_args(argv)
    start_cli()
    return {
        "questions": _cmd_questions,
        "tables": _cmd_tables,
        "hparams": _cmd_hparams,
        "divergence": _cmd_divergence,
        "summary": _cmd_summary,
    }[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
