"""A run's state between the jobs of a shard (``token_level.responses_per_job``).

A long run is split into parts, one job each (:func:`part_range`): a part saves every unfinished
run's generator state and Σ̃⁻¹, running sum and count (float64) with :func:`save_runs`, and the next
part reads them back (:func:`load_states`, :func:`restore_run`) and continues exactly where the
run stopped, so the responses do not depend on the split.
"""

from __future__ import annotations

from repexp.elliptical import CentredInverse
from repexp.tokenlevel.batch import Run
from repexp.tokenlevel.decode import make_generator


def run_state(run: Run) -> dict:
    """What a later job needs to continue ``run`` exactly: the next response, whether it ended,
    its generator's state and its Σ̃⁻¹, running sum and count (float64), on the CPU."""
    out = {"next_response": run.next_response, "finished": run.finished}
    if run.finished:  # nothing more to generate
        return out
    if run.generator is not None:
        out["generator"] = run.generator.get_state()
    if run.inverse is not None:
        out.update(
            raw_inverse=run.inverse.raw_inverse.cpu(),
            total=run.inverse.total.cpu(),
            count=run.inverse.count,
        )
    return out


def restore_run(run: Run, state: dict, *, device, hidden: int, lam: float) -> Run:
    """Continue ``run`` from :func:`run_state`'s dict (the generator and Σ̃⁻¹ exactly as saved)."""
    run.next_response, run.finished = int(state["next_response"]), bool(state["finished"])
    if "generator" in state:
        run.generator = make_generator(device, run.seed)
        run.generator.set_state(state["generator"])
    if "raw_inverse" in state:
        inv = CentredInverse(hidden, lam, device=device)
        inv.raw_inverse = state["raw_inverse"].to(device, copy=True)
        inv.total = state["total"].to(device, copy=True)
        inv.count = int(state["count"])
        run.inverse = inv
    return run


def save_runs(runs: dict, path) -> None:
    """{key: Run} -> ``path`` (torch.save of {key: run_state}), atomically."""
    import torch

    from repexp.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"version": 1, "runs": {k: run_state(r) for k, r in runs.items()}}, tmp)


def load_states(path) -> dict:
    import torch

    data = torch.load(path, map_location="cpu", weights_only=True)
    if data.get("version") != 1:
        raise ValueError(f"{path}: not a token-level run state (version {data.get('version')!r})")
    return data["runs"]


def part_range(part: int, responses_per_job: int, k_max: int) -> tuple[int, int]:
    """The responses (first, last; 1-based) that job ``part`` of a run may generate.

    >>> part_range(0, 300, 1024), part_range(3, 300, 1024)
    ((1, 300), (901, 1024))
    """
    first = part * responses_per_job + 1
    if part < 0 or first > k_max:
        raise ValueError(
            f"part {part} is empty: k_max {k_max}, {responses_per_job} responses per job"
        )
    return first, min(k_max, first + responses_per_job - 1)
