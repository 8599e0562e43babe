"""The collection's formats: the Parquet schemas and the column views, and the manifest's checks."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pytest

from simsearch.store.formats import (
    FIXED_NAMES,
    FORMAT,
    SKIPPED_SCHEMA,
    embeddings_of,
    int64_column,
    manifest_problems,
    meta_schema,
    meta_table,
)


def rows(n: int) -> dict[str, list]:
    return {
        "id": list(range(10, 10 + n)),
        "path": [f"a/{i}.png" for i in range(n)],
        "root": ["/r"] * n,
        "label": ["a" if i % 2 else None for i in range(n)],
        "sha256": ["0" * 64] * n,
        "bytes": [100] * n,
        "mtime": [1.5] * n,
        "width": [16] * n,
        "height": [16] * n,
    }


def test_a_metadata_table_keeps_every_embedding_exactly() -> None:
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    table = meta_table(rows(7), x, 5)
    assert table.schema.equals(meta_schema(5))
    np.testing.assert_array_equal(embeddings_of(table), x)
    np.testing.assert_array_equal(int64_column(table, "id"), np.arange(10, 17))
    # Views of a table's slice (an offset into its buffers) and of several chunks read the right rows.
    np.testing.assert_array_equal(embeddings_of(table.slice(2, 3)), x[2:5])
    both = pa.concat_tables([table.slice(0, 2), table.slice(4, 3)])
    np.testing.assert_array_equal(embeddings_of(both), x[[0, 1, 4, 5, 6]])
    np.testing.assert_array_equal(int64_column(table.slice(3, 2), "id"), [13, 14])
    assert not embeddings_of(table).flags.writeable  # a view of the table's memory, not a copy


def test_an_empty_table_and_a_column_with_nulls() -> None:
    empty = meta_schema(3).empty_table()
    assert embeddings_of(empty).shape == (0, 3) and int64_column(empty, "id").shape == (0,)
    holey = pa.table({"id": pa.array([1, None, 3], pa.int64())})
    with pytest.raises(ValueError, match="nulls"):
        int64_column(holey, "id")
    assert SKIPPED_SCHEMA.names == ["path", "root", "reason"]


def good_manifest() -> dict:
    return {
        "format": FORMAT,
        "generation": 3,
        "count": 15,
        "dim": 8,
        "metric": "l2",
        "encoder": {"fingerprint": "ab" * 32, "family": "pixels"},
        "files": {"skipped": "skipped-000003.parquet", "deleted": None, "vectors": None, "encoder": "encoder"},
        "segments": [
            {"name": "segment-000001.parquet", "rows": 10, "bytes": 100, "sha256": "00"},
            {"name": "segment-000003.parquet", "rows": 5, "bytes": 50, "sha256": "01"},
        ],
        "roots": ["/images"],
        "next_id": 15,
        "sha256": {"skipped": "00"},
    }


def format_1_manifest() -> dict:
    manifest = good_manifest()
    del manifest["segments"]
    manifest["format"] = "simsearch.collection/1"
    manifest["files"] = {
        "meta": "meta-000003.parquet",
        "skipped": "skipped-000003.parquet",
        "vectors": "vectors-000003.faiss",
        "encoder": "encoder",
    }
    return manifest


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda m: m.update(format="simsearch.collection/9"), "format is"),
        (lambda m: m.pop("generation"), "'generation' is missing or not an integer"),
        (lambda m: m.update(count=True), "'count' is missing or not an integer"),
        (lambda m: m.update(dim=0), "out of range"),
        (lambda m: m.update(metric="dot"), "unknown metric"),
        (lambda m: m.update(encoder=[]), "'encoder' is missing or not an object"),
        (lambda m: m["encoder"].pop("fingerprint"), "encoder.fingerprint is missing"),
        (lambda m: m["files"].update(skipped="../../etc/passwd"), "files.skipped is missing or not a plain file name"),
        (lambda m: m["files"].update(vectors=".lock"), "files.vectors is not a plain file name"),
        (lambda m: m["files"].update(deleted="a/b"), "files.deleted is not a plain file name"),
        (lambda m: m.pop("segments"), "'segments' is missing or not a list"),
        (lambda m: m["segments"][1].update(rows=-1), "a segment lacks its name, rows or sha256"),
        (lambda m: m["segments"][1].update(name="manifest.json"), "a segment lacks its name, rows or sha256"),
        (lambda m: m["segments"].append(m["segments"][0]), "a segment is named twice"),
        (lambda m: m["files"].update(encoder="rebuild.json"), "files.encoder is missing or not a plain file name"),
        (lambda m: m.update(roots=["/a", 3]), "'roots' has the wrong type"),
        (lambda m: m.update(next_id="15"), "'next_id' has the wrong type"),
        (lambda m: m.update(sha256={"meta": 1}), "'sha256' has the wrong type"),
    ],
)
def test_the_manifest_check_names_what_is_wrong(change, problem: str) -> None:
    assert manifest_problems(good_manifest()) == ""
    manifest = copy.deepcopy(good_manifest())
    change(manifest)
    assert problem in manifest_problems(manifest)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda m: m["files"].update(meta="../../etc/passwd"), "files.meta is missing or not a plain file name"),
        (lambda m: m["files"].update(vectors=None), "files.vectors is missing or not a plain file name"),
    ],
)
def test_a_format_1_manifest_is_checked_as_format_1_was(change, problem: str) -> None:
    assert manifest_problems(format_1_manifest()) == ""
    manifest = copy.deepcopy(format_1_manifest())
    change(manifest)
    assert problem in manifest_problems(manifest)


def test_no_generation_file_may_take_a_name_of_the_folder_itself() -> None:
    for name in FIXED_NAMES:
        manifest = good_manifest()
        manifest["files"]["skipped"] = name
        assert "files.skipped" in manifest_problems(manifest), name
    assert manifest_problems([1, 2]) == "not a JSON object"
