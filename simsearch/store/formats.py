"""The collection's file formats: the manifest's fields and the Parquet schemas, and how to check them.

Readable without simsearch (README, "Formats"); this module only names and checks them. ``collection.py``
reads and writes the files.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from simsearch.metrics import METRICS

#: Format 2: the rows live in immutable segments, with deletions recorded apart (``segments.py``).
FORMAT = "simsearch.collection/2"
#: Format 1: one metadata file and one FAISS file per generation. Read as before; the next write converts it.
FORMAT_1 = "simsearch.collection/1"
FORMATS = (FORMAT_1, FORMAT)
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
GENERATION_KEYS = ("meta", "skipped", "vectors")  # format 1: the files of one generation, each with its sha256
#: Format 2: the files a manifest names beside its segments (``deleted`` and ``vectors`` may be null), each with
#: its sha256 when present.
SEGMENTED_KEYS = ("skipped", "deleted", "vectors")
#: The deletions of a format-2 collection: which rows of which segment are no longer live.
DELETED_SCHEMA = pa.schema(
    [pa.field("segment", pa.string(), nullable=False), pa.field("id", pa.int64(), nullable=False)]
)


def meta_schema(dim: int) -> pa.Schema:
    """The columns of a segment (``segment-<gen>.parquet``; format 1: ``meta-<gen>.parquet``)."""
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
    column = _one_chunk(table.column("embedding"))
    dim = column.type.list_size
    values = column.values
    return _view(values, np.float32, column.offset * dim, len(column) * dim).reshape(-1, dim)


def int64_column(table: pa.Table, name: str) -> np.ndarray:
    """A non-null int64 column (``id``) as a read-only numpy view."""
    column = _one_chunk(table.column(name))
    return _view(column, np.int64, 0, len(column))


def arrow_array(values: np.ndarray) -> pa.Array:
    """A 1-D numpy array of numbers or booleans as an Arrow array, without ``pa.array``: that imports pandas
    whenever it is installed (about a second of a cold ``query``). Numbers share the numpy memory."""
    values = np.ascontiguousarray(values)
    if values.dtype == np.bool_:
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])
    types = {np.dtype(np.float32): pa.float32(), np.dtype(np.int64): pa.int64(), np.dtype(np.int32): pa.int32()}
    return pa.Array.from_buffers(types[values.dtype], len(values), [None, pa.py_buffer(values)])


def all_distinct(values: np.ndarray) -> bool:
    """Whether no value occurs twice (by one sort: ``np.unique`` took 13 s on 10M sorted ids with numpy 2.4;
    none when they increase, a collection's usual ids)."""
    if len(values) < 2 or (values[1:] > values[:-1]).all():
        return True
    ordered = np.sort(values)
    return bool(len(ordered) < 2 or (ordered[1:] != ordered[:-1]).all())


#: The columns a searcher does not read (``Collection.load(searching=True)``): only a writer compares file times.
NOT_SEARCHED = ("mtime",)


def searching_table(table: pa.Table) -> pa.Table:
    """A segment's rows as a searcher keeps them: without ``NOT_SEARCHED``, each sha256 as its 32 bytes
    (``fixed_size_binary(32)``, half the memory of the hex text and its offsets) and the roots dictionary-encoded
    (a collection has a handful): at 10M rows, 0.5 GB of metadata less. ``ValueError`` for a sha256 that is not
    64 hex digits."""
    table = table.drop_columns([name for name in NOT_SEARCHED if name in table.schema.names])
    at = table.schema.get_field_index("sha256")
    table = table.set_column(at, pa.field("sha256", pa.binary(32), nullable=False), sha256_bytes(table.column(at)))
    at = table.schema.get_field_index("root")
    root = table.column(at).dictionary_encode()
    return table.set_column(at, pa.field("root", root.type, nullable=False), root)


def sha256_bytes(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Hex sha256 texts as ``fixed_size_binary(32)`` (``searching_table``)."""
    chunks = []
    for chunk in column.chunks:
        n = len(chunk)
        offsets = np.frombuffer(chunk.buffers()[1], np.int32, n + 1, chunk.offset * 4) if n else np.zeros(1, np.int32)
        if chunk.null_count or (np.diff(offsets) != 64).any():
            raise ValueError("a sha256 that is not 64 characters long")
        text = memoryview(chunk.buffers()[2])[int(offsets[0]) : int(offsets[-1])] if n else b""
        try:
            raw = binascii.unhexlify(text)
        except binascii.Error:
            raise ValueError("a sha256 that is not hex") from None
        chunks.append(pa.Array.from_buffers(pa.binary(32), n, [None, pa.py_buffer(raw)]))
    return pa.chunked_array(chunks, pa.binary(32))


def sha256_array(column: pa.ChunkedArray) -> np.ndarray:
    """A ``fixed_size_binary(32)`` column as numpy ``S32`` (one copy; sorted and searched like any array)."""
    parts = [
        np.frombuffer(chunk.buffers()[1], "S32", len(chunk), chunk.offset * 32) for chunk in column.chunks if len(chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, "S32")


def sha256_texts(column: pa.ChunkedArray, rows: int = 1 << 20) -> pa.ChunkedArray:
    """A ``fixed_size_binary(32)`` column as the hex texts it was read from (for a filter that tests them), in
    chunks of at most ``rows``."""
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    chunks = []
    for chunk in column.chunks:
        for start in range(0, len(chunk), rows):
            part = chunk.slice(start, rows)
            raw = np.frombuffer(part.buffers()[1], np.uint8, 32 * len(part), part.offset * 32)
            text = np.empty(2 * len(raw), np.uint8)
            text[0::2], text[1::2] = digits[raw >> 4], digits[raw & 15]
            offsets = np.arange(0, 64 * (len(part) + 1), 64, dtype=np.int32)
            chunks.append(
                pa.Array.from_buffers(pa.string(), len(part), [None, pa.py_buffer(offsets), pa.py_buffer(text)])
            )
    return pa.chunked_array(chunks, pa.string())


def _one_chunk(column: pa.ChunkedArray) -> pa.Array:
    """The column as one array: its only chunk as it is (``combine_chunks`` would copy even that), else a copy."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


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


def _plain_name(name: Any) -> bool:
    return isinstance(name, str) and "/" not in name and "\\" not in name and name not in ("", ".", "..", *FIXED_NAMES)


def manifest_files(manifest: dict[str, Any]) -> list[str]:
    """Every file name a (checked) manifest names: its files and, in format 2, its segments."""
    names = [name for name in manifest["files"].values() if isinstance(name, str)]
    return names + [segment["name"] for segment in manifest.get("segments", [])]


def manifest_problems(manifest: Any) -> str:
    """What is wrong with a parsed manifest, or "" (every field the code reads has the type it expects)."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    if manifest.get("format") not in FORMATS:
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
    segmented = manifest["format"] == FORMAT
    for key in ("skipped", "encoder") if segmented else (*GENERATION_KEYS, "encoder"):
        if not _plain_name(files.get(key)):
            return f"files.{key} is missing or not a plain file name"
    if segmented:
        for key in ("deleted", "vectors"):
            if files.get(key) is not None and not _plain_name(files[key]):
                return f"files.{key} is not a plain file name"
        segments = manifest.get("segments")
        if not isinstance(segments, list):
            return "'segments' is missing or not a list"
        for segment in segments:
            if not (
                isinstance(segment, dict)
                and _plain_name(segment.get("name"))
                and _is_int(segment.get("rows"))
                and segment["rows"] >= 0
                and isinstance(segment.get("sha256"), str)
            ):
                return "a segment lacks its name, rows or sha256"
        if len({segment["name"] for segment in segments}) != len(segments):
            return "a segment is named twice"
    if not isinstance(manifest["encoder"].get("fingerprint"), str):
        return "encoder.fingerprint is missing"
    optional = {"next_id": _is_int, "index": lambda v: isinstance(v, dict), "created": lambda v: isinstance(v, str)}
    optional["roots"] = lambda v: isinstance(v, list) and all(isinstance(r, str) for r in v)
    optional["sha256"] = lambda v: isinstance(v, dict) and all(isinstance(d, str) for d in v.values())
    optional["skipped_count"] = _is_int
    for key, valid in optional.items():
        if key in manifest and not valid(manifest[key]):
            return f"'{key}' has the wrong type"
    return ""
