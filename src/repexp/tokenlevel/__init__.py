"""Token-level RepExp: representation-guided generation (paper.md §2).

For response i of a question, at every step t the next-token distribution is filtered with top-k
then top-p; for every surviving candidate v_j the last-layer state h_j of (prompt, y<t, v_j) is
computed, and the token is sampled from

    z̃ = z + β·b,   b_j = sqrt(h̃_jᵀ Σ⁻¹ h̃_j),   h̃_j = h_j − μ,

filtered tokens staying at −∞. Σ = λI + Σ_t (h_t − μ)(h_t − μ)ᵀ runs over every generated token of
the question's *completed* responses 1..i−1 (the current one is excluded) and μ is their mean.
After a response ends its T token states are folded in by T Sherman–Morrison updates of the
uncentred inverse Σ̃⁻¹ (Σ̃ = λI + Σ_t h_t h_tᵀ), and the centred inverse is recovered with
Proposition B.2, all in float64 (:class:`repexp.elliptical.CentredInverse`).

The experiment (paper.md §2 "Setting"): the hardest *solvable* questions (lowest pass@1 > 0 in a
reference model's pools), up to ``k_max`` generations per question stopping at the first correct
one, several seeds, each β against vanilla sampling with the same filters.

The modules, one job each (every name below is importable from ``repexp.tokenlevel``):

* :mod:`.settings` -- :class:`Settings`, the job settings (config ``token_level``; defaults: the
  schema);
* :mod:`.decode` -- :class:`Decoder`, the key/value-cache tree decoder of the candidates (one
  sequence at a time);
* :mod:`.engine` -- :func:`explore`, the sequential run loop (the reference), and
  :func:`explore_vanilla_batched` (transformers ``generate``);
* :mod:`.batch` -- :class:`BatchedExplorer`, the batched engine (``slots`` runs in lockstep, the
  one the ``run`` command uses), and :func:`slot_bytes`, its memory per slot;
* :mod:`.state` -- a run's state between the jobs of a shard (:func:`save_runs`,
  :func:`restore_run`, :func:`part_range`);
* :mod:`.tables` -- the questions, the run shards and the pass@k and difficulty tables;
* :mod:`.benchmark` -- :func:`benchmark_rate`, tokens per second (the GPU checks);
* :mod:`.cli` -- ``python -m repexp.tokenlevel questions | run | summarize`` (the rules).
"""

from repexp.elliptical import CentredInverse
from repexp.models import eos_ids_of
from repexp.tokenlevel.batch import BatchedExplorer, Run, SlotCache, slot_bytes, use_slot_attention
from repexp.tokenlevel.benchmark import benchmark_rate
from repexp.tokenlevel.cli import main
from repexp.tokenlevel.decode import Decoder, make_generator
from repexp.tokenlevel.engine import explore, explore_vanilla_batched
from repexp.tokenlevel.settings import GRID_KEYS, Settings, schema_defaults, settings_json
from repexp.tokenlevel.state import load_states, part_range, restore_run, run_state, save_runs
from repexp.tokenlevel.tables import (
    DIFFICULTY_COLUMNS,
    RUN_COLUMNS,
    difficulty_table,
    hardest_from_counts,
    hardest_solvable,
    method_name,
    passk_table,
    reference_counts,
    reference_subsample,
    run_shards,
    shard_runs,
    solved_at,
)

__all__ = [
    "DIFFICULTY_COLUMNS",
    "GRID_KEYS",
    "RUN_COLUMNS",
    "BatchedExplorer",
    "CentredInverse",
    "Decoder",
    "Run",
    "Settings",
    "SlotCache",
    "benchmark_rate",
    "difficulty_table",
    "eos_ids_of",
    "explore",
    "explore_vanilla_batched",
    "hardest_from_counts",
    "hardest_solvable",
    "load_states",
    "main",
    "make_generator",
    "method_name",
    "part_range",
    "passk_table",
    "reference_counts",
    "reference_subsample",
    "restore_run",
    "run_shards",
    "run_state",
    "save_runs",
    "schema_defaults",
    "settings_json",
    "shard_runs",
    "slot_bytes",
    "solved_at",
    "use_slot_attention",
]
