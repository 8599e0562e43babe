"""Near-duplicate finding: ``simsearch duplicates`` beside perceptual hashes (pHash, dHash, wHash from the
``imagehash`` package) and raw pixels, on near-copies of real images mixed with distinct ones.

    python bench/duplicates.py                  # 10,000 and 100,000 images (35 minutes on this shared 2-core CPU)
    python bench/duplicates.py --quick          # 2,000 images, a 30-second autoencoder: a few minutes
    python bench/duplicates.py --render         # only write duplicates.md again from duplicates.json

**Corpus** (``make_corpus``, seeded): distinct *sources* — every real image of ../shared/data (MNIST test 10,000,
the Fashion-MNIST subset 8,058, Omniglot background-small-1 2,720, AT&T faces 280, SigComp signatures 336; exact
pixel duplicates dropped: 21,402), taken in a seeded order, and when more are needed (100,000 images) 2×2 mosaics
of four random MNIST or Fashion-MNIST images. 28×28 images are upscaled ×4 (bicubic) to 112×112 before copies are
made, others brought to at most 112 on the long side. 30% of the sources get 1–3 near-copies each; each copy is
made by one transform (half of them) or two: a mirror image, a turn of 2–8°, a crop keeping 80–95% of each side,
a resize ×0.5–0.8 or ×1.25–1.6, a tone shift (contrast ×0.75–1.25, brightness ±25 of 255; the images are grey, so
no colour shift), JPEG re-encoding at quality 30–85. Every file of one source is a near-duplicate of every other;
every other pair is distinct. The files are written to disk and every method reads them from there.

**Methods** (each from the files to groups; groups are the connected components of the pairs found):

* simsearch, images: ``simsearch duplicates FOLDER`` — ``--model pixels`` (the default for images), mirror-invariant,
  the relative rule at its default α — through the library calls the command makes (``load_compared``,
  ``find_duplicates``).
* simsearch, collection: ``simsearch index FOLDER`` with every default (the encoder it trains: an autoencoder, at most
  300 s), then ``simsearch duplicates --name C`` (stored embeddings, the relative rule at its default). Index time
  (training, embedding) is reported apart from the duplicates' own time.
* simsearch, autoencoder mirror-invariant (10,000 only): ``simsearch duplicates FOLDER --model C/encoder``.
* perceptual hashes, 64 bits: pHash, dHash, wHash (``imagehash``), paired when their Hamming distance is at most
  the customary 10 (imagededup's default ``max_distance_threshold``), and, in rows of their own, at the threshold
  of best group F1 among 0–10 (chosen on the answers: an oracle). Hashes are computed in a process pool of one process per
  core; pairs by FAISS's binary index (``IndexBinaryFlat.range_search``).
* raw pixels: 16×16 grey letterboxed (simsearch's loader), Euclidean, at the distance of best group F1 (an oracle).

**Figures**: *pairs* (direct): precision and recall of the pairs each method declares; *groups*: of the pairs that
end in one group (a component), which is what a user sees — a false pair may merge two groups; *exact groups*: the
share of true groups found exactly as one group; recall by transform: the share of copies made by that one
transform that end in their source's group. Time: wall seconds from the folder to the groups (simsearch finds the
images by their content; the other rows list the folder by extension, as imagededup's ``find_duplicates(image_dir=…,
recursive=True)`` does), the CPU's cores shared as each method does (simsearch's loader and the hashes: one process
per core); the corpus's making, and for the collection the index run, are not included (reported apart). The α
sweep (the relative rule at several α, on the same neighbours) is how the default α was chosen: 0.65, next to the
best group F1 at 10,000 images (0.7: 77.4% against 76.8%) but with precision kept at 96% at 100,000 (0.7: 93%).

Writes bench/results/duplicates[-TAG].json and .md.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the command line does (cli.core.main)

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.datasets import SHARED_DATA, read_idx

#: The side real images are brought to before copies are made: 28×28 digits and clothes are upscaled ×4 (bicubic).
SIDE = 112
#: The near-copy transforms, in the order they are applied when a copy gets two.
TRANSFORMS = ("mirror", "rotate", "crop", "resize", "tone", "jpeg")


@dataclass
class Source:
    """One distinct image: its pixels (grey uint8, at most SIDE on the long side) and where it came from."""

    pixels: np.ndarray
    dataset: str


def load_real() -> list[Source]:
    """Every real image of ../shared/data that is a distinct picture: MNIST test (10,000), the Fashion-MNIST subset
    (8,058), Omniglot background-small-1 (2,720), AT&T faces (280), SigComp signatures (336); exact pixel duplicates
    among them are dropped. 28×28 images are upscaled ×4 (bicubic); others are brought to at most SIDE on the
    long side."""
    out: list[Source] = []
    seen: set[bytes] = set()

    def add(pixels: np.ndarray, dataset: str) -> None:
        key = pixels.tobytes() + bytes(str(pixels.shape), "ascii")
        if key in seen:
            return
        seen.add(key)
        img = Image.fromarray(pixels)
        scale = SIDE / max(img.size)
        if scale != 1:
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
        out.append(Source(np.asarray(img), dataset))

    for image in read_idx(SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz"):
        add(image, "mnist")
    for split in ("train", "t10k"):
        for image in read_idx(SHARED_DATA / "fashion-mnist" / f"{split}-images-idx3-ubyte.gz"):
            add(image, "fashion")
    for path in sorted((SHARED_DATA / "omniglot" / "images_background_small1").rglob("*.png")):
        add(np.asarray(Image.open(path).convert("L")), "omniglot")
    for path in sorted((SHARED_DATA / "faces-att").rglob("*.pgm")):
        add(np.asarray(Image.open(path).convert("L")), "faces")
    for path in sorted((SHARED_DATA / "signatures-sigcomp").rglob("*.png")):
        add(np.asarray(Image.open(path).convert("L")), "signatures")
    return out


def mosaics(n: int, seed: int) -> list[Source]:
    """``n`` more distinct images: 2×2 mosaics of four random MNIST or Fashion-MNIST images (one data set per
    mosaic), 56×56 upscaled ×2 to SIDE."""
    rng = np.random.default_rng(seed)
    pools = {
        "mnist": read_idx(SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz"),
        "fashion": np.concatenate(
            [read_idx(SHARED_DATA / "fashion-mnist" / f"{s}-images-idx3-ubyte.gz") for s in ("train", "t10k")]
        ),
    }
    out = []
    for _ in range(n):
        name = "mnist" if rng.random() < 0.5 else "fashion"
        pool = pools[name]
        a, b, c, d = pool[rng.choice(len(pool), 4, replace=False)]
        tile = np.block([[a, b], [c, d]])
        out.append(Source(np.asarray(Image.fromarray(tile).resize((SIDE, SIDE), Image.BICUBIC)), f"mosaic-{name}"))
    return out


def _background(img: Image.Image) -> int:
    """The commonest border value: what a rotation fills the corners with."""
    a = np.asarray(img)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return int(np.bincount(border, minlength=256).argmax())


def near_copy(pixels: np.ndarray, kinds: tuple[str, ...], rng: np.random.Generator) -> tuple[bytes, str]:
    """A near-copy of ``pixels`` made by ``kinds`` (TRANSFORMS, in that order): the encoded file and its suffix.

    mirror: left–right; rotate: 2–8° either way, corners filled with the background; crop: 80–95% of each side kept,
    at a random place; resize: ×0.5–0.8 or ×1.25–1.6; tone: contrast ×0.75–1.25 and brightness ±25 (of 255);
    jpeg: re-encoded at quality 30–85 (every other copy is saved as PNG)."""
    img = Image.fromarray(pixels)
    if "mirror" in kinds:
        img = ImageOps.mirror(img)
    if "rotate" in kinds:
        angle = float(rng.uniform(2, 8) * rng.choice([-1, 1]))
        img = img.rotate(angle, resample=Image.BILINEAR, fillcolor=_background(img))
    if "crop" in kinds:
        keep_w, keep_h = rng.uniform(0.8, 0.95, 2)
        w, h = max(8, round(img.width * keep_w)), max(8, round(img.height * keep_h))
        left, top = int(rng.integers(0, img.width - w + 1)), int(rng.integers(0, img.height - h + 1))
        img = img.crop((left, top, left + w, top + h))
    if "resize" in kinds:
        scale = float(rng.uniform(0.5, 0.8) if rng.random() < 0.5 else rng.uniform(1.25, 1.6))
        img = img.resize((max(8, round(img.width * scale)), max(8, round(img.height * scale))), Image.BICUBIC)
    if "tone" in kinds:
        contrast, brightness = rng.uniform(0.75, 1.25), rng.uniform(-25, 25)
        a = np.asarray(img, np.float32)
        a = (a - a.mean()) * contrast + a.mean() + brightness
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    if "jpeg" in kinds:
        img.save(buf, format="JPEG", quality=int(rng.integers(30, 86)))
        return buf.getvalue(), ".jpg"
    img.save(buf, format="PNG")
    return buf.getvalue(), ".png"


@dataclass
class Corpus:
    """A folder of images: ``files`` (relative paths), ``group`` (the source each file comes from: files of one
    source are near-duplicates of each other, every other pair is distinct), ``kinds`` (each copy's transforms;
    () for an original)."""

    root: Path
    files: list[str] = field(default_factory=list)
    group: list[int] = field(default_factory=list)
    kinds: list[tuple[str, ...]] = field(default_factory=list)
    dataset: list[str] = field(default_factory=list)

    def add(self, name: str, group: int, kinds: tuple[str, ...], dataset: str) -> None:
        self.files.append(name)
        self.group.append(group)
        self.kinds.append(kinds)
        self.dataset.append(dataset)

    def truth(self) -> np.ndarray:
        return np.asarray(self.group, np.int64)


def make_corpus(root: Path, total: int, real: list[Source], seed: int, copied: float = 0.3) -> Corpus:
    """``total`` image files under ``root``: distinct sources (the real images, then mosaics when more are needed),
    of which a share ``copied`` (seeded) get 1–3 near-copies each, each copy made by one transform (half of them)
    or two different ones."""
    rng = np.random.default_rng(seed)
    per_source = 1 + copied * 2.0  # files per source, on average
    n_sources = round(total / per_source)
    order = rng.permutation(len(real))
    sources = [real[i] for i in order[:n_sources]]
    if len(sources) < n_sources:
        sources += mosaics(n_sources - len(sources), seed + 1)
    corpus = Corpus(root)
    root.mkdir(parents=True, exist_ok=True)
    written = 0
    for g, source in enumerate(sources):
        if written >= total:
            break
        copies = int(rng.integers(1, 4)) if rng.random() < copied else 0
        copies = min(copies, total - written - 1)
        folder = root / f"{g // 1000:03d}"
        folder.mkdir(exist_ok=True)
        name = f"{folder.name}/{g:06d}.png"
        Image.fromarray(source.pixels).save(root / name)
        corpus.add(name, g, (), source.dataset)
        written += 1
        for c in range(copies):
            count = 1 if rng.random() < 0.5 else 2
            picked = tuple(sorted(rng.choice(len(TRANSFORMS), count, replace=False)))
            kinds = tuple(TRANSFORMS[i] for i in picked)
            data, suffix = near_copy(source.pixels, kinds, rng)
            name = f"{folder.name}/{g:06d}-{c}{suffix}"
            (root / name).write_bytes(data)
            corpus.add(name, g, kinds, source.dataset)
            written += 1
    return corpus


# --- scoring -----------------------------------------------------------------------------------------------------


def _pair_count(labels: np.ndarray) -> int:
    _, counts = np.unique(labels, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from simsearch.latent.duplicates import components

    return components(n, np.asarray(a, np.int64), np.asarray(b, np.int64))


def _prf(tp: int, found: int, truth: int) -> dict[str, float]:
    p = tp / found if found else 1.0
    r = tp / truth if truth else 1.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r) if p + r else 0.0, 4)}


def score(corpus: Corpus, a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """The figures of the pairs (a, b) (positions in the corpus, each pair once) against the corpus's groups."""
    group = corpus.truth()
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    direct = int((group[a] == group[b]).sum())
    return score_components(corpus, _components(len(group), a, b), direct, len(a))


def score_components(corpus: Corpus, component: np.ndarray, direct: int, found: int) -> dict[str, Any]:
    """The figures of a method that declared ``found`` pairs, ``direct`` of them true, grouped as ``component``."""
    group = corpus.truth()
    truth = _pair_count(group)
    both = component * (int(group.max()) + 1) + group
    found_in_groups = _pair_count(component)
    true_in_groups = _pair_count(both)
    # exact groups: a true group (of 2 or more) whose images form one component, alone
    sizes = np.bincount(group)
    comp_sizes = np.bincount(component)
    exact = 0
    multi = np.flatnonzero(sizes > 1)
    first = {int(g): int(i) for i, g in reversed(list(enumerate(group)))}
    for g in multi:
        c = component[first[int(g)]]
        exact += int(comp_sizes[c] == sizes[g] and (component[group == g] == c).all())
    by_kind: dict[str, list[bool]] = {}
    for i, kinds in enumerate(corpus.kinds):
        if len(kinds) == 1:
            source = first[int(group[i])]
            by_kind.setdefault(kinds[0], []).append(bool(component[i] == component[source]))
    two = [component[i] == component[first[int(group[i])]] for i, k in enumerate(corpus.kinds) if len(k) == 2]
    recall = {k: round(float(np.mean(v)), 3) for k, v in sorted(by_kind.items())}
    recall["two transforms"] = round(float(np.mean(two)), 3) if two else None
    return {
        "pairs_found": found,
        "pairs": _prf(direct, found, truth),
        "groups": _prf(true_in_groups, found_in_groups, truth),
        "exact_groups": round(exact / max(1, len(multi)), 4),
        "recall_by_transform": recall,
    }


# --- methods -----------------------------------------------------------------------------------------------------


def _hash_one(job: tuple[str, str]) -> bytes:
    import imagehash

    kind, path = job
    function = {"phash": imagehash.phash, "dhash": imagehash.dhash, "whash": imagehash.whash}[kind]
    with Image.open(path) as image:
        bits = function(image).hash.flatten()
    return np.packbits(bits).tobytes()


def hash_codes(kind: str, paths: list[Path], workers: int) -> np.ndarray:
    """Each file's 64-bit ``kind`` hash (n, 8) uint8, in a process pool."""
    jobs = [(kind, str(p)) for p in paths]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        codes = pool.map(_hash_one, jobs, chunksize=256)
    return np.frombuffer(b"".join(codes), np.uint8).reshape(len(paths), 8)


class Grouping:
    """Pairs declared a chunk at a time, never all held: their count, how many are true, and the components so far
    (each image's label, merged as edges come)."""

    def __init__(self, corpus: Corpus) -> None:
        self.group = corpus.truth()
        self.labels = np.arange(len(self.group), dtype=np.int64)
        self.found = self.direct = 0
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.held = 0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        self.found += len(a)
        self.direct += int((self.group[a] == self.group[b]).sum())
        self.pending.append((a, b))
        self.held += len(a)
        if self.held > 2_000_000:
            self.merge()

    def merge(self) -> None:
        if self.pending:
            a = np.concatenate([p[0] for p in self.pending])
            b = np.concatenate([p[1] for p in self.pending])
            merged = _components(len(self.labels), self.labels[a], self.labels[b])
            self.labels = merged[self.labels]
        self.pending, self.held = [], 0

    def figures(self, corpus: Corpus) -> dict[str, Any]:
        self.merge()
        return score_components(corpus, self.labels, self.direct, self.found)


def hamming_groupings(corpus: Corpus, codes: np.ndarray, thresholds: list[int], chunk: int = 256) -> list[Grouping]:
    """For each threshold, the pairs (a < b) of codes at most that many bits apart, grouped (FAISS's binary flat
    index, searched ``chunk`` codes at a time: at the customary threshold some hashes pair hundreds of millions)."""
    import faiss

    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index.add(codes)
    groupings = [Grouping(corpus) for _ in thresholds]
    for start in range(0, len(codes), chunk):
        part = codes[start : start + chunk]
        lims, distances, ids = index.range_search(part, max(thresholds) + 1)  # FAISS: strictly below the radius
        rows = start + np.repeat(np.arange(len(part)), np.diff(lims).astype(np.int64))
        keep = rows < ids
        rows, ids, distances = rows[keep], ids[keep].astype(np.int64), distances[keep]
        for t, grouping in zip(thresholds, groupings, strict=True):
            near = distances <= t
            grouping.add(rows[near], ids[near])
    for grouping in groupings:
        grouping.merge()
    return groupings


def best_threshold(corpus: Corpus, a: np.ndarray, b: np.ndarray, d: np.ndarray, thresholds: Any) -> tuple[float, dict]:
    """The threshold of ``thresholds`` whose pairs (distance at most it) have the best group F1, and its figures."""
    best: tuple[float, dict] | None = None
    for t in thresholds:
        keep = d <= t
        figures = score(corpus, a[keep], b[keep])
        if best is None or figures["groups"]["f1"] > best[1]["groups"]["f1"]:
            best = (float(t), figures)
    assert best is not None
    return best


class Clock:
    """Wall and CPU (this process and its finished children) seconds since it started."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def read(self) -> dict[str, float]:
        return {"wall": round(time.perf_counter() - self.wall, 2), "cpu": round(self._cpu() - self.cpu, 2)}


def list_folder(corpus: Corpus, paths: list[Path]) -> dict[str, float]:
    """The time a hash tool takes to list the folder it is given, as imagededup's ``find_duplicates(image_dir=…,
    recursive=True)`` does (every file under it with an image extension); the list is checked to be the corpus's
    files, which are then hashed in the corpus's order."""
    clock = Clock()
    listed = sorted(p for p in corpus.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    listing = clock.read()
    assert set(listed) == set(paths), "the folder holds other files than the corpus"
    return listing


#: The extensions a hash tool takes for images (imagededup's list, of the formats the corpus uses).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def run_hashes(corpus: Corpus, paths: list[Path], workers: int, rows: dict, customary: int = 10) -> None:
    for kind in ("phash", "dhash", "whash"):
        listing = list_folder(corpus, paths)
        clock = Clock()
        codes = hash_codes(kind, paths, workers)
        hashing = clock.read()
        clock = Clock()
        figures = hamming_groupings(corpus, codes, [customary])[0].figures(corpus)
        grouping = clock.read()
        seconds = {
            "listing": listing,
            "hashing": hashing,
            "grouping": grouping,
            "total": _sum(listing, hashing, grouping),
        }
        rows[f"{kind}, Hamming ≤ {customary}"] = {
            **figures,
            "method": f"{kind} (imagehash), Hamming distance ≤ {customary} of 64 bits (customary)",
            "threshold": customary,
            "seconds": seconds,
        }
        sweep = list(range(customary + 1))
        scored = [g.figures(corpus) for g in hamming_groupings(corpus, codes, sweep)]
        best = max(range(len(sweep)), key=lambda i: scored[i]["groups"]["f1"])
        rows[f"{kind}, best-F1 threshold"] = {
            **scored[best],
            "method": f"{kind} (imagehash), Hamming distance ≤ {sweep[best]} (the best group F1 of 0–{customary}: "
            "an oracle)",
            "threshold": sweep[best],
            "seconds": seconds,
        }
        print(
            f"  {kind}: {json.dumps(figures['groups'])} best {sweep[best]}: {json.dumps(scored[best]['groups'])} "
            f"{seconds['total']['wall']:.1f} s",
            flush=True,
        )


def _sum(*parts: dict[str, float]) -> dict[str, float]:
    return {k: round(sum(p[k] for p in parts), 2) for k in ("wall", "cpu")}


def positions(corpus: Corpus, names: list[str]) -> np.ndarray:
    where = {str(corpus.root / f): n for n, f in enumerate(corpus.files)}
    return np.array([where[name] for name in names], np.int64)


def alpha_sweep(corpus: Corpus, compared: Any, alphas: list[float]) -> dict[str, Any]:
    """The relative rule at each α on one set of neighbours (what ``find_duplicates`` computes for each)."""
    from simsearch.latent import duplicates as dup

    neighbours = dup.Neighbours(compared.items.vectors, None, dup.NEIGHBOURS)
    scale = dup.neighbour_scales(neighbours, dup.SCALE_RANK)
    where = positions(corpus, compared.items.names)
    out = {}
    for alpha in alphas:
        a, b, _, _ = dup.relative_pairs(neighbours.distances, neighbours.ids, alpha, scale)
        figures = score(corpus, where[a], where[b])
        out[f"{alpha:g}"] = {k: figures[k] for k in ("pairs", "groups", "exact_groups")}
    return out


def run_simsearch(corpus: Corpus, compared: Any, reading: dict, name: str, method: str, rows: dict) -> None:
    from simsearch.latent.duplicates import find_duplicates

    clock = Clock()
    found = find_duplicates(compared)
    search = clock.read()
    where = positions(corpus, found.names)
    a = where[np.array([p.a for p in found.pairs], np.int64)]
    b = where[np.array([p.b for p in found.pairs], np.int64)]
    rows[name] = {
        **score(corpus, a, b),
        "method": method,
        "threshold": found.rule.describe(),
        "compared": found.descriptor,
        "seconds": {"reading": reading, "search": search, "total": _sum(reading, search)},
    }
    print(f"  {name}: {json.dumps(rows[name]['groups'])} {rows[name]['seconds']['total']['wall']:.1f} s", flush=True)


def run_raw_pixels(corpus: Corpus, paths: list[Path], rows: dict) -> None:
    from simsearch.io import Preprocess, load_images
    from simsearch.latent.duplicates import Neighbours

    listing = list_folder(corpus, paths)
    clock = Clock()
    spec = Preprocess(size=(16, 16), channels=1)
    x = np.stack([item.array.ravel() for item in load_images(paths, spec)])  # type: ignore[union-attr]
    reading = _sum(listing, clock.read())
    clock = Clock()
    neighbours = Neighbours(x, None, 16)
    search = clock.read()
    a = np.repeat(np.arange(len(x)), neighbours.ids.shape[1])
    b, d = neighbours.ids.ravel(), neighbours.distances.ravel()
    keep = a < b
    a, b, d = a[keep], b[keep], d[keep]
    thresholds = np.quantile(d, np.linspace(0.0005, 0.1, 40))
    t, best = best_threshold(corpus, a, b, d, thresholds)
    rows["raw pixels, best-F1 distance"] = {
        **best,
        "method": f"raw pixels (16×16 grey, letterboxed), Euclidean distance ≤ {t:.4g} (best group F1: an oracle)",
        "threshold": t,
        "seconds": {"reading": reading, "search": search, "total": _sum(reading, search)},
    }
    print(f"  raw pixels: {json.dumps(best['groups'])} {reading['wall'] + search['wall']:.1f} s", flush=True)


def index_collection(folder: Path, home: Path, max_seconds: float | None) -> dict[str, Any]:
    """``simsearch index FOLDER`` with the defaults (``--max-seconds`` only in quick runs), in a subprocess."""
    command = [sys.executable, "-m", "simsearch", "index", str(folder), "--home", str(home), "--name", "corpus"]
    if max_seconds is not None:
        command += ["--max-seconds", str(max_seconds)]
    clock = Clock()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "SIMSEARCH_PROGRESS": "off"})
    took = clock.read()
    if done.returncode != 0:
        raise RuntimeError(f"index failed: {done.stderr[-2000:]}")
    training = json.loads((home / "corpus" / "encoder" / "encoder.json").read_text()).get("training", {})
    return {
        "command": " ".join(command[2:]),
        "seconds": took,
        "training_seconds": training.get("seconds"),
        "epochs": training.get("epochs_run"),
        "training_images": training.get("images"),
    }


# --- one size ----------------------------------------------------------------------------------------------------


def run_size(total: int, args: argparse.Namespace, real: list[Source], work: Path) -> dict[str, Any]:
    from simsearch.latent.duplicates import DEFAULT_RELATIVE, load_compared

    print(f"{total:,} images", flush=True)
    clock = Clock()
    corpus = make_corpus(work / f"corpus-{total}", total, real, args.seed)
    made = clock.read()
    paths = [corpus.root / f for f in corpus.files]
    sources = len(set(corpus.group))
    kinds = {k: sum(1 for c in corpus.kinds if len(c) == 1 and c[0] == k) for k in TRANSFORMS}
    datasets = {d: corpus.dataset.count(d) for d in sorted(set(corpus.dataset))}
    result: dict[str, Any] = {
        "images": len(paths),
        "sources": sources,
        "copies": sum(1 for k in corpus.kinds if k),
        "true_pairs": _pair_count(corpus.truth()),
        "true_groups": int((np.bincount(corpus.truth()) > 1).sum()),
        "single_transform_copies": kinds,
        "datasets": datasets,
        "corpus_seconds": made,
        "rows": {},
        "alpha_sweep": {},
    }
    rows = result["rows"]
    workers = os.cpu_count() or 1

    clock = Clock()
    compared = load_compared([corpus.root], model="pixels")
    reading = clock.read()
    run_simsearch(
        corpus,
        compared,
        reading,
        "simsearch, images (pixels)",
        f"simsearch duplicates FOLDER (--model pixels, mirror-invariant, relative α = {DEFAULT_RELATIVE})",
        rows,
    )
    result["alpha_sweep"]["pixels"] = alpha_sweep(corpus, compared, args.alphas)
    del compared

    run_hashes(corpus, paths, workers, rows)
    run_raw_pixels(corpus, paths, rows)

    home = work / f"home-{total}"
    result["index"] = index_collection(corpus.root, home, args.max_seconds)
    print(f"  index: {json.dumps(result['index'])}", flush=True)
    clock = Clock()
    compared = load_compared([], name="corpus", home=home)
    reading = clock.read()
    run_simsearch(
        corpus,
        compared,
        reading,
        "simsearch, collection (autoencoder)",
        f"simsearch index FOLDER, then simsearch duplicates --name C (stored embeddings, relative α = {DEFAULT_RELATIVE})",
        rows,
    )
    result["alpha_sweep"]["autoencoder"] = alpha_sweep(corpus, compared, args.alphas)
    del compared
    if total in args.mirror_sizes:
        clock = Clock()
        compared = load_compared([corpus.root], model=str(home / "corpus" / "encoder"))
        reading = clock.read()
        run_simsearch(
            corpus,
            compared,
            reading,
            "simsearch, images (autoencoder, mirror-invariant)",
            f"simsearch duplicates FOLDER --model C/encoder (mirror-invariant, relative α = {DEFAULT_RELATIVE})",
            rows,
        )
        del compared
    result["acceptance"] = acceptance(rows)
    if not args.keep:
        shutil.rmtree(corpus.root, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
    return result


HASH_ROWS = ("phash", "dhash", "whash")
SIMSEARCH_DEFAULT = "simsearch, images (pixels)"


def acceptance(rows: dict[str, Any]) -> dict[str, Any]:
    """simsearch's default rows against the best hash row (the highest group F1, customary or oracle threshold):
    group precision and recall at least its, and time within 2× the fastest hash's."""
    hashes = {k: v for k, v in rows.items() if k.startswith(HASH_ROWS)}
    best_name = max(hashes, key=lambda k: hashes[k]["groups"]["f1"])
    best = hashes[best_name]["groups"]
    fastest_name = min(hashes, key=lambda k: hashes[k]["seconds"]["total"]["wall"])
    fastest = hashes[fastest_name]["seconds"]["total"]["wall"]
    out: dict[str, Any] = {"best_hash": best_name, "fastest_hash": fastest_name, "fastest_hash_seconds": fastest}
    for name in (SIMSEARCH_DEFAULT, "simsearch, collection (autoencoder)"):
        if name not in rows:
            continue
        mine = rows[name]["groups"]
        seconds = rows[name]["seconds"]["total"]["wall"]
        out[name] = {
            "precision_ok": mine["precision"] >= best["precision"],
            "recall_ok": mine["recall"] >= best["recall"],
            "time_ratio": round(seconds / fastest, 2) if fastest else None,
            "time_ok": seconds <= 2 * fastest,
        }
    return out


# --- the result files --------------------------------------------------------------------------------------------


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Near-duplicate finding: simsearch duplicates, perceptual hashes, raw pixels",
        "",
        f"{report['date']}, {report['device']}. Command: `{report['command']}`. How the corpus is made and what each",
        "row measures: the docstring of `bench/duplicates.py`. Precision (P), recall (R) and F1 in %; *groups*: the",
        "pairs that end in one group (what a user sees), *pairs*: the pairs declared; *exact*: true groups found",
        "exactly. Time: wall seconds from the folder to the groups (index run and corpus making excluded): the",
        "simsearch images rows find the images in the folder by their content (the first bytes of every file), the",
        "hash and raw-pixel rows list it by extension, as imagededup does when it is given a folder.",
        "",
    ]
    for size, result in report["sizes"].items():
        lines += [
            f"## {int(size):,} images",
            "",
            f"{result['sources']:,} distinct sources, {result['copies']:,} near-copies, {result['true_groups']:,} true "
            f"groups, {result['true_pairs']:,} true pairs. Sources by data set: "
            + ", ".join(f"{k} {v:,}" for k, v in result["datasets"].items())
            + ".",
            "",
            "| method | groups P | groups R | groups F1 | pairs P | pairs R | exact | time (s) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in result["rows"].values():
            g, p = row["groups"], row["pairs"]
            lines.append(
                f"| {row['method']} | {_pct(g['precision'])} | {_pct(g['recall'])} | {_pct(g['f1'])} | "
                f"{_pct(p['precision'])} | {_pct(p['recall'])} | {_pct(row['exact_groups'])} | "
                f"{row['seconds']['total']['wall']:.1f} |"
            )
        kinds = [*TRANSFORMS, "two transforms"]
        lines += ["", "Recall by transform (% of copies that end in their source's group):", ""]
        lines += ["| method | " + " | ".join(kinds) + " |", "| --- |" + " --- |" * len(kinds)]
        for name, row in result["rows"].items():
            r = row["recall_by_transform"]
            lines.append(f"| {name} | " + " | ".join(_pct(r.get(k)) for k in kinds) + " |")
        lines += ["", "Time by phase (wall s; CPU s of every core in brackets):", ""]
        for name, row in result["rows"].items():
            phases = ", ".join(
                f"{k} {v['wall']:.1f} ({v['cpu']:.1f})" for k, v in row["seconds"].items() if k != "total"
            )
            lines.append(f"- {name}: {phases}")
        index = result["index"]
        lines.append(
            f"- the collection's index run, not included above: {index['seconds']['wall']:.0f} s, of which training "
            f"{index['training_seconds']} s ({index['epochs']} epochs on {index['training_images']:,} images)"
        )
        lines += ["", "The relative rule's α (group P / R / F1 %):", ""]
        alphas = list(next(iter(result["alpha_sweep"].values())).keys())
        lines += ["| encoder | " + " | ".join(f"α = {a}" for a in alphas) + " |", "| --- |" + " --- |" * len(alphas)]
        for encoder, sweep in result["alpha_sweep"].items():
            cells = [
                f"{_pct(v['groups']['precision'])} / {_pct(v['groups']['recall'])} / {_pct(v['groups']['f1'])}"
                for v in sweep.values()
            ]
            lines.append(f"| {encoder} | " + " | ".join(cells) + " |")
        acc = result["acceptance"]
        lines += [
            "",
            f"Acceptance (against {acc['best_hash']}, the best hash by group F1; fastest: "
            f"{acc['fastest_hash']}, {acc['fastest_hash_seconds']:.1f} s):",
            "",
        ]
        for name in (SIMSEARCH_DEFAULT, "simsearch, collection (autoencoder)"):
            if name in acc:
                a = acc[name]
                lines.append(
                    f"- {name}: precision {'≥' if a['precision_ok'] else '<'} the hash's, recall "
                    f"{'≥' if a['recall_ok'] else '<'} the hash's, time {a['time_ratio']}× the fastest hash's "
                    f"({'within' if a['time_ok'] else 'beyond'} 2×)"
                )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", type=int, default=[10_000, 100_000])
    parser.add_argument("--quick", action="store_true", help="2,000 images, a 30-second autoencoder")
    parser.add_argument("--alphas", nargs="*", type=float, default=[0.5, 0.6, 0.65, 0.7, 0.8])
    parser.add_argument(
        "--mirror-sizes", nargs="*", type=int, default=[10_000], help="sizes with the mirror-invariant autoencoder row"
    )
    parser.add_argument("--max-seconds", type=float, default=None, help="index's training limit (default: its own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="where the corpora go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the corpora and collections")
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--render", action="store_true", help="only write the .md again from the existing .json")
    args = parser.parse_args()
    if args.render:
        stem = args.out / ("duplicates" + (f"-{args.tag}" if args.tag else ""))
        Path(f"{stem}.md").write_text(markdown(json.loads(Path(f"{stem}.json").read_text())))
        return
    if args.quick:
        args.sizes, args.mirror_sizes = [2_000], [2_000]
        args.max_seconds = args.max_seconds or 30.0
        args.tag = args.tag or "quick"
    if not SHARED_DATA.is_dir():
        sys.exit(f"no benchmark data at {SHARED_DATA} — see the README's Benchmarks section")
    import torch

    name = "duplicates" + (f"-{args.tag}" if args.tag else "")
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads)",
        "command": "python " + " ".join(sys.argv),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"},
        "sizes": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    real = load_real()
    work = args.work or Path(tempfile.mkdtemp(prefix="simsearch-duplicates-"))
    try:
        for total in args.sizes:
            report["sizes"][str(total)] = run_size(total, args, real, work)
            (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
            (args.out / f"{name}.md").write_text(markdown(report))
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out / name}.json and .md", flush=True)


if __name__ == "__main__":
    main()
