"""Atomic file writes: write under a hidden temporary name in the target folder, then rename.

A killed job therefore never leaves a file that looks complete; the workflow's resumption (a
rerun keeps finished shards and redoes the rest) relies on it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet(df, out: str | os.PathLike, **meta) -> None:
    """A DataFrame as Parquet (zstd), atomically; ``meta`` is stored as JSON in the file's metadata
    (key ``repexp``), the writing process's git commit and package versions under
    ``repexp_provenance`` (:func:`repexp.provenance.environment`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from repexp.provenance import environment

    table = pa.Table.from_pandas(df, preserve_index=False)
    extra = {b"repexp_provenance": json.dumps(environment(), sort_keys=True).encode()}
    if meta:
        extra[b"repexp"] = json.dumps(meta, sort_keys=True).encode()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp, compression="zstd")
