"""Hidden-state cache: throughput, the GPU memory model, and the cache dtypes.

Three tables (each flag runs one; no flag: the throughput table):

* throughput: our length-bucketed base-model pass vs the naive padded pass. Naive = fixed-size
  batches in pool order, right-padded to the batch's longest sequence, through the full causal LM
  with ``output_hidden_states=True``, then the mean of ``hidden_states[-1]`` over the response
  positions. Ours = ``repexp.features.pooled_states``: the base model without the LM head, the
  prompt's key/value cache shared by a question's responses, batches packed by length.
* ``--memory``: the memory model (``repexp.features.ForwardMemory``) for the paper's models on an
  80 GB GPU (architectures from the models' config.json): weights, rows per batch at a typical
  length, and what the old scheme needed for a 65,536-response-token batch (the prompt cache
  copied to every row, every layer's response keys/values kept to the end of the forward, a float32
  copy of the output). Then a CPU check of the model against a measured peak (resident set size of
  a fresh process running one batch of a random Qwen2-shaped model; CPU attention kernels differ
  from the GPU's, so this only bounds the model's order of magnitude).
* ``--dtypes FEATURES.npz --qids QIDS.npy``: the cache dtypes on real features (e.g. a pool's
  features saved by ``np.savez``): the relative error of the question-centred features and how
  far RepExp's orders (projection to 512, λ = 1, 5 trials) agree with float32's.

    .venv/bin/python benchmarks/bench_features.py [--model resources/models/smollm2-135m-instruct]
    .venv/bin/python benchmarks/bench_features.py --memory
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch

from repexp.features import ForwardMemory, pooled_states
from repexp.models import load_model

# config.json of the paper's models: hidden, layers, heads, kv heads, head dim, intermediate, and
# the base model's parameters in billions (without the LM head; tied embeddings counted once)
PAPER_MODELS = {
    "qwen2.5-0.5b-instruct": (896, 24, 14, 2, 64, 4864, 0.49),
    "qwen2.5-3b-instruct": (2048, 36, 16, 2, 128, 11008, 3.09),
    "qwen2.5-7b-instruct": (3584, 28, 28, 4, 128, 18944, 7.07),
    "qwen2.5-14b-instruct": (5120, 48, 40, 8, 128, 13824, 13.99),
    "qwen2.5-32b-instruct": (5120, 64, 40, 8, 128, 27648, 31.98),
    "llama-3.2-3b-instruct": (3072, 28, 24, 8, 128, 8192, 3.21),
    "llama-3.1-8b-instruct": (4096, 32, 32, 8, 128, 14336, 7.50),
    "mistral-7b-instruct": (4096, 32, 32, 8, 128, 14336, 7.11),
    "phi-3-medium-instruct": (5120, 40, 40, 10, 128, 17920, 13.80),
    "phi-4": (5120, 40, 40, 10, 128, 17920, 14.19),
}


def naive(model, prompts, responses, batch_size, pad_id):
    out = []
    with torch.inference_mode():
        for s in range(0, len(prompts), batch_size):
            seqs = [
                p + r
                for p, r in zip(
                    prompts[s : s + batch_size], responses[s : s + batch_size], strict=True
                )
            ]
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), pad_id)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for i, q in enumerate(seqs):
                ids[i, : len(q)] = torch.tensor(q)
                mask[i, : len(q)] = 1
            h = (
                model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                .hidden_states[-1]
                .float()
            )
            for i, (p, r) in enumerate(
                zip(prompts[s : s + batch_size], responses[s : s + batch_size], strict=True)
            ):
                out.append(h[i, len(p) : len(p) + len(r)].mean(0).numpy())
    return np.stack(out)


def throughput(a) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    full = load_model(a.model, dtype=a.dtype)
    base = load_model(a.model, dtype=a.dtype, lm_head=False)
    vocab = full.config.vocab_size
    prompt = rng.integers(0, vocab, size=a.prompt_len).tolist()
    # response lengths as in a real pool: many stop early, some hit the cap
    lengths = np.minimum(rng.geometric(1 / (a.max_len / 2), size=a.responses) + 8, a.max_len)
    responses = [rng.integers(0, vocab, size=n).tolist() for n in lengths]
    prompts = [prompt] * a.responses
    tokens = int(lengths.sum())
    rows = []
    t0 = time.perf_counter()
    ref = naive(full, prompts, responses, a.batch_size, 0)
    t_naive = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = pooled_states(base, prompts, responses, batch_tokens=a.batch_tokens, poolings=("mean",))[
        "mean"
    ]
    t_ours = time.perf_counter() - t0
    err = float(np.abs(ours - ref).max() / np.abs(ref).max())
    rows.append(("naive: full LM, output_hidden_states, padded batches", t_naive, tokens / t_naive))
    rows.append(("ours: base model, shared prompt cache, length-bucketed", t_ours, tokens / t_ours))
    print(
        f"model {a.model} ({a.dtype}), {a.responses} responses, {tokens} response tokens "
        f"(+{a.prompt_len} prompt tokens each), {torch.get_num_threads()} threads"
    )
    print(f"{'method':55s} {'seconds':>8s} {'resp tok/s':>11s}")
    for name, t, tps in rows:
        print(f"{name:55s} {t:8.2f} {tps:11.0f}")
    print(
        f"speed-up: {t_naive / t_ours:.2f}x   "
        f"(max relative difference of the mean features: {err:.2e})"
    )


# ------------------------------------------------------------------------------------------------
# --memory
# ------------------------------------------------------------------------------------------------
def old_scheme_bytes(m: ForwardMemory, rows: int, width: int, prefix: int) -> int:
    """The pre-fix forward: the prompt cache repeated to every row and every layer's response
    keys/values kept in the batch cache until the end, plus a float32 copy of the output."""
    kv_all_layers = 2 * m.layers * m.kv_heads * m.head_dim * m.dtype_bytes
    kept = rows * (prefix + width) * kv_all_layers
    return m.weight_bytes + kept + m.activations(rows, width, prefix) + rows * width * m.hidden * 4


def memory_table(a) -> None:
    budget = int(a.gpu_memory_gb * 1e9 * a.fraction)
    print(
        f"GPU budget {a.gpu_memory_gb:g} GB x {a.fraction:g} = {budget / 1e9:.1f} GB; "
        f"prompt {a.prompt_len} "
        f"tokens, responses of {a.width} tokens (bf16)"
    )
    print(
        f"{'model':24s} {'weights GB':>10s} {'rows/batch':>10s} {'tokens/batch':>12s} "
        f"{'old: 65,536-token batch GB':>27s}"
    )
    for name, (h, layers, heads, kv, d, inter, params_b) in PAPER_MODELS.items():
        m = ForwardMemory(
            hidden=h,
            layers=layers,
            heads=heads,
            kv_heads=kv,
            head_dim=d,
            intermediate=inter,
            dtype_bytes=2,
            weight_bytes=int(params_b * 1e9 * 2),
        )
        rows = 0
        while m.batch(rows + 1, a.width, a.prompt_len) <= budget:
            rows += 1
        old_rows = 65536 // a.width
        old = old_scheme_bytes(m, old_rows, a.width, a.prompt_len)
        print(
            f"{name:24s} {m.weight_bytes / 1e9:10.1f} {rows:10d} "
            f"{rows * a.width:12,d} {old / 1e9:27.1f}"
        )
    print("\nCPU check: peak resident memory of one batch (fresh process, random Qwen2, float32)")
    print(
        f"{'rows':>5s} {'width':>6s} {'prompt':>6s} "
        f"{'modelled MB':>12s} {'measured MB':>12s} {'ratio':>6s}"
    )
    for rows, width, prompt in ((8, 128, 64), (16, 256, 64), (32, 256, 128)):
        out = subprocess.run(
            [sys.executable, __file__, "--_measure", json.dumps([rows, width, prompt])],
            capture_output=True,
            text=True,
            check=True,
        )
        got = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{rows:5d} {width:6d} {prompt:6d} "
            f"{got['model'] / 1e6:12.1f} {got['measured'] / 1e6:12.1f} "
            f"{got['measured'] / got['model']:6.2f}"
        )


def _vm_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _measure(spec: str) -> None:
    """(child process) one shared-prompt batch; prints the modelled and the measured peak bytes."""
    from transformers import DynamicCache, Qwen2Config, Qwen2Model

    from repexp.features import shared_prefix_cache

    rows, width, prompt = json.loads(spec)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=1000,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    )
    model = Qwen2Model(cfg).eval()
    m = ForwardMemory.of_model(model)
    with torch.inference_mode():
        model(input_ids=torch.ones(1, 4, dtype=torch.long))  # kernels and thread pools warmed up
        ids = torch.randint(0, 1000, (rows, width))
        mask = torch.ones(rows, prompt + width, dtype=torch.long)
        mask[1:, prompt + width // 2 :] = 0  # padded rows: the mask path, as in a real batch
        base = _vm_hwm()
        cache = DynamicCache()
        model(input_ids=torch.randint(0, 1000, (1, prompt)), past_key_values=cache, use_cache=True)
        h = model(
            input_ids=ids,
            attention_mask=mask,
            past_key_values=shared_prefix_cache(cache),
            use_cache=True,
        ).last_hidden_state
        peak = _vm_hwm()
        del h
    print(
        json.dumps(
            {
                "model": m.prompt_cache(prompt) + m.activations(rows, width, prompt),
                "measured": peak - base,
            }
        )
    )


# ------------------------------------------------------------------------------------------------
# --dtypes
# ------------------------------------------------------------------------------------------------
def dtype_table(a) -> None:
    from repexp.features import dequantize_groups, quantize_groups
    from repexp.select import first_picks, project, repexp_orders

    feats = np.load(a.dtypes)
    groups = np.unique(np.load(a.qids, allow_pickle=True), return_inverse=True)[1]
    n_q = int(groups.max()) + 1
    print(
        f"{a.dtypes}: {len(groups)} responses, {n_q} questions; "
        f"RepExp: projection to {a.proj_dim}, "
        "lambda 1, 5 trials per question, orders of the whole pool, compared with float32's"
    )
    print(
        f"{'pooling':12s} {'cache dtype':11s} "
        f"{'centred rel. error':>18s} {'identical prefix':>17s} "
        f"{'top-32 overlap':>15s}"
    )
    for pooling in feats.files:
        x = feats[pooling].astype(np.float32)
        t = torch.from_numpy(x)
        q, lo, step = quantize_groups(x, groups)
        variants = {
            "float32": x.astype(np.float64),
            "bfloat16": t.bfloat16().double().numpy(),
            "float16": t.half().double().numpy(),
            "uint8": dequantize_groups(q, lo, step, groups),
        }

        def orders(y, g):
            s = groups == g
            firsts = first_picks(int(s.sum()), 5, g)
            return repexp_orders(
                project(y[s], a.proj_dim, 0), int(s.sum()), firsts, lam=1.0, center=True
            )

        ref = {g: orders(variants["float32"], g) for g in range(n_q)}
        for name, y in variants.items():
            errs, prefix, overlap, sizes = [], [], [], []
            for g in range(n_q):
                s = groups == g
                xc = x[s].astype(np.float64) - x[s].mean(0, dtype=np.float64)
                errs.append(np.linalg.norm((y[s] - y[s].mean(0)) - xc) / np.linalg.norm(xc))
                for o, b in zip(orders(y, g), ref[g], strict=True):
                    prefix.append(int(np.argmax(o != b)) if (o != b).any() else len(o))
                    overlap.append(len(set(o[:32]) & set(b[:32])) / 32)
                sizes.append(int(s.sum()))
            print(
                f"{pooling:12s} {name:11s} {np.mean(errs):18.2e} "
                f"{np.mean(prefix):8.1f} of {np.mean(sizes):<6.0f} "
                f"{np.mean(overlap):15.3f}"
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resources/models/smollm2-135m-instruct")
    ap.add_argument("--responses", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=90)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--memory", action="store_true", help="the memory-model table")
    ap.add_argument("--gpu-memory-gb", type=float, default=80)
    ap.add_argument("--fraction", type=float, default=0.9)
    ap.add_argument("--width", type=int, default=512, help="--memory: response tokens per row")
    ap.add_argument("--dtypes", default=None, help="an .npz of features {pooling: (n, dim)}")
    ap.add_argument("--qids", default=None, help="--dtypes: an .npy of each row's question")
    ap.add_argument("--proj-dim", type=int, default=512)
    ap.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._measure:
        _measure(a._measure)
        return
    from repexp.models import cpu_capability_line

    print(f"# {cpu_capability_line()}")
    if a.memory:
        a.prompt_len = 200 if a.prompt_len == 90 else a.prompt_len
        memory_table(a)
    elif a.dtypes:
        dtype_table(a)
    else:
        throughput(a)


if __name__ == "__main__":
    main()
