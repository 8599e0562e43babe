"""Shared fixtures: tiny generated image folders and fast training settings. No data files, no network."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

if TYPE_CHECKING:
    from simsearch.store.collection import Collection, Snapshot

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pattern(kind: str, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """A noisy grey (size, size) uint8 image of one of three easily told-apart kinds."""
    base = np.zeros((size, size), np.float32)
    if kind == "hbars":
        base[::4] = 1.0
        base[1::4] = 1.0
    elif kind == "vbars":
        base[:, ::4] = 1.0
        base[:, 1::4] = 1.0
    elif kind == "dots":
        base[::4, ::4] = 1.0
    else:  # "blob"
        yy, xx = np.mgrid[:size, :size]
        base = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2).astype(np.float32)
    noisy = base * 200 + rng.normal(0, 12, base.shape) + 20
    return np.clip(noisy, 0, 255).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    """``img`` saved in format ``fmt`` (Pillow's name), as bytes."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def handmade_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width×height 8-bit grey pixels but whose data is a few bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


def write_folder(root: Path, per_class: int = 5, seed: int = 0, kinds=("hbars", "vbars", "blob")) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for kind in kinds:
        for i in range(per_class):
            path = root / kind / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pattern(kind, rng)).save(path)
            paths.append(path)
    return paths


def run_with_timeout(fn, timeout: float):
    """Run fn() on a daemon thread; fail (instead of hanging the suite) if it takes longer than timeout."""
    result: dict[str, object] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # pragma: no cover - re-raised below
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"did not finish within {timeout}s"
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]


def consistent_snapshot(collection: Collection) -> Snapshot:
    """Load the collection and check that its generation is whole: manifest, metadata and vectors agree."""
    from simsearch.store.collection import embeddings_of

    snapshot = collection.load()
    meta, index = snapshot.meta, snapshot.index
    ids = meta.column("id").to_numpy()
    assert snapshot.manifest["count"] == meta.num_rows == index.ntotal
    assert len(set(ids.tolist())) == len(ids) and len(set(meta.column("path").to_pylist())) == len(ids)
    from simsearch import vectors

    np.testing.assert_array_equal(np.sort(vectors.index_ids(index)), np.sort(ids))
    by_id = dict(zip(ids.tolist(), embeddings_of(meta), strict=True))
    metric = snapshot.metric
    for stored_ids, stored in vectors.stored_vectors(index):  # FAISS holds the embedding of the row with its id
        for row_id, vector in zip(stored_ids.tolist(), stored, strict=True):
            np.testing.assert_array_equal(vector, vectors.prepare(by_id[row_id][None], metric)[0])
    return snapshot


def current_files(collection: Collection) -> list[str]:
    """What the folder of a collection should hold and nothing more: its own files and what its manifest names."""
    from simsearch.store.formats import manifest_files

    return sorted([".lock", ".simsearch.json", "manifest.json", *manifest_files(collection.read_manifest())])


def to_format_1(collection: Collection, checksums: bool = True) -> dict:
    """Rewrite a collection as format 1 kept it (one metadata file, one FAISS file and one skipped list per
    generation; checksums from the day they were kept): what an older simsearch left, to test reading and
    converting it. Returns the new manifest."""
    import hashlib
    import json

    from simsearch import vectors
    from simsearch.store.formats import FORMAT_1, manifest_files
    from simsearch.store.segments import write_parquet

    snapshot = collection.load()
    manifest = dict(snapshot.manifest)
    gen = f"{manifest['generation']:06d}"
    files = {
        "meta": f"meta-{gen}.parquet",
        "skipped": f"skipped-{gen}.parquet",
        "vectors": f"vectors-{gen}.faiss",
        "encoder": manifest["files"]["encoder"],
    }
    old = [name for name in manifest_files(manifest) if name != files["encoder"]]
    write_parquet(snapshot.meta, collection.path / files["meta"])
    write_parquet(snapshot.skipped, collection.path / files["skipped"])
    vectors.write_file(snapshot.index, collection.path / files["vectors"])
    for name in old:
        if name not in files.values():
            (collection.path / name).unlink()
    for key in ("segments", "skipped_count", "sha256"):
        manifest.pop(key, None)
    manifest.update(format=FORMAT_1, files=files)
    if checksums:
        manifest["sha256"] = {
            key: hashlib.sha256((collection.path / files[key]).read_bytes()).hexdigest()
            for key in ("meta", "skipped", "vectors")
        }
    (collection.path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


@pytest.fixture(autouse=True)
def no_progress_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands show no progress (``SIMSEARCH_PROGRESS=off``): tests read stderr for errors and notes, and output
    captured off a terminal would otherwise hold plain progress lines. tests/cli/test_progress.py turns them on."""
    monkeypatch.setenv("SIMSEARCH_PROGRESS", "off")


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """15 labelled 16×16 grey PNGs: hbars/, vbars/, blob/ with 5 each."""
    root = tmp_path / "images"
    write_folder(root)
    return root


@pytest.fixture
def fast_train():
    from simsearch.training import TrainConfig

    return TrainConfig(epochs=3, max_seconds=120, batch_size=8, dim=8, device="cpu")  # epochs bind, not the clock


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible to torch)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def calibrated_pixels_model(images: Path, out: Path) -> Path:
    """A pixels encoder (16×16 grey) whose threshold record is calibrated on every pair of ``images``' labelled
    files, saved as a model folder at ``out``: a verification model that needs no training."""
    from simsearch import metrics
    from simsearch.io import Preprocess, find_images, load_images
    from simsearch.training import pixels_encoder
    from simsearch.training.sampling import encode_labels, verification_pairs

    encoder = pixels_encoder(Preprocess(size=(16, 16), channels=1))
    entries, _ = find_images(images)
    arrays = np.stack([item.array for item in load_images([e.path for e in entries], encoder.preprocess)])
    y, classes = encode_labels([e.label for e in entries])
    i, j, same = verification_pairs(y, np.random.default_rng(0))
    z = encoder.embed(arrays)
    encoder.threshold = metrics.calibrate(np.linalg.norm(z[i] - z[j], axis=1), same, identities=len(classes))
    encoder.save(out)
    return out


@pytest.fixture
def pixels_model(tmp_path: Path, image_folder: Path) -> Path:
    """A calibrated pixels model folder for ``image_folder`` (see ``calibrated_pixels_model``)."""
    return calibrated_pixels_model(image_folder, tmp_path / "model")


@dataclass
class Child:
    """One process started by the fork server: its pid, event log and output files, and how it ended."""

    pid: int
    log: Path
    out: Path
    status: dict = field(default_factory=dict)

    def lines(self, kind: str) -> list[str]:
        text = self.log.read_text() if self.log.exists() else ""
        return [line[len(kind) + 1 :] for line in text.splitlines() if line.startswith(kind + " ")]

    def events(self) -> list[str]:
        """What the child did, one entry per event, in order (the number is the index)."""
        return [line.split(" ", 1)[1] for line in self.lines("event")]

    def embedded(self) -> list[str]:
        """The paths (relative to their root) of the images the child decoded to embed."""
        return self.lines("embed")

    def output(self) -> str:
        return self.out.read_text() if self.out.exists() else ""

    @property
    def killed(self) -> bool:
        return self.status.get("signal") == signal.SIGKILL


class ForkServer:
    """Client of tests/fork_server.py: starts real ``simsearch`` processes in a few milliseconds each."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.count = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fork_server"],
            cwd=Path(__file__).resolve().parents[1],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _ask(self, request: dict) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the fork server died"
        return json.loads(line)

    def start(
        self,
        *argv: object,
        kill_at: int | None = None,
        pause_at: int | None = None,
        release: Path | None = None,
        step_delay: float = 0.0,
    ) -> Child:
        """Start ``simsearch *argv``; it SIGKILLs itself at event ``kill_at``, or waits at ``pause_at`` until
        the file ``release`` exists, and sleeps ``step_delay`` seconds after every event."""
        self.count += 1
        log, out = self.workdir / f"{self.count}.log", self.workdir / f"{self.count}.out"
        reply = self._ask(
            {
                "op": "start",
                "argv": [str(a) for a in argv],
                "log": str(log),
                "out": str(out),
                "kill_at": kill_at,
                "pause_at": pause_at,
                "release": str(release) if release else None,
                "step_delay": step_delay,
            }
        )
        return Child(reply["pid"], log, out)

    def wait(self, child: Child, timeout: float = 120) -> Child:
        if not child.status:
            child.status = self._ask({"op": "wait", "pid": child.pid, "timeout": timeout})
        assert "timeout" not in child.status, f"simsearch {child.pid} hung: {child.output()}"
        return child

    def running(self, child: Child) -> bool:
        """True while the child runs; once it has ended, its status is recorded."""
        reply = self._ask({"op": "poll", "pid": child.pid})
        if reply.get("running"):
            return True
        child.status = reply
        return False

    def run(self, *argv: object, kill_at: int | None = None) -> Child:
        return self.wait(self.start(*argv, kill_at=kill_at))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture
def quick_tmp(tmp_path: Path) -> Iterator[Path]:
    """A temporary folder in RAM (/dev/shm) when there is one, else ``tmp_path``.

    For tests that run simsearch dozens of times: fsync on a real disk costs tens of milliseconds per commit,
    on tmpfs nothing. What a killed process leaves behind is the same on both (its writes are in the page
    cache either way; fsync matters only when the machine itself goes down).
    """
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="simsearch-test-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def fork_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer]:
    """One fork server for the session (it imports torch once; each simsearch process then starts at once)."""
    server = ForkServer(tmp_path_factory.mktemp("fork-server"))
    yield server
    server.close()
