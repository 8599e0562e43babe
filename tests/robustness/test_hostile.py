"""Hostile files: a collection or a model folder that was damaged, tampered with, or written by a stranger.

Every case ends in one ``Error:`` line that names the file and what to do, exit code 1, nothing deleted, and
no code from the files ever runs (a pickle payload that would leave a marker file is refused unopened).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from simsearch.errors import ModelError
from simsearch.indexing import IndexConfig, index_folder
from simsearch.io import Preprocess
from simsearch.models.autoencoder import ConvEncoder
from simsearch.models.encoder import Encoder
from simsearch.search import Searcher
from simsearch.store.collection import Collection
from tests.conftest import consistent_snapshot, current_files, to_format_1
from tests.helpers import Payload, invoke

REMEDY = ("--rebuild", "re-train", "re-copy", "made by training")


def tiny_model(folder: Path, seed: int = 0) -> Path:
    """A small trained-looking autoencoder for the image_folder fixture's 16×16 grey images."""
    torch.manual_seed(seed)
    arch = {"channels": 1, "size": [16, 16], "dim": 4, "widths": [4, 8]}
    encoder = Encoder("autoencoder", arch, Preprocess(size=(16, 16), mean=(0.4,), std=(0.3,)), ConvEncoder(**arch))
    encoder.save(folder)
    return folder


@pytest.fixture
def home(image_folder: Path, tmp_path: Path) -> Path:
    """A home with the collection 'c': the 15 images of image_folder, embedded by a small autoencoder, in one
    segment, with an HNSW index (so that it has a FAISS file too)."""
    model = tiny_model(tmp_path / "model")
    config = IndexConfig(model=str(model), device="cpu", index_type="hnsw")
    index_folder(image_folder, Collection(tmp_path / "home" / "c"), config)
    return tmp_path / "home"


def file_of(manifest: dict[str, Any], key: str) -> str:
    """The file a manifest names for ``key``: ``segment`` (format 2's first segment) or ``meta`` (format 1's
    metadata), ``skipped``, ``vectors``, ``encoder``."""
    if key == "segment" and manifest["format"].endswith("/2"):
        return str(manifest["segments"][0]["name"])
    return str(manifest["files"]["meta" if key == "segment" else key])


def named_by(manifest_text: bytes) -> set[str]:
    from simsearch.store.formats import manifest_files

    try:
        return set(manifest_files(json.loads(manifest_text)))
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return set()  # a manifest too damaged to read: what it named cannot be known


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its content: what a failed command must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused(
    home: Path, image_folder: Path, *expected: str, encoder: bool = False, info: bool | None = None
) -> None:
    """query, info and index all fail with one clear line naming ``expected``, and change nothing.
    (``info`` reads the manifest alone, and checks that the files it names are there — never the encoder, the
    segments, the skipped list or the index file: with ``encoder``, or ``info=False``, it is not asked.)"""
    before = listing(home / "c")
    names_before = {p.name for p in (home / "c").iterdir()}
    commands = [("query", image_folder / "blob" / "1.png"), ("index", image_folder)]
    for args in [*commands, ("info",)] if (not encoder if info is None else info) else commands:
        result = invoke(*args, "--home", home, "--name", "c")
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 1, (args, result.output)
        assert len(lines) == 1 and lines[0].startswith("Error: "), (args, result.stderr)
        assert all(text in lines[0] for text in expected), (args, lines[0])
        assert any(remedy in lines[0] for remedy in REMEDY), lines[0]
        assert "Traceback" not in result.output
    assert listing(home / "c") == before
    # The remedy the messages give works: a rebuild replaces whatever was damaged and leaves nothing of its own
    # behind; files that no manifest names any more (a tampered manifest's orphans) are not simsearch's to delete.
    model = home.parent / "model"
    result = invoke("index", image_folder, "--home", home, "--name", "c", "--rebuild", "--model", model)
    assert result.exit_code == 0, result.output
    collection = Collection(home / "c")
    assert consistent_snapshot(collection).meta.num_rows == 15
    assert Searcher(collection, use_gpu=False).query_files([image_folder / "blob" / "1.png"], k=1)[0].vote == "blob"
    left = {p.name for p in collection.path.iterdir()} - set(current_files(collection))
    assert left <= names_before - named_by(before["manifest.json"]), left


def edit_manifest(home: Path, change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    path = home / "c" / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    return manifest


def fix_weights_hash(model: Path) -> None:
    """Make encoder.json vouch for whatever weights.safetensors now holds (what a forger would do)."""
    config = json.loads((model / "encoder.json").read_text())
    config["weights_sha256"] = hashlib.sha256((model / "weights.safetensors").read_bytes()).hexdigest()
    config.pop("fingerprint", None)
    (model / "encoder.json").write_text(json.dumps(config))


# ----------------------------------------------------------------------------------------------------------------
# the manifest


@pytest.mark.parametrize("key", ["segment", "skipped", "vectors", "encoder"])
def test_a_manifest_naming_missing_files(home: Path, image_folder: Path, key: str) -> None:
    def rename(m: dict[str, Any]) -> None:
        if key == "segment":
            m["segments"][0]["name"] = f"{key}-999999"
        else:
            m["files"][key] = f"{key}-999999"

    manifest = edit_manifest(home, rename)
    assert_refused(home, image_folder, f"{key}-999999", encoder=key == "encoder")
    assert file_of(manifest, key) == f"{key}-999999"  # and index deleted none of the files it does not name


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["files"].update(skipped="../../x.parquet"), "files.skipped is missing or not a plain file name"),
        (lambda m: m["files"].update(vectors="manifest.json"), "files.vectors is not a plain file name"),
        (lambda m: m["segments"][0].update(name="../../outside.parquet"), "a segment lacks its name"),
        (lambda m: m["segments"][0].pop("sha256"), "a segment lacks its name, rows or sha256"),
        (lambda m: m["segments"].append(m["segments"][0]), "a segment is named twice"),
        (lambda m: m.pop("segments"), "'segments' is missing or not a list"),
        (lambda m: m.update(files=["meta.parquet"]), "'files' is missing or not an object"),
        (lambda m: m.update(generation="7"), "'generation' is missing or not an integer"),
        (lambda m: m.update(count=True), "'count' is missing or not an integer"),
        (lambda m: m.update(dim=-3), "out of range"),
        (lambda m: m.update(metric="hamming"), "unknown metric"),
        (lambda m: m.update(roots="/images"), "'roots' has the wrong type"),
        (lambda m: m.update(next_id="x"), "'next_id' has the wrong type"),
        (lambda m: m.update(sha256=["abc"]), "'sha256' has the wrong type"),
        (lambda m: m.update(format="simsearch.collection/99"), "format is"),
        (lambda m: m.pop("encoder"), "'encoder' is missing"),
        (lambda m: m["encoder"].update(fingerprint=None), "encoder.fingerprint is missing"),
    ],
)
def test_a_manifest_with_wrong_types(home: Path, image_folder: Path, change, message: str) -> None:
    edit_manifest(home, change)
    assert_refused(home, image_folder, "manifest.json", message)


@pytest.mark.parametrize(
    "content",
    [b"", b"\xff\xfe not UTF-8", b"{not json", b"[" * 100_000 + b"]" * 100_000, b"null", b"1e999999"],
    ids=["empty", "not-utf8", "not-json", "deeply-nested", "null", "huge-number"],
)
def test_a_manifest_that_is_not_json(home: Path, image_folder: Path, content: bytes) -> None:
    (home / "c" / "manifest.json").write_bytes(content)
    assert_refused(home, image_folder, "manifest.json")


def test_a_manifest_that_is_too_large_is_not_read(home: Path, image_folder: Path) -> None:
    path = home / "c" / "manifest.json"
    with open(path, "r+b") as f:
        f.truncate(64 * 1024 * 1024)  # sparse: no disk space used
    assert_refused(home, image_folder, "manifest.json", "over 16,777,216 bytes")


# ----------------------------------------------------------------------------------------------------------------
# the generation files


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def other_index(home: Path, image_folder: Path, tmp_path: Path) -> bytes:
    """A valid .faiss from another collection: 10 vectors of the same size."""
    other = Collection(tmp_path / "other")
    config = IndexConfig(model=str(tmp_path / "model"), device="cpu", index_type="hnsw")
    index_folder(image_folder / "hbars", other, config)
    index_folder(image_folder / "vbars", other, config)
    return (other.path / other.read_manifest()["files"]["vectors"]).read_bytes()


TAMPERED_VECTORS = {
    "flipped-header-byte": lambda data, other: flip(data, 5),
    "flipped-vector-byte": lambda data, other: flip(data, len(data) - 200),
    "truncated": lambda data, other: data[: len(data) // 2],
    "empty": lambda data, other: b"",
    "garbage": lambda data, other: bytes(range(256)) * 4,
    "another-collection's": lambda data, other: other,
    "plain-flat-index": lambda data, other: (
        __import__("faiss").serialize_index(__import__("faiss").IndexFlatL2(4)).tobytes()
    ),
}


@pytest.mark.parametrize("checksums", [True, False], ids=["with-checksums", "format-1-without-checksums"])
@pytest.mark.parametrize("tamper", sorted(TAMPERED_VECTORS))
def test_a_tampered_faiss_file(home: Path, image_folder: Path, tmp_path: Path, tamper: str, checksums: bool) -> None:
    manifest = edit_manifest(home, lambda m: m) if checksums else to_format_1(Collection(home / "c"), checksums=False)
    path = home / "c" / manifest["files"]["vectors"]
    path.write_bytes(TAMPERED_VECTORS[tamper](path.read_bytes(), other_index(home, image_folder, tmp_path)))
    if tamper == "flipped-vector-byte" and not checksums:
        # Without a checksum, the changed float is found by comparing the vectors with the stored embeddings.
        assert_refused(home, image_folder, manifest["files"]["vectors"], "differs from its embedding", info=False)
        return
    if checksums:
        assert_refused(
            home, image_folder, manifest["files"]["vectors"], "sha256 does not match manifest.json", info=False
        )
    else:
        assert_refused(home, image_folder, "c", info=False)


@pytest.mark.parametrize("key", ["segment", "skipped"])
@pytest.mark.parametrize("checksums", [True, False], ids=["with-checksums", "format-1-without-checksums"])
def test_tampered_parquet_files(home: Path, image_folder: Path, tmp_path: Path, key: str, checksums: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = edit_manifest(home, lambda m: m) if checksums else to_format_1(Collection(home / "c"), checksums=False)
    path = home / "c" / file_of(manifest, key)
    table = pq.read_table(path)
    pq.write_table(
        table.drop_columns([table.column_names[-1]]).append_column("x", pa.array([1] * table.num_rows)), path
    )
    assert_refused(home, image_folder, file_of(manifest, key), info=False)  # info reads the manifest alone


@pytest.mark.parametrize("damage", ["nan", "infinity", "differs-from-its-vector"])
def test_damaged_embeddings_that_checksums_cannot_see(home: Path, image_folder: Path, damage: str) -> None:
    """A metadata file rewritten with a bad embedding and its checksum recomputed (a bug, or a careful forger)
    passes the checksum check: the embeddings themselves are checked, and the file and row are named."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from simsearch.store.collection import embeddings_of

    manifest = json.loads((home / "c" / "manifest.json").read_text())
    path = home / "c" / file_of(manifest, "segment")
    table = pq.read_table(path)
    embeddings, row = embeddings_of(table).copy(), 7
    embeddings[row, 1] = {"nan": np.nan, "infinity": -np.inf}.get(damage, embeddings[row, 1] + 0.5)
    column = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.ravel(), pa.float32()), embeddings.shape[1])
    table = table.set_column(table.schema.get_field_index("embedding"), table.schema.field("embedding"), column)
    pq.write_table(table, path)
    edit_manifest(home, lambda m: m["segments"][0].update(sha256=hashlib.sha256(path.read_bytes()).hexdigest()))
    row_id, name = table.column("id")[row].as_py(), table.column("path")[row].as_py()
    if damage == "differs-from-its-vector":
        expected = f"the vector of id {row_id} ({name!r}) differs from its embedding in {path.name}"
        assert_refused(home, image_folder, manifest["files"]["vectors"], expected, info=False)
    else:
        expected = f"{path}: row {row} (id {row_id}, {name!r}) holds a NaN or infinite embedding (1 rows in all)"
        assert_refused(home, image_folder, expected, info=False)


def test_index_checks_know_every_index_that_keeps_ids() -> None:
    """The load-time checks accept the index types a collection can hold (ids in an IndexIDMap2, or in an
    IVF index's inverted lists) and name what they refuse."""
    import faiss

    from simsearch import vectors

    x = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    ids = np.arange(300, dtype=np.int64) * 7
    flat = vectors.new_index(8)
    vectors.add_vectors(flat, x, ids)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(8), 8, 4)
    ivf.train(x)
    ivf.add_with_ids(x, ids)
    for index in (flat, ivf, vectors.deserialize(vectors.serialize(ivf))):
        assert vectors.index_problem(index, 8, "l2") == ""
        np.testing.assert_array_equal(np.sort(vectors.index_ids(index)), ids)
    assert "metric does not match" in vectors.index_problem(ivf, 8, "cosine")
    assert "d=8, the collection d=4" in vectors.index_problem(ivf, 4, "l2")
    assert "not an index with ids" in vectors.index_problem(faiss.IndexFlatL2(8), 8, "l2")


# ----------------------------------------------------------------------------------------------------------------
# encoder.json and weights.safetensors, in a model folder and inside a collection


def tamper_config(model: Path, change: Callable[[dict[str, Any]], object]) -> None:
    path = model / "encoder.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


BAD_CONFIGS = {
    "unknown-family": (lambda c: c.update(family="transformer"), "unknown family 'transformer'"),
    "family-not-a-string": (lambda c: c.update(family=["autoencoder"]), "unknown family"),
    "arch-a-list": (lambda c: c.update(arch=[["dim", 4]]), "'arch' must be an object"),
    "dim-a-string": (lambda c: c.update(dim="4"), "'dim' must be a positive integer"),
    "dim-a-bool": (lambda c: c.update(dim=True), "'dim' must be a positive integer"),
    "size-a-string": (lambda c: c["preprocess"].update(size="16x16"), "preprocess.size must be [H, W]"),
    "size-huge": (lambda c: c["preprocess"].update(size=[10**6, 10**6]), "sides 1..1024"),
    "channels-text": (lambda c: c["preprocess"].update(channels="one"), "preprocess.channels"),
    "std-zero": (lambda c: c["preprocess"].update(std=[0.0]), "std must be positive"),
    "mean-nan": (lambda c: c["preprocess"].update(mean=[float("nan")]), "finite"),
    "preprocess-missing": (lambda c: c.pop("preprocess"), "missing or malformed field ('preprocess')"),
    "weights-hash-a-number": (lambda c: c.update(weights_sha256=12), "'weights_sha256' strings"),
    "metric-unknown": (lambda c: c.update(metric="manhattan"), "unknown metric"),
    "threshold-a-list": (lambda c: c.update(threshold=[0.5]), "'threshold' and 'training' must be objects"),
    "unknown-arch-argument": (lambda c: c["arch"].update(depth=3), "cannot build the autoencoder architecture"),
    "arch-of-a-giant": (lambda c: c["arch"].update(widths=[1 << 20, 1 << 20]), "tensors do not fit"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_a_bad_encoder_json_is_refused(tmp_path: Path, case: str) -> None:
    change, message = BAD_CONFIGS[case]
    model = tiny_model(tmp_path / "m")
    tamper_config(model, change)
    started = time.monotonic()
    with pytest.raises(ModelError, match=r"encoder\.json|weights\.safetensors") as info:
        Encoder.load(model)
    assert message in str(info.value)
    assert time.monotonic() - started < 10  # the giant is measured, never built (building it takes minutes)


def test_a_bad_encoder_json_inside_a_collection(home: Path, image_folder: Path) -> None:
    tamper_config(home / "c" / "encoder", lambda c: c.update(family="transformer"))
    assert_refused(home, image_folder, "encoder.json", "unknown family 'transformer'", encoder=True)


def rewrite_weights(model: Path, change: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> None:
    path = model / "weights.safetensors"
    save_file(change(load_file(str(path))), str(path))
    fix_weights_hash(model)


BAD_WEIGHTS = {
    "a-tensor-missing": (lambda w: {k: v for k, v in w.items() if k != "head.bias"}, "missing head.bias"),
    "an-extra-tensor": (lambda w: {**w, "backdoor": torch.zeros(3)}, "unexpected backdoor"),
    "a-wrong-shape": (lambda w: {**w, "head.weight": torch.zeros(5, 7)}, "head.weight is [5, 7]"),
    "another-architecture": (
        lambda w: ConvEncoder(channels=1, size=[16, 16], dim=4, widths=[8, 16]).state_dict(),
        "the architecture needs",
    ),
    "nan-weights": (lambda w: {**w, "head.bias": torch.full_like(w["head.bias"], float("nan"))}, "NaN or infinite"),
}


@pytest.mark.parametrize("case", sorted(BAD_WEIGHTS))
def test_weights_that_do_not_fit_the_architecture(home: Path, image_folder: Path, tmp_path: Path, case: str) -> None:
    change, message = BAD_WEIGHTS[case]
    model = tiny_model(tmp_path / "m")
    rewrite_weights(model, change)
    with pytest.raises(ModelError, match=r"weights\.safetensors") as info:
        Encoder.load(model)
    assert message in str(info.value)
    # The same weights inside a collection (a forger also rewrites the manifest's fingerprint): refused the same way.
    shutil.rmtree(home / "c" / "encoder")
    shutil.copytree(model, home / "c" / "encoder")
    edit_manifest(home, lambda m: m["encoder"].update(fingerprint="forged"))
    assert_refused(home, image_folder, "weights.safetensors", message, encoder=True)


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"\xff" * 64], ids=["empty", "short", "garbage"])
def test_a_weights_file_that_is_not_safetensors(tmp_path: Path, content: bytes) -> None:
    model = tiny_model(tmp_path / "m")
    (model / "weights.safetensors").write_bytes(content)
    fix_weights_hash(model)
    with pytest.raises(ModelError, match="not a safetensors file"):
        Encoder.load(model)


# ----------------------------------------------------------------------------------------------------------------
# pickle: never


@pytest.mark.parametrize("form", ["pickle", "torch.save"])
def test_a_pickle_in_place_of_the_weights_never_runs(home: Path, image_folder: Path, tmp_path: Path, form: str):
    marker = tmp_path / "pwned"
    weights = home / "c" / "encoder" / "weights.safetensors"
    if form == "pickle":
        weights.write_bytes(pickle.dumps(Payload(marker)))
    else:
        torch.save({"head.weight": Payload(marker)}, weights)  # a zip holding data.pkl: what torch.load unpickles
    pickle.loads(pickle.dumps(Payload(tmp_path / "control")))  # the payload is real: unpickled, it runs
    assert (tmp_path / "control").exists()
    fix_weights_hash(home / "c" / "encoder")
    edit_manifest(home, lambda m: m["encoder"].update(fingerprint="forged"))
    with pytest.raises(ModelError, match="not a safetensors file"):
        Encoder.load(home / "c" / "encoder")
    assert_refused(home, image_folder, "weights.safetensors", "not a safetensors file", encoder=True)
    assert not marker.exists()


def test_loading_never_unpickles(home: Path, image_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every unpickling entry point booby-trapped, a model folder and a collection still load and answer."""

    def trap(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    for target, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(target, name, trap)
    result = invoke("query", image_folder / "blob" / "1.png", "-k", "2", "--home", home, "--name", "c", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["neighbours"][0]["path"] == "blob/1.png"
    assert Searcher(Collection(home / "c"), use_gpu=False).count == 15
    assert np.isfinite(Encoder.load(home / "c" / "encoder").embed(np.zeros((1, 1, 16, 16), np.float32))).all()
