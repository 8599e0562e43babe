"""The collection's file formats: the manifest's fields and the Parquet schemas, and how to check them.

Readable without simsearch (README, "Formats"); this module only names and checks them. ``collection.py``
reads and writes the files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from simsearch.metrics import METRICS

FORMAT = "simsearch.collection/1"
MANIFEST = "manifest.json"
#: The manifest of an unfinished ``index --rebuild``: a whole collection of its own, written beside the live one
#: and renamed over ``manifest.json`` when it is complete.
STAGING = "rebuild.json"
LOCK = ".lock"
#: Marks a folder as a collection: simsearch writes and deletes only in folders that carry it (or a manifest).
MARKER = ".simsearch.json"
#: The files a commit is about to write or replace, written (and fsynced) before any of them: after a crash,
#: the next writer removes what it names and no manifest names. simsearch deletes nothing else.
JOURNAL = ".pending.json"
#: Names that belong to the folder itself, never to one generation.
FIXED_NAMES = (MANIFEST, STAGING, LOCK, MARKER, JOURNAL)
#: The state of an encoder being trained for this collection by ``index``, from which an interrupted run resumes
#: (``training.checkpoint``); removed once the encoder is committed.
TRAINING_CHECKPOINT = "training.ckpt"
GENERATION_KEYS = ("meta", "skipped", "vectors")  # the files of one generation, each with its sha256


def meta_schema(dim: int) -> pa.Schema:
    """The columns of ``meta-<gen>.parquet``."""
    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("path", pa.string(), nullable=False),
            pa.field("root", pa.string(), nullable=False),
            pa.field("label", pa.string(), nullable=True),
            pa.field("sha256", pa.string(), nullable=False),
            pa.field("bytes", pa.int64(), nullable=False),
            pa.field("mtime", pa.float64(), nullable=False),
            pa.field("width", pa.int32(), nullable=False),
            pa.field("height", pa.int32(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        ]
    )


SKIPPED_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("root", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)


def meta_table(rows: Mapping[str, Sequence[Any] | np.ndarray], embeddings: np.ndarray, dim: int) -> pa.Table:
    """Build a metadata table from column lists and ``embeddings`` (n, dim) float32."""
    emb = np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1, dim)
    schema = meta_schema(dim)
    columns = [pa.array(rows[f.name], type=f.type) for f in schema if f.name != "embedding"]
    columns.append(pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float32()), dim))
    return pa.Table.from_arrays(columns, schema=schema)


def embeddings_of(table: pa.Table) -> np.ndarray:
    """The ``embedding`` column as (n, dim) float32 (a read-only view of the table's memory)."""
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    values = column.values
    return _view(values, np.float32, column.offset * dim, len(column) * dim).reshape(-1, dim)


def int64_column(table: pa.Table, name: str) -> np.ndarray:
    """A non-null int64 column (``id``) as a read-only numpy view."""
    column = table.column(name).combine_chunks()
    return _view(column, np.int64, 0, len(column))


def _view(array: pa.Array, dtype: type, start: int, count: int) -> np.ndarray:
    """``count`` values of a fixed-width, null-free arrow array from ``start``, without ``to_numpy``: pyarrow's
    ``to_numpy`` imports pandas whenever it is installed, which costs a cold ``query`` about a second."""
    if array.null_count:
        raise ValueError("a column that must not hold nulls holds some")
    if count == 0:
        return np.zeros(0, dtype)
    itemsize = np.dtype(dtype).itemsize
    view: np.ndarray = np.frombuffer(
        array.buffers()[1], dtype=dtype, count=count, offset=(array.offset + start) * itemsize
    )
    view.flags.writeable = False  # the table's own memory: writing into it would change the table
    return view


_KIND_NAMES = {int: "an integer", str: "a string", dict: "an object"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def manifest_problems(manifest: Any) -> str:
    """What is wrong with a parsed manifest, or "" (every field the code reads has the type it expects)."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    if manifest.get("format") != FORMAT:
        return f"format is {str(manifest.get('format'))[:50]!r}, expected {FORMAT!r}"
    required = {"generation": int, "count": int, "dim": int, "metric": str, "encoder": dict, "files": dict}
    for key, kind in required.items():
        value = manifest.get(key)
        if not (_is_int(value) if kind is int else isinstance(value, kind)):
            return f"'{key}' is missing or not {_KIND_NAMES[kind]}"
    if manifest["generation"] < 0 or manifest["count"] < 0 or manifest["dim"] < 1:
        return "'generation', 'count' or 'dim' is out of range"
    if manifest["metric"] not in METRICS:
        return f"unknown metric {manifest['metric'][:20]!r}"
    files = manifest["files"]
    for key in (*GENERATION_KEYS, "encoder"):
        name = files.get(key)
        if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", "..", *FIXED_NAMES):
            return f"files.{key} is missing or not a plain file name"
    if not isinstance(manifest["encoder"].get("fingerprint"), str):
        return "encoder.fingerprint is missing"
    optional = {"next_id": _is_int, "index": lambda v: isinstance(v, dict), "created": lambda v: isinstance(v, str)}
    optional["roots"] = lambda v: isinstance(v, list) and all(isinstance(r, str) for r in v)
    optional["sha256"] = lambda v: isinstance(v, dict) and all(isinstance(d, str) for d in v.values())
    for key, valid in optional.items():
        if key in manifest and not valid(manifest[key]):
            return f"'{key}' has the wrong type"
    return ""
