"""Readers for the benchmark data in ../shared/data (see its README), and export to image folders.

simsearch never imports bench; these helpers turn the shared files into the folders of PNGs that users have,
so that every benchmark goes through simsearch's own code paths.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

SHARED_DATA = Path(
    os.environ.get("SIMSEARCH_BENCH_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
FASHION_CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped): magic 2051 → (n, rows, cols) uint8 images; 2049 → (n,) labels."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    magic = int.from_bytes(data[0:4], "big")
    count = int.from_bytes(data[4:8], "big")
    if magic == 2051:
        rows, cols = int.from_bytes(data[8:12], "big"), int.from_bytes(data[12:16], "big")
        return np.frombuffer(data, np.uint8, count * rows * cols, 16).reshape(count, rows, cols)
    if magic == 2049:
        return np.frombuffer(data, np.uint8, count, 8).copy()
    raise ValueError(f"{path}: not an IDX file (magic {magic})")


def export_fashion(target: Path, split: str) -> Path:
    """Write the Fashion-MNIST subset's ``split`` (train or t10k) as ``target/<class>/<n>.png``."""
    folder = SHARED_DATA / "fashion-mnist"
    images = read_idx(folder / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(folder / f"{split}-labels-idx1-ubyte.gz")
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = target / FASHION_CLASSES[label] / f"{i:05d}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
    return target


def copy_omniglot(target: Path, alphabets: list[str]) -> Path:
    """A folder holding the given Omniglot alphabets: labels are ``Alphabet/character``."""
    source = SHARED_DATA / "omniglot" / "images_background_small1"
    for alphabet in alphabets:
        if not (target / alphabet).exists():
            shutil.copytree(source / alphabet, target / alphabet)
    return target


FACES = "faces-att"
SIGNATURES = "signatures-sigcomp"
FORGERY_SUFFIX = "_forg"


def identity_folders(root: Path) -> dict[str, list[Path]]:
    """The identities of a verification data set and their folders: ``sN`` → [sN] for faces; ``WWW`` →
    [WWW, WWW_forg] for signatures (the skilled forgeries of a writer belong to that writer's identity)."""
    identities: dict[str, list[Path]] = {}
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")):
        identities.setdefault(folder.name.removesuffix(FORGERY_SUFFIX), []).append(folder)
    return identities


def image_files(folder: Path) -> list[Path]:
    """The image files of one identity folder, sorted."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in {".png", ".pgm"})


def copy_identities(target: Path, identities: dict[str, list[Path]], names: list[str]) -> Path:
    """A folder holding every folder of the named identities, as a user would have them: labels are the folder
    names (``WWW`` and ``WWW_forg`` are two labels)."""
    for name in names:
        for folder in identities[name]:
            if not (target / folder.name).exists():
                shutil.copytree(folder, target / folder.name)
    return target
