"""GPU checks of the project's CUDA paths, in one script of at most 10 minutes on one H200.

    python benchmarks/gpu_check.py [--out gpu_check.json]  # a GPU machine, no internet
    python benchmarks/gpu_check.py --smoke                 # CPU, tiny shapes (CI)

Prints one ``RESULT <check>: PASS|FAIL|SKIP {numbers}`` line per check and, last,
``SUMMARY {json}``.
Needs torch, transformers, accelerate, numpy, scipy, pandas, safetensors and tokenizers; the GRPO
check also trl (and its datasets), and is skipped with a clear line without it. Nothing is
downloaded: the tiny model and its byte-level tokenizer are built here, the large model is a
randomly initialised model of Qwen2.5-7B-Instruct's shape (:data:`QWEN25_7B`, from its
config.json).

Checks (``--smoke``: the same code on the CPU with tiny shapes, so that the script cannot rot; its
numbers are not GPU numbers and lines that need CUDA say so):

* ``selection_match``: :func:`repexp.inference.select_pool` with the CUDA (torch) path against the
  numpy path: identical orders and identical trials / questions / pass@k tables.
* ``selection_speed``: the CUDA path on the paper's pool shape (N = 6,400 responses, d = 512, 5
  trials, full orders) for a sample of questions, scaled to 5,000 questions (MATH's test set).
* ``features_match``: :func:`repexp.features.pooled_states` on CUDA against the CPU (tiny model,
  float32).
* ``features_speed``: response tokens/s and peak GPU memory of the feature forward on the
  Qwen2.5-7B-shaped model (bf16).
* ``tokenlevel_match``: the tree-attention candidate states (:class:`repexp.tokenlevel.Decoder`)
  against a plain forward of prefix + candidate, on CUDA (tiny model, float32).
* ``tokenlevel_speed``: seconds per token of token-level decoding with the bonus and without it
  (vanilla), 7B shape, bf16, top-k 128 / top-p 0.95 (the config's filters).
* ``tokenlevel_batched``: tokens/s of the batched token-level engine
  (``repexp.tokenlevel.benchmark_rate``, :mod:`repexp.tokenlevel.batch`) at batch 1, 16, 64, against
  the sequential engine (SKIP if the package has no batched engine).
* ``grpo_repexp``: two GRPO steps with the RepExp reward (``python -m repexp.rl.train``) on one GPU,
  tiny model (SKIP without trl).
* ``frozen_fsdp``: RepExp's frozen model under the environment ``accelerate launch`` gives
  profiles/accelerate/fsdp.yaml, in 2 processes (gloo): local rank 1 loads the checkpoint's
  weights, not transformers' zeros, and both ranks compute the same features.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:  # the GPU machine has the checkout, not the installed package
    sys.path.insert(0, str(REPO / "src"))

# Qwen/Qwen2.5-7B-Instruct's config.json (the shape; the weights are random)
QWEN25_7B = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "sliding_window": None,
    "hidden_act": "silu",
}
SMOKE_SHAPE = {
    **QWEN25_7B,
    "vocab_size": 2048,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


class Skip(Exception):
    """A check that cannot run here (the reason is printed)."""


# ------------------------------------------------------------------------------------------------
# models (nothing downloaded)
# ------------------------------------------------------------------------------------------------
def byte_tokenizer():
    """A byte-level tokenizer (256 bytes + the Qwen chat specials) with Qwen's chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from repexp.models import QWEN_CHAT_TEMPLATE

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=specials,
    )
    tok.chat_template = QWEN_CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def build_tiny(out: Path, seed: int = 0) -> Path:
    """A tiny seeded Qwen2 model with the byte tokenizer, as a prepared model folder."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from repexp.models import MANIFEST

    tok = byte_tokenizer()
    cfg = Qwen2Config(
        vocab_size=len(tok),
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **TINY,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / MANIFEST).write_text(json.dumps({"spec": {"source": "gpu_check tiny"}}))
    return out


def shaped_model(shape: dict, device: str, dtype):
    """A randomly initialised causal LM of ``shape`` (Qwen2 architecture) on ``device``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = dict(shape)
    theta = shape.pop("rope_theta")
    cfg = Qwen2Config(**shape, rope_parameters={"rope_type": "default", "rope_theta": theta})
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(dtype)
    return model.eval()


# ------------------------------------------------------------------------------------------------
# checks: each returns (status, numbers)
# ------------------------------------------------------------------------------------------------
def check_selection_match(ctx):
    import numpy as np
    import pandas as pd

    from repexp.inference import select_pool

    rng = np.random.default_rng(0)
    q, n, d = (6, 48, 32) if ctx.smoke else (24, 400, 256)
    feats = rng.normal(size=(q * n, d)).astype(np.float32)
    rows = pd.DataFrame(
        {
            "qid": np.repeat([f"q{i}" for i in range(q)], n),
            "sample": np.tile(np.arange(n), q),
            "correct": (rng.random(q * n) < 0.05).astype(np.int64),
        }
    )
    kw = dict(
        proj_dim=min(64, d),
        lam=1.0,
        trials=5,
        k_max=None,
        center=True,
        projection_seed=0,
        seed=0,
        seed_parts=("gpu-check",),
    )
    t0 = time.perf_counter()
    ref = select_pool(feats, rows, device="cpu", **kw)
    t_cpu = time.perf_counter() - t0
    t0 = time.perf_counter()
    dev = select_pool(feats, rows, device=ctx.device, batch_questions=16, **kw)
    t_dev = time.perf_counter() - t0
    same_orders = ref[0]["order"].tolist() == dev[0]["order"].tolist()
    same_tables = all(a.equals(b) for a, b in zip(ref, dev, strict=True))
    return (
        "PASS" if same_orders and same_tables else "FAIL",
        {
            "device": ctx.device,
            "questions": q,
            "responses": n,
            "raw_dim": d,
            "same_orders": same_orders,
            "same_tables": same_tables,
            "seconds_numpy": round(t_cpu, 3),
            "seconds_device": round(t_dev, 3),
        },
    )


def check_selection_speed(ctx):
    import torch

    from repexp.select import repexp_orders_torch

    n, d, trials, batch = (64, 16, 5, 4) if ctx.smoke else (6400, 512, 5, 32)
    batches = 1 if ctx.smoke else 2
    g = torch.Generator(device="cpu").manual_seed(0)
    feats = torch.randn((batch, n, d), generator=g, dtype=torch.float64).to(ctx.device)
    firsts = torch.randint(0, n, (batch, trials), generator=g).to(ctx.device)
    repexp_orders_torch(feats[:1, :64], 8, firsts[:1] % 64)  # warm-up (kernels, cuBLAS handles)
    sync(ctx)
    t0 = time.perf_counter()
    for _ in range(batches):
        orders = repexp_orders_torch(feats, n, firsts)
    sync(ctx)
    seconds = time.perf_counter() - t0
    per_question = seconds / (batches * batch)
    ok = orders.shape == (batch, trials, n) and bool(
        (orders.sort(dim=2).values == torch.arange(n, device=ctx.device)).all()
    )
    return (
        "PASS" if ok else "FAIL",
        {
            "device": ctx.device,
            "responses": n,
            "dim": d,
            "trials": trials,
            "questions_measured": batches * batch,
            "seconds_per_question": round(per_question, 4),
            "estimated_seconds_5000_questions": round(5000 * per_question, 1),
            "peak_gpu_gib": peak_gib(ctx),
        },
    )


def _pool(rng, vocab, prompts, per_prompt, prompt_len, resp_len):
    prompt_ids, response_ids = [], []
    for _ in range(prompts):
        p = rng.integers(10, vocab, size=prompt_len).tolist()
        for _ in range(per_prompt):
            prompt_ids.append(p)
            response_ids.append(
                rng.integers(
                    10, vocab, size=int(rng.integers(resp_len // 2, resp_len + 1))
                ).tolist()
            )
    return prompt_ids, response_ids


def check_features_match(ctx):
    import numpy as np

    from repexp.features import pooled_states
    from repexp.models import load_model

    rng = np.random.default_rng(1)
    model_cpu = load_model(ctx.tiny, dtype="float32", device="cpu", lm_head=False)
    model_dev = load_model(ctx.tiny, dtype="float32", device=ctx.device, lm_head=False)
    pi, ri = _pool(rng, model_cpu.config.vocab_size, 3, 5, 17, 24)
    a = pooled_states(model_cpu, pi, ri, batch_tokens=256)
    b = pooled_states(model_dev, pi, ri, batch_tokens=256)
    diff = max(float(np.abs(a[p] - b[p]).max()) for p in a)
    scale = max(float(np.abs(a[p]).max()) for p in a)
    return (
        "PASS" if diff <= 1e-4 * max(scale, 1.0) else "FAIL",
        {"device": ctx.device, "rows": len(ri), "max_abs_diff": diff, "max_abs": scale},
    )


def check_features_speed(ctx):
    import numpy as np

    from repexp.features import pooled_states

    model = ctx.large().model  # the base model: features need no LM head
    rng = np.random.default_rng(2)
    prompts, per, plen, rlen, bt = (2, 4, 16, 32, 256) if ctx.smoke else (8, 32, 256, 512, 32768)
    pi, ri = _pool(rng, model.config.vocab_size, prompts, per, plen, rlen)
    pooled_states(model, pi[:2], ri[:2], batch_tokens=bt)  # warm-up
    reset_peak(ctx)
    sync(ctx)
    t0 = time.perf_counter()
    out = pooled_states(model, pi, ri, batch_tokens=bt)
    sync(ctx)
    seconds = time.perf_counter() - t0
    tokens = sum(map(len, ri))
    ok = all(np.isfinite(v).all() and np.abs(v).sum(axis=1).min() > 0 for v in out.values())
    return (
        "PASS" if ok else "FAIL",
        {
            "device": ctx.device,
            "shape": "Qwen2.5-7B" if not ctx.smoke else "smoke",
            "dtype": "bfloat16",
            "responses": len(ri),
            "response_tokens": tokens,
            "batch_tokens": bt,
            "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1),
            "peak_gpu_gib": peak_gib(ctx),
            "params_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 3),
            "torch_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        },
    )


def check_tokenlevel_match(ctx):
    import torch
    from transformers import DynamicCache

    from repexp.models import load_model
    from repexp.tokenlevel import Decoder, Settings

    model = load_model(ctx.tiny, dtype="float32", device=ctx.device)
    dec = Decoder(model, [model.config.eos_token_id], Settings(candidate_batch=3, max_new_tokens=4))
    prompt = list(range(20, 50))
    cands = torch.tensor([11, 5, 200, 42, 7, 250, 3], device=ctx.device)
    worst = 0.0
    with torch.inference_mode():
        cache = DynamicCache()
        dec._forward(torch.tensor([prompt], device=ctx.device), cache)
        states, keys, values = dec.candidate_states(cache, len(prompt), cands)
        for j, c in enumerate(cands.tolist()):
            ref = model.base_model(
                input_ids=torch.tensor([prompt + [c]], device=ctx.device)
            ).last_hidden_state[0, -1]
            worst = max(worst, float((states[j] - ref).abs().max()))
        dec._append_candidate(cache, keys, values, 4)
        nxt = dec._forward(torch.tensor([[17]], device=ctx.device), cache)[0, -1]
        ref = model.base_model(
            input_ids=torch.tensor([prompt + [7, 17]], device=ctx.device)
        ).last_hidden_state[0, -1]
        worst_next = float((nxt - ref).abs().max())
    ok = worst <= 1e-4 and worst_next <= 1e-4
    return (
        "PASS" if ok else "FAIL",
        {
            "device": ctx.device,
            "candidates": len(cands),
            "max_abs_diff_candidates": worst,
            "max_abs_diff_next_token": worst_next,
        },
    )


def check_tokenlevel_speed(ctx):
    import torch

    from repexp.tokenlevel import CentredInverse, Decoder, Settings, make_generator

    model = ctx.large()
    d = model.config.hidden_size
    tokens, prefix = (4, 16) if ctx.smoke else (32, 256)
    dec = Decoder(
        model, [0], Settings(top_k=128, top_p=0.95, candidate_batch=64, max_new_tokens=tokens)
    )
    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(10, model.config.vocab_size, (prefix,), generator=g).tolist()
    inv = CentredInverse(d, 0.1, device=ctx.device)
    inv.add(torch.randn(64, d, generator=g).to(ctx.device))  # a completed response's states
    out = {}
    for name, kw in (("vanilla", {}), ("bonus", {"inverse": inv, "beta": 1.0})):
        dec.generate(prompt[:8], generator=make_generator(ctx.device, 0), **kw)  # warm-up
        sync(ctx)
        t0 = time.perf_counter()
        r = dec.generate(prompt, generator=make_generator(ctx.device, 1), **kw)
        sync(ctx)
        n = max(1, len(r["response_ids"]))
        out[f"seconds_per_token_{name}"] = round((time.perf_counter() - t0) / n, 5)
        if name == "bonus":
            out["mean_candidates"] = r["mean_candidates"]
    out.update(
        device=ctx.device,
        shape="Qwen2.5-7B" if not ctx.smoke else "smoke",
        prefix=prefix,
        tokens=tokens,
        bonus_over_vanilla=round(
            out["seconds_per_token_bonus"] / out["seconds_per_token_vanilla"], 2
        ),
        peak_gpu_gib=peak_gib(ctx),
    )
    return "PASS", out


BATCHED_ENTRY = ("repexp.tokenlevel",)  # modules searched for benchmark_rate


def check_tokenlevel_batched(ctx):
    """Tokens/s of the batched token-level engine at batch (slots) 1, 16, 64 (smoke: 1, 2, 4), via
    ``benchmark_rate(model, slots, steps, *, beta, settings, tok, device)`` (SKIP while no module of
    :data:`BATCHED_ENTRY` has one; once one exists, a changed interface fails the check, so that
    this script follows it)."""
    import importlib

    from repexp.tokenlevel import Settings

    rate, where = None, None
    for mod in BATCHED_ENTRY:
        try:
            rate = getattr(importlib.import_module(mod), "benchmark_rate", None)
        except ImportError:
            rate = None
        if rate is not None:
            where = f"{mod}.benchmark_rate"
            break
    if rate is None:
        raise Skip(
            f"no batched token-level engine (no benchmark_rate in {', '.join(BATCHED_ENTRY)})"
        )
    model = ctx.large()
    tok = byte_tokenizer()
    steps, new = (2, 4) if ctx.smoke else (32, 64)
    batches = (1, 2, 4) if ctx.smoke else (1, 16, 64)
    settings = Settings(top_k=128, top_p=0.95, candidate_batch=64, max_new_tokens=new)
    out = {"device": ctx.device, "engine": where, "steps": steps}
    seq = rate(
        model,
        slots=1,
        steps=steps,
        beta=1.0,
        settings=settings,
        tok=tok,
        device=ctx.device,
        engine="sequential",
    )
    out["tokens_per_s_sequential"] = round(seq["tok_s"], 1)
    for b in batches:
        reset_peak(ctx)
        r = rate(
            model, slots=b, steps=steps, beta=1.0, settings=settings, tok=tok, device=ctx.device
        )
        out[f"tokens_per_s_batch{b}"] = round(r["tok_s"], 1)
        out[f"peak_gpu_gib_batch{b}"] = peak_gib(ctx)
    ok = all(out[f"tokens_per_s_batch{b}"] > 0 for b in batches)
    return ("PASS" if ok else "FAIL"), out


def check_grpo_repexp(ctx):
    try:
        import trl  # noqa: F401
    except ImportError as e:
        raise Skip(f"trl is not importable ({e}); carry its wheel in to run this check") from None
    import pandas as pd

    from repexp.rl.train import main
    from repexp.tasks import Task

    work = Path(tempfile.mkdtemp(dir=ctx.workdir, prefix="grpo-"))
    rows = [
        {
            "qid": f"a{i}",
            "prompt": json.dumps([{"role": "user", "content": f"{i} + {i + 1} ="}]),
            "answer": str(2 * i + 1),
        }
        for i in range(8)
    ]
    for split, part in (("train", rows[:6]), ("dev", rows[6:])):
        pd.DataFrame(part).to_parquet(work / f"{split}.parquet")
    settings = {
        "group_size": 4,
        "train_batch_prompts": 2,
        "mini_batch_prompts": 1,
        "micro_batch_size": 4,
        "max_prompt_length": 256,
        "max_response_length": 16,
        "eval_every": 2,
        "max_steps": 2,
        "dev_samples": 2,
        "learning_rate": 0.01,
        "repexp": {"proj_dim": 16, "feature_dtype": "float32", "offload_base": not ctx.smoke},
    }
    # the tiny random model is never right: a response counts as correct when its length is even
    # (as in the tests), so that groups have correct rollouts and the bonus is not gated off
    score = Task.score
    Task.score = lambda self, answer, response: float(len(response) % 2 == 0)
    try:
        t0 = time.perf_counter()
        rc = main(
            [
                "--model",
                str(ctx.tiny),
                "--model-name",
                "gpu-check-tiny",
                "--task",
                "arith",
                "--train",
                str(work / "train.parquet"),
                "--dev",
                str(work / "dev.parquet"),
                "--method",
                "repexp",
                "--seed",
                "41",
                "--settings",
                json.dumps(settings),
                "--threads",
                "2",
                "--out",
                str(work / "run"),
            ]
        )
        seconds = time.perf_counter() - t0
    finally:
        Task.score = score
    done = json.loads((work / "run" / "done.json").read_text())
    log = pd.read_csv(work / "run" / "train_log.csv")
    import numpy as np

    ok = (
        rc == 0
        and done["steps"] == 2
        and len(log) == 2
        and np.isfinite(log["loss"]).all()
        and (log["reward_bonus"] >= 0).all()
        and log["reward_bonus"].max() > 0
    )
    import torch

    return (
        "PASS" if ok else "FAIL",
        {
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "steps": done["steps"],
            "reward_bonus": log["reward_bonus"].round(5).tolist(),
            "loss": log["loss"].round(5).tolist(),
            "seconds": round(seconds, 1),
            "seconds_bonus_forward": log["seconds_bonus_forward"].round(3).tolist(),
        },
    )


def _frozen_worker(rank: int, world: int, port: int, env: dict, tiny: str, device: str, out: str):
    import numpy as np
    import torch
    import torch.distributed as dist
    from transformers import AutoModel

    os.environ.update(env)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from repexp.rl.rewards import RepExpReward

    plain = AutoModel.from_pretrained(tiny, dtype=torch.float32)
    zeroed = not any(bool(p.any()) for p in plain.parameters())
    reward = RepExpReward(tiny, task="arith", group_size=2, dtype="float32", device=device)
    feats = reward.features([[1, 2, 3, 4], [5, 6]], [[7, 8, 9], [10, 11, 12, 13]])
    np.savez(Path(out) / f"rank{rank}.npz", feats=feats, zeroed=zeroed)
    dist.barrier()
    dist.destroy_process_group()


def check_frozen_fsdp(ctx):
    import socket

    import numpy as np
    import torch.multiprocessing as mp

    from repexp.rl.distributed import launch_env

    env = launch_env(str(REPO / "profiles" / "accelerate" / "fsdp.yaml"), 2)
    env = {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = Path(tempfile.mkdtemp(dir=ctx.workdir, prefix="frozen-"))
    device = "cuda:0" if ctx.device.startswith("cuda") else "cpu"
    mp.spawn(
        _frozen_worker, args=(2, port, env, str(ctx.tiny), device, str(out)), nprocs=2, join=True
    )
    r = [np.load(out / f"rank{i}.npz") for i in range(2)]
    nonzero = [bool(np.abs(x["feats"]).sum(axis=1).min() > 0) for x in r]
    same = bool(np.allclose(r[0]["feats"], r[1]["feats"], rtol=1e-5, atol=1e-6))
    zeroed = [bool(x["zeroed"]) for x in r]
    # the environment is the paper's (transformers zeroes a plain model on rank 1), and the reward's
    # model is not zeroed
    ok = zeroed == [False, True] and all(nonzero) and same
    return (
        "PASS" if ok else "FAIL",
        {
            "device": device,
            "fsdp_version": env.get("FSDP_VERSION"),
            "plain_model_zeroed": zeroed,
            "features_nonzero": nonzero,
            "ranks_equal": same,
        },
    )


CHECKS = [
    ("selection_match", check_selection_match),
    ("selection_speed", check_selection_speed),
    ("features_match", check_features_match),
    ("features_speed", check_features_speed),
    ("tokenlevel_match", check_tokenlevel_match),
    ("tokenlevel_speed", check_tokenlevel_speed),
    ("tokenlevel_batched", check_tokenlevel_batched),
    ("grpo_repexp", check_grpo_repexp),
    ("frozen_fsdp", check_frozen_fsdp),
]


# ------------------------------------------------------------------------------------------------
# device helpers and the driver
# ------------------------------------------------------------------------------------------------
def sync(ctx):
    import torch

    if ctx.device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(ctx):
    import torch

    if ctx.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_gib(ctx):
    """Peak allocated GPU memory since the last reset, GiB (None on the CPU: CUDA only)."""
    import torch

    if not ctx.device.startswith("cuda"):
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


class Context:
    def __init__(self, smoke: bool, device: str, workdir: Path):
        self.smoke, self.device, self.workdir = smoke, device, workdir
        self.tiny = build_tiny(workdir / "tiny")
        self._large = None

    def large(self):
        """The Qwen2.5-7B-shaped model (bf16; the smoke shape with --smoke), built once."""
        if self._large is None:
            import torch

            self._large = shaped_model(
                SMOKE_SHAPE if self.smoke else QWEN25_7B, self.device, torch.bfloat16
            )
        return self._large


def versions() -> dict:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "accelerate", "trl", "numpy", "scipy", "pandas"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shapes (CI)")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--only", nargs="*", default=None, help="run only these checks")
    ap.add_argument("--out", default=None, help="also write the summary JSON here")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = a.device or ("cuda" if torch.cuda.is_available() and not a.smoke else "cpu")
    t_start = time.perf_counter()
    summary = {"smoke": a.smoke, "device": device, "versions": versions(), "checks": {}}
    if device.startswith("cuda"):
        summary["gpu"] = torch.cuda.get_device_name(0)
        summary["gpu_memory_gib"] = round(
            torch.cuda.get_device_properties(0).total_memory / 2**30, 1
        )
    print(
        f"gpu_check: device {device}, smoke {a.smoke}, {json.dumps(summary['versions'])}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        ctx = Context(a.smoke, device, Path(tmp))
        for name, fn in CHECKS:
            if a.only and name not in a.only:
                continue
            t0 = time.perf_counter()
            try:
                status, numbers = fn(ctx)
            except Skip as e:
                status, numbers = "SKIP", {"reason": str(e)}
            except Exception as e:  # one failing check does not stop the others
                status, numbers = (
                    "FAIL",
                    {
                        "error": f"{type(e).__name__}: {e}",
                        "traceback": traceback.format_exc()[-2000:],
                    },
                )
            numbers["check_seconds"] = round(time.perf_counter() - t0, 1)
            summary["checks"][name] = {"status": status, **numbers}
            print(f"RESULT {name}: {status} {json.dumps(numbers, default=str)}", flush=True)
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    summary["passed"] = all(c["status"] in ("PASS", "SKIP") for c in summary["checks"].values())
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print("SUMMARY " + json.dumps(summary, default=str), flush=True)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
