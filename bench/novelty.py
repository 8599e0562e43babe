"""How often the novelty check (``simsearch.models.novelty``) flags inputs "unfamiliar", per source.

Two small Siamese models are trained through simsearch's own code: one on 9 writers of the SigComp signatures
(genuine and forgery folders; writers 058–062 kept out), one on AT&T faces s1–s22 (s23–s28 kept out). Each is
then shown the identities it never saw (which should be flagged rarely) and inputs of other kinds (which should
be flagged): the other model's data, Fashion-MNIST, Omniglot, uniform noise, blank pages, and synthetic colour
"photos" (gradients, shapes and noise). Beside the model's check, the embedding-space alternative is measured:
an input is flagged when its nearest training embedding is farther than any training image's nearest embedding
of another label.

    python bench/novelty.py [--work /tmp/novelty] [--epochs 40]   # a few minutes on a CPU
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bench.datasets import SHARED_DATA, read_idx
from simsearch.embedding import embed_files
from simsearch.io import find_images
from simsearch.models.encoder import Encoder
from simsearch.training import TrainConfig, train_on_folder
from simsearch.training.sampling import encode_labels


def copy_labels(source: Path, target: Path, names: list[str]) -> Path:
    for name in names:
        if not (target / name).exists():
            shutil.copytree(source / name, target / name)
    return target


def save(folder: Path, n: int, image: Image.Image | np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(folder / f"{n:04d}.png")


def other_kinds(root: Path, seed: int = 0) -> dict[str, Path]:
    """Folders of inputs that are neither signatures nor faces."""
    rng = np.random.default_rng(seed)
    fashion = read_idx(SHARED_DATA / "fashion-mnist/t10k-images-idx3-ubyte.gz")
    for n, i in enumerate(rng.choice(len(fashion), 300, replace=False)):
        save(root / "fashion", n, fashion[i])
    omniglot = sorted((SHARED_DATA / "omniglot/images_background_small1").rglob("*.png"))
    for n, i in enumerate(rng.choice(len(omniglot), 300, replace=False)):
        save(root / "omniglot", n, Image.open(omniglot[i]))
    for n in range(50):
        h, w = (int(v) for v in rng.integers(40, 300, 2))
        shape = (h, w) if n % 2 else (h, w, 3)
        save(root / "noise", n, rng.integers(0, 256, shape, dtype=np.uint8))
    for n in range(20):  # white, off-white, light grey, black; half with faint noise
        h, w = (int(v) for v in rng.integers(40, 300, 2))
        page = np.full((h, w), [255, 250, 240, 230, 0][n % 5], np.float64)
        page += rng.normal(0, 3, (h, w)) if n >= 10 else 0
        save(root / "blank", n, np.clip(page, 0, 255).astype(np.uint8))
    for n in range(60):
        h, w = (int(v) for v in rng.integers(120, 300, 2))
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        planes = [np.clip(255 * (a * yy + b * xx + c), 0, 255) for a, b, c in rng.uniform(-1, 1, (3, 3))]
        photo = Image.fromarray(np.stack(planes, -1).astype(np.uint8))
        draw = ImageDraw.Draw(photo)
        for _ in range(int(rng.integers(3, 12))):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            box = (x0, y0, x0 + int(rng.integers(10, w)), y0 + int(rng.integers(10, h)))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        pixels = np.asarray(photo).astype(np.float64) + rng.normal(0, 12, (h, w, 3))
        save(root / "photo", n, np.clip(pixels, 0, 255).astype(np.uint8))
    return {name: root / name for name in ("fashion", "omniglot", "noise", "blank", "photo")}


def embedding_flags(encoder: Encoder, train: Path, z: np.ndarray) -> np.ndarray:
    """The embedding-space alternative: nearest training embedding beyond every training image's nearest of
    another label."""
    entries, _ = find_images(train)
    zt = embed_files(encoder, [e.path for e in entries], convert=True).embeddings
    y, _ = encode_labels([e.label for e in entries])
    d = np.linalg.norm(zt[:, None] - zt[None], axis=-1)
    threshold = np.where(y[:, None] != y[None], d, np.inf).min(axis=1).max()
    return np.linalg.norm(z[:, None] - zt[None], axis=-1).min(axis=1) > threshold


def rates(encoder: Encoder, train: Path, sources: dict[str, Path]) -> list[str]:
    lines = []
    for name, folder in sources.items():
        entries, _ = find_images(folder)
        embedded = embed_files(encoder, [e.path for e in entries], convert=True)
        flags = embedded.unfamiliar
        assert flags is not None, "the model has no reference"
        nearest = embedding_flags(encoder, train, embedded.embeddings)
        lines.append(f"| {name} | {len(flags)} | {flags.mean():.1%} | {nearest.mean():.1%} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/novelty"))
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    work = args.work
    signatures, faces = SHARED_DATA / "signatures-sigcomp", SHARED_DATA / "faces-att"
    seen = [f"{w:03d}{s}" for w in range(49, 58) for s in ("", "_forg")]
    unseen = [f"{w:03d}{s}" for w in range(58, 63) for s in ("", "_forg")]
    sig_train = copy_labels(signatures, work / "sig-train", seen)
    sig_unseen = copy_labels(signatures, work / "sig-unseen", unseen)
    face_train = copy_labels(faces, work / "faces-train", [f"s{i}" for i in range(1, 23)])
    face_unseen = copy_labels(faces, work / "faces-unseen", [f"s{i}" for i in range(23, 29)])
    others = other_kinds(work / "other")
    config = TrainConfig(family="siamese", epochs=args.epochs, max_seconds=300, device="cpu")
    report = ["| source | images | flagged (reference) | flagged (embedding NN) |", "| --- | ---: | ---: | ---: |"]
    for title, train, sources in (
        ("signature model", sig_train, {"unseen writers": sig_unseen, "faces": face_train, **others}),
        ("faces model", face_train, {"unseen faces": face_unseen, "signatures": sig_unseen, **others}),
    ):
        encoder = train_on_folder(train, config)
        print(f"\n{title} ({encoder.training['images']} images, input {encoder.preprocess.size}):\n")
        print("\n".join([*report, *rates(encoder, train, sources)]))


if __name__ == "__main__":
    main()
