"""Shared fixtures: tiny generated image folders and fast training settings. No data files, no network."""

from __future__ import annotations

import io
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """15 labelled 16×16 grey PNGs: hbars/, vbars/, blob/ with 5 each."""
    root = tmp_path / "images"
    write_folder(root)
    return root


@pytest.fixture
def fast_train():
    from simsearch.train import TrainConfig

    return TrainConfig(epochs=3, max_seconds=20, batch_size=8, dim=8, device="cpu")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible to torch)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
