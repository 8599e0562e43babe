"""Near-duplicate images: every group of images that are near-copies of one another (crops, resizes, re-encodes,
small turns, tone shifts, mirror images), found by a k-NN search in FAISS (never an N×N matrix), with the distances.

    compared = load_compared([Path("photos/")], model="pixels")     # or load_compared([], name="photos")
    found = find_duplicates(compared)                               # the relative rule at its default
    found.groups[0].members, found.rule.describe(), found.to_json()
    existing = find_existing(compared, [Path("new-scans/")])        # which new images are already there

What is compared (``load_compared``):

* a collection's stored embeddings (``name``): nothing is read or embedded again; or
* images embedded here, in memory, by ``model``: a model folder, or ``pixels`` (the default for images), a
  descriptor made for this: each image trimmed of its plain margin (as ``--resize trim`` does), letterboxed to
  32×32 grey and averaged to 16×16, and with ``mirror`` (the default for images) summed with its mirror image and joined by their absolute
  difference (so an image and its mirror image give the same descriptor), centred (brightness) and scaled to unit
  length (contrast). A model's embeddings are made mirror-invariant the same way (the image and its mirror image are
  both embedded). Descriptors longer than ``MAX_DIM`` are reduced to ``PCA_DIM`` by a PCA fitted on a seeded sample
  of them, which keeps the search fast at 100,000 images.

When two images are duplicates (``Rule``), among each image's ``NEIGHBOURS`` nearest (FAISS: exact up to
``EXACT_LIMIT`` images or on a GPU, an IVF index beyond):

* ``relative`` (the default, ``DEFAULT_RELATIVE``): a pair is a duplicate when its distance is at most α times
  the geometric mean of the two images' *scales*, each image's scale being the distance to its ``SCALE_RANK``-th
  nearest neighbour once its own copies are set aside (identical images, and a run of nearest neighbours much
  nearer than the ones after them: see ``scales``), so that an image with many copies is still measured against
  distinct images. A fixed distance fails where images crowd together (handwritten digits, say) or spread apart
  (photos); the scale follows the neighbourhood. α was chosen by measurement (``bench/duplicates.py``,
  ``bench/results/duplicates.md``): near the best F1 at 10,000 images (0.7), a little lower so that precision
  stays at about 96% at 100,000 (where 0.7 gave 93%).
* ``far``: α chosen so that a share ``far`` of all the pairs of the compared images is paired: measured on the
  images' own pairs, so their own duplicates count among them (the rate of distinct pairs is at most ``far``).
* ``distance``: a fixed distance in the compared space (``threshold``); pairs at most that far apart.

Identical images (distance 0) are always duplicates of each other. Groups are the connected components of the
pairs. Distances are those of the compared space: the encoder's metric for a collection's stored embeddings, the
Euclidean distance between descriptors otherwise.
"""

from __future__ import annotations

import csv
import html
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simsearch import vectors
from simsearch.errors import DataError, ImageError, UsageError, option
from simsearch.io import LoadJob, Preprocess, load_batches, load_images
from simsearch.latent.images import FLAGGED, Cell, Grid, draw_grid, expand_images, load_source, to_pixels
from simsearch.models.encoder import Encoder
from simsearch.progress import Progress, no_progress
from simsearch.store.collection import embeddings_of

#: The model name of the duplicates' own pixel descriptor.
PIXELS = "pixels"
#: Its input: 32×32 grey, the plain margin trimmed; averaged over 2×2 blocks to 16×16 (measured: better than
#: letterboxing to 16×16 at once, whose whole-pixel placement moves a cropped image by up to 3% of its side).
PIXELS_SPEC = Preprocess(size=(32, 32), channels=1, resize="trim")
PIXELS_POOL = 2
#: The relative rule's default α (see the module), measured in bench/duplicates.py.
DEFAULT_RELATIVE = 0.65
#: An image's scale is the distance to this nearest neighbour (the first is the nearest), its copies set aside:
#: neighbours at most SCALE_GAP × as far as the SCALE_RANK-th after them (see ``scales``).
SCALE_RANK = 5
SCALE_GAP = 0.2
#: Neighbours listed per image: pairs are looked for among them (the relative rule pairs nothing farther than the
#: scale, which is among them).
NEIGHBOURS = 32
#: Descriptors longer than this are reduced to ``PCA_DIM`` dimensions (PCA fitted on ``PCA_SAMPLE`` of them).
MAX_DIM = 128
PCA_DIM = 64
PCA_SAMPLE = 5_000
#: Distances at most this are "identical" (float rounding of equal descriptors).
SAME = 1e-6
#: A fixed threshold that pairs more than this many images is refused (it would hold every pair in memory).
MAX_PAIRS = 20_000_000
#: Rows searched per FAISS call.
CHUNK = 4096
#: On a CPU, more images than this are searched in a FAISS IVF index (about 4·√n cells, trained on
#: ``IVF_TRAIN_PER_CELL`` per cell, ``NPROBE`` visited): measured at 100,000 pixel descriptors, 99.8% of the 32
#: nearest neighbours found, in a tenth of the exact search's time. Fewer, or on a GPU: exact (flat).
EXACT_LIMIT = 20_000
NPROBE = 32
IVF_TRAIN_PER_CELL = 40
#: The report draws at most this many groups, this many per picture, this many images per group.
REPORT_GROUPS = 200
GROUPS_PER_PICTURE = 20
REPORT_COLUMNS = 10
#: Report tiles: this size (H, W), in colour.
TILE = (64, 64)


# --- what is compared --------------------------------------------------------------------------------------------


@dataclass
class Descriptor:
    """How an image becomes the vector compared: an encoder, made mirror-invariant or not, the pixel descriptor's
    normalisation (``pixels``), and the PCA fitted on the first images embedded (``projection``: mean and
    components), applied to every later image (``against``) too."""

    encoder: Encoder
    mirror: bool
    pixels: bool
    projection: tuple[np.ndarray, np.ndarray] | None = None

    def describe(self) -> str:
        if self.pixels:
            side = PIXELS_SPEC.size[0] // PIXELS_POOL
            what = f"{PIXELS} ({side}×{side} grey, margin trimmed, centred)"
        else:
            what = f"the {self.encoder.family} encoder's embeddings"
        mirrored = ", mirror-invariant" if self.mirror else ""
        reduced = f", PCA to {self.projection[1].shape[0]}" if self.projection is not None else ""
        return what + mirrored + reduced

    def raw(self, arrays: np.ndarray) -> np.ndarray:
        """Preprocessed images (n, C, H, W) → their vectors before the PCA (n, d) float32."""
        if self.pixels:  # the pixels themselves, averaged over blocks
            n, c, h, w = arrays.shape
            p = PIXELS_POOL
            blocks = arrays.reshape(n, c, h // p, p, w // p, p)
            # the blocks' means, summed offset by offset: ten times faster than mean() over two strided axes
            total = np.zeros((n, c, h // p, w // p), np.float32)
            for i in range(p):
                for j in range(p):
                    total += blocks[:, :, :, i, :, j]
            arrays = total / (p * p)
            z = arrays.reshape(n, -1)
            flipped = arrays[..., ::-1].reshape(n, -1)
            z = np.concatenate([z + flipped, np.abs(z - flipped)], axis=1) if self.mirror else z
            z = z - z.mean(axis=1, keepdims=True)
            z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
            return np.ascontiguousarray(z, dtype=np.float32)
        z = self.encoder.embed(arrays)
        cosine = self.encoder.metric == "cosine"
        if self.mirror:
            flipped = self.encoder.embed(np.ascontiguousarray(arrays[..., ::-1]))
            if cosine:
                z, flipped = vectors.prepare(z, "cosine"), vectors.prepare(flipped, "cosine")
            z = np.concatenate([z + flipped, np.abs(z - flipped)], axis=1)
        elif cosine:
            z = vectors.prepare(z, "cosine")
        return np.ascontiguousarray(z, dtype=np.float32)

    def project(self, z: np.ndarray, fit: bool = False, seed: int = 0) -> np.ndarray:
        """``raw`` vectors → the compared ones: through the PCA (fitted on these with ``fit``, when they are longer
        than ``MAX_DIM``)."""
        if fit and z.shape[1] > MAX_DIM:
            self.projection = _fit_pca(z, PCA_DIM, seed)
        if self.projection is not None:
            mean, components = self.projection
            z = (z - mean) @ components.T
        return np.ascontiguousarray(z, dtype=np.float32)


def _fit_pca(z: np.ndarray, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean and the ``dim`` leading principal axes (dim, d) of a seeded sample of at most ``PCA_SAMPLE`` rows
    of ``z`` (eigenvectors of the covariance, largest first)."""
    rows = np.arange(len(z))
    if len(rows) > PCA_SAMPLE:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), PCA_SAMPLE, replace=False))
    sample = z[rows].astype(np.float64)
    mean = sample.mean(axis=0)
    centred = sample - mean
    values, axes = np.linalg.eigh(centred.T @ centred)
    order = np.argsort(values)[::-1][: min(dim, len(values))]
    return mean.astype(np.float32), np.ascontiguousarray(axes[:, order].T, dtype=np.float32)


def pixels_descriptor(mirror: bool = True) -> Descriptor:
    """The duplicates' own pixel descriptor (see the module)."""
    from simsearch.training import pixels_encoder

    return Descriptor(pixels_encoder(PIXELS_SPEC), mirror, pixels=True)


@dataclass
class Items:
    """The images compared: how each is named, its file (None when unknown), its content's sha256, its vector in the
    compared space (Euclidean: unit length for a cosine encoder), and the files under folders that could not be
    read (``skipped``)."""

    names: list[str]
    files: list[Path | None]
    sha256: list[str]
    vectors: np.ndarray
    skipped: list[ImageError] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class Compared:
    """What ``find_duplicates`` compares: the ``items``, where they come from (``source``), how they were made
    (``descriptor``, also used for the images ``find_existing`` is given) and the metric distances are reported in
    (``cosine`` for a cosine collection's stored embeddings: ``1 - cos``; else ``l2``)."""

    source: str
    items: Items
    descriptor: Descriptor
    metric: str = "l2"
    stored: bool = False

    def describe(self) -> str:
        what = "stored embeddings" if self.stored else self.descriptor.describe()
        return f"{self.source}: {what}"


def load_compared(
    images: Sequence[Path],
    model: str | None = None,
    name: str | None = None,
    home: Path = Path("indexes"),
    device: str = "cpu",
    mirror: bool | None = None,
    seed: int = 0,
    progress: Progress = no_progress,
) -> Compared:
    """The images to compare: ``images`` (files, or folders: every image under them) embedded in memory by
    ``model`` (a model folder, or ``pixels``, the default), or a collection's stored embeddings (``name``, default
    ``default``). ``mirror``: count mirror images as duplicates (default: yes for images embedded here; a
    collection's stored embeddings hold no mirror images, so it cannot be asked for them)."""
    if images:
        if name is not None:
            raise UsageError(
                f"give either IMAGES (with {option('model')}) or {option('name')} (a collection), not both"
            )
        descriptor = _descriptor(model or PIXELS, home, device, True if mirror is None else mirror)
        items = embed_items(descriptor, images, fit=True, seed=seed, progress=progress)
        what = ", ".join(str(p) for p in images[:3]) + (" …" if len(images) > 3 else "")
        return Compared(what, items, descriptor)
    if model is not None:
        raise UsageError(
            f"{option('model')} embeds IMAGES, and none were given",
            remedy=f"give the images or folders to compare, or {option('name')} alone for a collection",
        )
    if mirror:
        raise UsageError(
            "a collection's stored embeddings hold no mirror images",
            remedy=f"give its folder as IMAGES (with {option('model')}) to embed the images and their mirror images",
        )
    source = load_source(None, name, home, device)
    assert source.collection is not None
    snapshot = source.collection.load()
    encoder = source.encoder
    if snapshot.manifest["encoder"]["fingerprint"] != encoder.fingerprint:  # rebuilt since the encoder was read
        encoder = source.collection.load_encoder(snapshot.manifest, device=str(encoder.device))
    meta = snapshot.meta
    if meta.num_rows < 2:
        raise DataError(
            f"collection '{source.collection.path}' holds {meta.num_rows} image{'s' if meta.num_rows != 1 else ''}: "
            "duplicates need at least 2",
            remedy="index a folder into it first",
        )
    roots, rels = meta.column("root").to_pylist(), meta.column("path").to_pylist()
    names = [_join(root, rel) for root, rel in zip(roots, rels, strict=True)]
    z = vectors.prepare(np.asarray(embeddings_of(meta), np.float32), snapshot.metric)
    items = Items(names, [Path(n) for n in names], meta.column("sha256").to_pylist(), z)
    descriptor = Descriptor(encoder, mirror=False, pixels=False)
    return Compared(f"collection {source.collection.path}", items, descriptor, snapshot.metric, stored=True)


def _join(root: str, rel: str) -> str:
    return rel if not root else f"{root.rstrip('/')}/{rel}"


def _descriptor(model: str, home: Path, device: str, mirror: bool) -> Descriptor:
    if model == PIXELS:
        return pixels_descriptor(mirror)
    source = load_source(model, None, home, device)  # its checks: a missing folder, a collection given as one
    return Descriptor(source.encoder, mirror, pixels=False)


def embed_items(
    descriptor: Descriptor,
    paths: Sequence[Path],
    fit: bool = False,
    seed: int = 0,
    batch_size: int = 1024,
    workers: int = 0,
    progress: Progress = no_progress,
) -> Items:
    """Read and embed the images of ``paths`` (files, or folders: every image under them) with ``descriptor``. A
    file named by itself that cannot be read raises; one found under a folder goes to ``skipped``. ``fit``: fit
    the descriptor's PCA on these images. ``workers``: decoding threads or processes (0: one per core, at most
    8)."""
    files, skipped = expand_images(paths)
    spec = descriptor.encoder.preprocess
    names: list[str] = []
    kept_files: list[Path | None] = []
    sha: list[str] = []
    parts: list[np.ndarray] = []
    jobs = [
        LoadJob(
            [path for path, _, _ in files[start : start + batch_size]],
            [str(path) for path, _, _ in files[start : start + batch_size]],
            [None] * len(files[start : start + batch_size]),
        )
        for start in range(0, len(files), batch_size)
    ]
    done = 0
    # Decoded in worker processes from PROCESS_MIN_IMAGES images on (hashing, decoding and trimming hold the GIL
    # in part), the next batches while this one is embedded
    for job, batch in zip(jobs, load_batches(jobs, spec, workers, total=len(files)), strict=True):
        arrays: list[np.ndarray] = []
        for offset, item in enumerate(batch):
            path, _, named = files[done + offset]
            if isinstance(item, ImageError):
                if named:
                    raise item
                skipped.append(item)
            elif item is not None:
                names.append(str(path))
                kept_files.append(path)
                sha.append(item.sha256)
                arrays.append(item.array)
        if arrays:
            parts.append(descriptor.raw(np.stack(arrays)))
        done += len(job.paths)
        progress("reading images", done, len(files))
    if not names:
        shown = ", ".join(str(p) for p in paths[:3]) + (" …" if len(paths) > 3 else "")
        raise DataError(f"no readable images in {shown}", remedy="check the paths")
    z = descriptor.project(np.concatenate(parts), fit=fit, seed=seed)
    return Items(names, kept_files, sha, z, skipped)


# --- the rule ----------------------------------------------------------------------------------------------------


@dataclass
class Rule:
    """When two images are duplicates: ``kind`` ``relative`` (``value`` is α) or ``distance`` (``value`` is the
    distance, in the compared space's reported metric), and how it was chosen (``chosen``: ``default``, ``given``
    or ``far``, with ``far`` and the number of pairs it was measured on)."""

    kind: str
    value: float
    chosen: str
    far: float | None = None
    pairs: int | None = None
    note: str | None = None

    def describe(self) -> str:
        if self.kind == "distance":
            return f"distance at most {self.value:.6g} (given)"
        text = (
            f"relative distance at most {self.value:.4g}: at most {self.value:.4g}× the geometric mean of the two "
            f"images' distances to their {_ordinal(SCALE_RANK)} nearest neighbour"
        )
        if self.chosen == "far":
            text += (
                f" (chosen so that a share {self.far:g} of the {self.pairs:,} pairs of these images is paired, their own "
                "duplicates among them)"
            )
        elif self.chosen == "default":
            text += " (the default)"
        return text + (f"; {self.note}" if self.note else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "value": self.value,
            "chosen": self.chosen,
            "far": self.far,
            "pairs": self.pairs,
            "scale_rank": SCALE_RANK if self.kind == "relative" else None,
            "note": self.note,
            "description": self.describe(),
        }


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def check_rule(threshold: float | None, relative: float | None, far: float | None) -> None:
    """Refuse more than one way of choosing, and values out of range."""
    given = [
        name for name, value in (("threshold", threshold), ("relative", relative), ("far", far)) if value is not None
    ]
    if len(given) > 1:
        names = " and ".join(option(n) for n in given)
        raise UsageError(f"give one of {option('threshold')}, {option('relative')} or {option('far')}, not {names}")
    if threshold is not None and not (threshold >= 0 and math.isfinite(threshold)):
        raise UsageError(f"{option('threshold')} is a distance: 0 or more, not {threshold}")
    if relative is not None and not (0 < relative <= 1):
        raise UsageError(
            f"{option('relative')} must be in (0, 1], not {relative}",
            remedy=f"a duplicate is nearer than the {_ordinal(SCALE_RANK)} neighbour: the default is {DEFAULT_RELATIVE}",
        )
    if far is not None and not (0 < far < 1):
        raise UsageError(f"{option('far')} is a share of pairs: between 0 and 1 (0.00001, say), not {far}")


# --- neighbours and pairs ----------------------------------------------------------------------------------------


class Neighbours:
    """Each query's nearest reference vectors, re-measured exactly (``vectors.exact_distances``), nearest first:
    ``distances`` and ``ids`` (q, k). With ``exclude_self`` the queries are the reference rows themselves, and each
    row's own entry is left out. Searched exactly up to ``EXACT_LIMIT`` references or on a GPU, else in an IVF
    index (``exact`` says which)."""

    def __init__(
        self,
        reference: np.ndarray,
        queries: np.ndarray | None,
        k: int,
        use_gpu: bool = True,
        progress: Progress = no_progress,
    ) -> None:
        self.reference = reference
        self.exclude_self = queries is None
        self.queries = reference if queries is None else queries
        ids = np.arange(len(reference), dtype=np.int64)
        gpu = use_gpu and vectors.gpu_count() > 0
        self.exact = gpu or len(reference) <= EXACT_LIMIT
        if self.exact:  # a flat index: exact (and on a GPU, fast at any size)
            self.index = vectors.new_index(reference.shape[1], "l2")
            vectors.add_vectors(self.index, reference, ids, "l2")
            self.index = vectors.to_gpu(self.index) if gpu else self.index
        else:
            progress("building the search index", 0, None)
            nlist = 1 << round(math.log2(4 * math.sqrt(len(reference))))
            spec = vectors.IndexSpec("ivf", nlist=nlist, nprobe=min(nlist, NPROBE))
            self.index = vectors.build_index(spec, reference, ids, "l2", train_size=IVF_TRAIN_PER_CELL * nlist)
        self.progress = progress
        self.distances, self.ids = self.search(np.arange(len(self.queries)), k)

    @property
    def most(self) -> int:
        """The most neighbours a query can have."""
        return len(self.reference) - (1 if self.exclude_self else 0)

    def search(self, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.most)
        wider = min(len(self.reference), k + (1 if self.exclude_self else 0))
        out_d = np.empty((len(rows), k), np.float32)
        out_i = np.empty((len(rows), k), np.int64)
        for start in range(0, len(rows), CHUNK):
            part = rows[start : start + CHUNK]
            q = self.queries[part]
            _, ids = vectors.search(self.index, q, wider, "l2")
            d = vectors.exact_distances(q, self.reference[np.maximum(ids, 0)], "l2")
            d[ids < 0] = np.inf
            if self.exclude_self:
                mine = ids == part[:, None]
                # its own row, or when ties hid it (identical vectors), the farthest candidate
                drop = np.where(mine.any(axis=1), mine.argmax(axis=1), wider - 1)
                keep = np.ones(ids.shape, bool)
                keep[np.arange(len(part)), drop] = False
                d, ids = d[keep].reshape(len(part), k), ids[keep].reshape(len(part), k)
            order = np.argsort(d, axis=1, kind="stable")
            out_d[start : start + len(part)] = np.take_along_axis(d, order, 1)
            out_i[start : start + len(part)] = np.take_along_axis(ids, order, 1)
            if len(rows) > CHUNK:
                self.progress("finding neighbours", min(start + CHUNK, len(rows)), len(rows))
        return out_d, out_i

    def within(self, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (query, reference, distance) at most ``radius`` apart: the listed neighbours, searched wider for
        the queries whose every listed neighbour is that near."""
        distances, ids = self.distances, self.ids
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        dist: list[np.ndarray] = []
        todo = np.arange(len(self.queries))
        k = distances.shape[1]
        while len(todo):
            hit = distances <= radius
            count = int(hit.sum())
            if sum(len(r) for r in rows) + count > MAX_PAIRS:
                raise UsageError(
                    f"{option('threshold', radius)} pairs more than {MAX_PAIRS:,} images",
                    remedy=f"lower {option('threshold')}, or leave it out for the relative rule",
                )
            full = hit[:, -1] & (k < self.most) if k else np.zeros(len(todo), bool)
            done = ~full
            rows.append(np.repeat(todo[done], hit[done].sum(axis=1)))
            cols.append(ids[done][hit[done]])
            dist.append(distances[done][hit[done]])
            todo = todo[full]
            if len(todo):
                k = min(self.most, k * 4)
                distances, ids = self.search(todo, k)
        return np.concatenate(rows), np.concatenate(cols), np.concatenate(dist)


def scales(distances: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's scale: the distance to its ``rank``-th nearest neighbour that is not one of its copies. Its
    first m neighbours are set aside as copies when the m-th is at most ``SCALE_GAP`` × the ``rank``-th after
    them (the largest such m; identical ones always): an image among many copies of itself is measured past
    them. Also which rows ran out of listed neighbours (their scale is then too small)."""
    n, k = distances.shape
    rows = np.arange(n)
    if k == 0:
        return np.zeros(n), np.zeros(n, bool)
    d = distances.astype(np.float64)
    if k <= rank:
        return d[:, min(rank, k) - 1], np.zeros(n, bool)
    # copies[:, j]: the first j + 1 neighbours qualify as copies: the (j+1)-th is within the gap of the rank-th after
    copies = (d[:, : k - rank] <= SCALE_GAP * d[:, rank:]) | (d[:, : k - rank] <= SAME)
    m = np.where(copies.any(axis=1), k - rank - np.argmax(copies[:, ::-1], axis=1), 0)
    return d[rows, m + rank - 1], m == k - rank


def neighbour_scales(neighbours: Neighbours, rank: int) -> np.ndarray:
    """``scales`` of every query of ``neighbours``, its search widened for the rows that ran out of neighbours."""
    scale, short = scales(neighbours.distances, rank)
    k = neighbours.distances.shape[1]
    todo = np.flatnonzero(short)
    while len(todo) and k < neighbours.most:
        k = min(neighbours.most, k * 4)
        distances, _ = neighbours.search(todo, k)
        wider, short = scales(distances, rank)
        scale[todo] = wider
        todo = todo[short]
    return scale


def relative_distances(distances: np.ndarray, ids: np.ndarray, own: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Each listed distance over the geometric mean of the two images' scales (``own`` per row, ``other`` per
    reference id); 0 for identical images."""
    scale = np.sqrt(np.maximum(own[:, None] * other[ids], 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(scale > 0, distances / scale, np.inf)
    return np.where(distances <= SAME, 0.0, ratio)


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The connected component of each of ``n`` nodes given the edges (a, b): a number per node."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    return np.asarray(connected_components(graph, directed=False)[1], np.int64)


def _unique_pairs(a: np.ndarray, b: np.ndarray, *values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Pairs (a < b) once each, in order, with their values."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keep = lo != hi
    key = lo[keep].astype(np.int64) * (int(hi.max(initial=0)) + 1) + hi[keep]
    _, first = np.unique(key, return_index=True)
    return (lo[keep][first], hi[keep][first], *(v[keep][first] for v in values))


def far_relative(neighbours: Neighbours, far: float, scale: np.ndarray) -> tuple[float, int, str | None]:
    """The smallest α at which a share ``far`` of all the pairs of the images (``neighbours`` of each other, with
    their ``scale``) is paired by the relative rule, counted on the listed neighbours (among which is every pair
    the rule pairs at α ≤ 1); the pairs counted, and a note when the share is more than the rule pairs at α = 1."""
    n = len(neighbours.ids)
    pairs = n * (n - 1) // 2
    if far * pairs < 1:
        raise UsageError(
            f"{option('far', far)} is less than one pair of the {pairs:,} that {n:,} images make",
            remedy=f"pass a larger {option('far')} (at least {1 / pairs:.2g})",
        )
    wanted = math.ceil(far * pairs)
    values = np.sort(relative_pairs(neighbours.distances, neighbours.ids, 1.0, scale)[3])
    if wanted > len(values):
        return 1.0, pairs, f"that share is {wanted:,} pairs, more than the rule pairs at α = 1 ({len(values):,}): α = 1"
    return float(values[wanted - 1]), pairs, None


def relative_pairs(distances: np.ndarray, ids: np.ndarray, alpha: float, scale: np.ndarray) -> tuple[np.ndarray, ...]:
    """The relative rule's pairs among listed neighbours (rows = the reference, with their ``scale``): (a, b,
    distance, relative), a < b, each once."""
    ratio = relative_distances(distances, ids, scale, scale)
    hit = ratio <= alpha
    rows = np.repeat(np.arange(len(ids)), hit.sum(axis=1))
    return _unique_pairs(rows, ids[hit], distances[hit], ratio[hit])


def choose_rule(
    neighbours: Neighbours | None,
    threshold: float | None,
    relative: float | None,
    far: float | None,
    scale: np.ndarray | None = None,
) -> Rule:
    """The rule the options ask for (``check_rule`` first); ``far`` is measured on ``neighbours``' own pairs (with
    their ``scale``)."""
    check_rule(threshold, relative, far)
    if threshold is not None:
        return Rule("distance", float(threshold), "given")
    if relative is not None:
        return Rule("relative", float(relative), "given")
    if far is not None:
        assert neighbours is not None and neighbours.exclude_self and scale is not None
        alpha, pairs, note = far_relative(neighbours, far, scale)
        return Rule("relative", alpha, "far", far=far, pairs=pairs, note=note)
    return Rule("relative", DEFAULT_RELATIVE, "default")


def _search_radius(rule: Rule, metric: str) -> float:
    """A ``distance`` rule's threshold in the compared (Euclidean) space: ``1 - cos`` → chord length."""
    return math.sqrt(2.0 * rule.value) if metric == "cosine" else rule.value


def reported(distances: np.ndarray, metric: str) -> np.ndarray:
    """Distances in the compared (Euclidean) space → the metric they are reported in (``1 - cos`` for cosine)."""
    d = np.asarray(distances, np.float64)
    return d * d / 2.0 if metric == "cosine" else d


# --- groups ------------------------------------------------------------------------------------------------------


@dataclass
class Pair:
    """Two images found to be duplicates: their positions in the compared images, the distance (in the reported
    metric) and the relative distance (the relative rule's measure; None under a fixed distance)."""

    a: int
    b: int
    distance: float
    relative: float | None


@dataclass
class Group:
    """A group of near-duplicates: its images (positions, in input order) and the pairs found among them."""

    number: int
    members: list[int]
    pairs: list[Pair]

    @property
    def farthest(self) -> float:
        return max(p.distance for p in self.pairs)


@dataclass
class Duplicates:
    """Every group of near-duplicates among the compared images, the pairs, the rule and how it was chosen."""

    source: str
    descriptor: str
    metric: str
    names: list[str]
    files: list[Path | None]
    rule: Rule
    groups: list[Group]
    pairs: list[Pair]
    skipped: list[ImageError] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def in_groups(self) -> int:
        return sum(len(g.members) for g in self.groups)

    def pair_json(self, pair: Pair) -> dict[str, Any]:
        return {
            "a": self.names[pair.a],
            "b": self.names[pair.b],
            "distance": pair.distance,
            "relative": pair.relative,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "compared": self.descriptor,
            "metric": self.metric,
            "images": len(self.names),
            "in_groups": self.in_groups,
            "pairs": len(self.pairs),
            "threshold": self.rule.to_json(),
            "seconds": round(self.seconds, 3),
            "groups": [
                {
                    "group": g.number,
                    "images": [self.names[m] for m in g.members],
                    "pairs": [self.pair_json(p) for p in g.pairs],
                }
                for g in self.groups
            ],
            "skipped": [{"path": e.file, "reason": e.reason()} for e in self.skipped],
        }

    def write_csv(self, path: Path) -> None:
        """One row per image in a group: group, image, its nearest image in the group, their distance and relative
        distance."""
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["group", "image", "nearest", "distance", "relative"])
            for group in self.groups:
                for member in group.members:
                    nearest = min(
                        (p for p in group.pairs if member in (p.a, p.b)), key=lambda p: (p.distance, min(p.a, p.b))
                    )
                    other = nearest.b if nearest.a == member else nearest.a
                    rel = "" if nearest.relative is None else f"{nearest.relative:.6g}"
                    writer.writerow(
                        [group.number, self.names[member], self.names[other], f"{nearest.distance:.6g}", rel]
                    )


def find_duplicates(
    compared: Compared,
    threshold: float | None = None,
    relative: float | None = None,
    far: float | None = None,
    use_gpu: bool = True,
    progress: Progress = no_progress,
) -> Duplicates:
    """Every group of near-duplicates among ``compared``'s images, under the rule the options ask for (one of them,
    or none: the relative rule at ``DEFAULT_RELATIVE``; see the module)."""
    check_rule(threshold, relative, far)
    start = time.perf_counter()
    items = compared.items
    n = len(items)
    if n < 2:
        raise DataError(f"{n} image{'s' if n != 1 else ''} to compare: duplicates need at least 2")
    neighbours = Neighbours(items.vectors, None, NEIGHBOURS, use_gpu, progress)
    scale = neighbour_scales(neighbours, SCALE_RANK) if threshold is None else None
    rule = choose_rule(neighbours, threshold, relative, far, scale)
    if rule.kind == "distance":
        a, b, d = neighbours.within(_search_radius(rule, compared.metric))
        a, b, d = _unique_pairs(a, b, d)
        ratio = None
    else:
        assert scale is not None
        a, b, d, ratio = relative_pairs(neighbours.distances, neighbours.ids, rule.value, scale)
    progress("grouping", 0, None)
    shown = reported(d, compared.metric)
    pairs = [
        Pair(int(a[n]), int(b[n]), float(shown[n]), None if ratio is None else float(ratio[n])) for n in range(len(a))
    ]
    groups = _groups(n, pairs)
    return Duplicates(
        compared.source,
        compared.describe(),
        compared.metric,
        items.names,
        items.files,
        rule,
        groups,
        [p for g in groups for p in g.pairs],
        items.skipped,
        time.perf_counter() - start,
    )


def _groups(n: int, pairs: list[Pair]) -> list[Group]:
    """The connected components of the pairs, largest first (then the nearest pair first), numbered from 1."""
    if not pairs:
        return []
    a = np.array([p.a for p in pairs], np.int64)
    b = np.array([p.b for p in pairs], np.int64)
    label = components(n, a, b)
    members: dict[int, list[int]] = {}
    for node in sorted(set(a.tolist()) | set(b.tolist())):
        members.setdefault(int(label[node]), []).append(node)
    by_group: dict[int, list[Pair]] = {}
    for pair in pairs:
        by_group.setdefault(int(label[pair.a]), []).append(pair)
    ordered = sorted(members, key=lambda g: (-len(members[g]), min(p.distance for p in by_group[g]), members[g][0]))
    return [
        Group(number, members[g], sorted(by_group[g], key=lambda p: (p.distance, p.a, p.b)))
        for number, g in enumerate(ordered, start=1)
    ]


# --- against a reference: which new images exist already ----------------------------------------------------------


@dataclass
class Match:
    """A compared image that a new image duplicates: its position, the distance and relative distance."""

    image: int
    distance: float
    relative: float | None


@dataclass
class Existing:
    """For each new image (``names``), the compared images it duplicates (``matches``, nearest first; empty: it is
    new), under ``rule``."""

    source: str
    descriptor: str
    metric: str
    reference: list[str]
    reference_files: list[Path | None]
    names: list[str]
    files: list[Path | None]
    matches: list[list[Match]]
    rule: Rule
    skipped: list[ImageError] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def existing(self) -> int:
        return sum(bool(m) for m in self.matches)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "compared": self.descriptor,
            "metric": self.metric,
            "images": len(self.names),
            "reference_images": len(self.reference),
            "existing": self.existing,
            "threshold": self.rule.to_json(),
            "seconds": round(self.seconds, 3),
            "against": [
                {
                    "image": name,
                    "exists": bool(found),
                    "duplicates": [
                        {"image": self.reference[m.image], "distance": m.distance, "relative": m.relative}
                        for m in found
                    ],
                }
                for name, found in zip(self.names, self.matches, strict=True)
            ],
            "skipped": [{"path": e.file, "reason": e.reason()} for e in self.skipped],
        }

    def write_csv(self, path: Path) -> None:
        """One row per new image and duplicate it has (a new image without any: one row, the rest empty)."""
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "exists", "duplicate", "distance", "relative"])
            for name, found in zip(self.names, self.matches, strict=True):
                if not found:
                    writer.writerow([name, "no", "", "", ""])
                for m in found:
                    rel = "" if m.relative is None else f"{m.relative:.6g}"
                    writer.writerow([name, "yes", self.reference[m.image], f"{m.distance:.6g}", rel])


def find_existing(
    compared: Compared,
    against: Sequence[Path],
    threshold: float | None = None,
    relative: float | None = None,
    far: float | None = None,
    use_gpu: bool = True,
    progress: Progress = no_progress,
) -> Existing:
    """Which images of ``against`` (files or folders) already exist among ``compared``'s images: each embedded as
    they were, and matched under the same rule (a new image's scale is the distance to its ``SCALE_RANK``-th
    nearest compared image)."""
    check_rule(threshold, relative, far)
    start = time.perf_counter()
    items = compared.items
    new = embed_items(compared.descriptor, against, progress=progress)
    needs_own = threshold is None
    own = Neighbours(items.vectors, None, NEIGHBOURS, use_gpu) if needs_own else None
    reference_scale = neighbour_scales(own, SCALE_RANK) if own is not None else None
    rule = choose_rule(own, threshold, relative, far, reference_scale)
    found = Neighbours(items.vectors, new.vectors, NEIGHBOURS, use_gpu, progress)
    if rule.kind == "distance":
        rows, cols, d = found.within(_search_radius(rule, compared.metric))
        ratio = np.full(len(d), np.nan)
    else:
        assert reference_scale is not None
        new_scale = neighbour_scales(found, SCALE_RANK)
        r = relative_distances(found.distances, found.ids, new_scale, reference_scale)
        hit = r <= rule.value
        rows = np.repeat(np.arange(len(new)), found.ids.shape[1])[hit.ravel()]
        cols, d, ratio = found.ids[hit], found.distances[hit], r[hit]
    matches: list[list[Match]] = [[] for _ in range(len(new))]
    for row, col, dist, rel in sorted(
        zip(rows.tolist(), cols.tolist(), reported(d, compared.metric).tolist(), ratio.tolist(), strict=True),
        key=lambda t: (t[0], t[2], t[1]),
    ):
        matches[row].append(Match(col, dist, None if rule.kind == "distance" else rel))
    return Existing(
        compared.source,
        compared.describe(),
        compared.metric,
        items.names,
        items.files,
        new.names,
        new.files,
        matches,
        rule,
        new.skipped,
        time.perf_counter() - start,
    )


# --- the report --------------------------------------------------------------------------------------------------


def _tiles(files: Sequence[Path | None]) -> list[np.ndarray | None]:
    """Each file as a colour tile of ``TILE`` (None where it cannot be read now)."""
    spec = Preprocess(size=TILE, channels=3)
    wanted = [(n, f) for n, f in enumerate(files) if f is not None]
    out: list[np.ndarray | None] = [None] * len(files)
    loaded = load_images([f for _, f in wanted], spec, names=[str(f) for _, f in wanted], channels="convert")
    for (n, _), item in zip(wanted, loaded, strict=True):
        if item is not None and not isinstance(item, ImageError):
            out[n] = to_pixels(item.array[None], spec)[0]
    return out


def _blank() -> np.ndarray:
    return np.full((*TILE, 3), 235, np.uint8)


def _grid(rows: list[list[tuple[Path | None, str, bool]]]) -> Grid:
    """Rows of (file, caption, framed) drawn as tiles."""
    files = [f for row in rows for f, _, _ in row]
    tiles = iter(_tiles(files))
    cells: list[list[Cell | None]] = []
    for row in rows:
        line: list[Cell | None] = []
        for _, caption, framed in row:
            pixels = next(tiles)
            line.append(Cell(pixels if pixels is not None else _blank(), caption, FLAGGED if framed else None))
        cells.append(line)
    return draw_grid(cells, TILE, scale=1)


def check_report(folder: Path) -> None:
    """Refuse a report folder that is a file (said before any work is done)."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"'{folder}' is a file, not a folder", remedy=f"choose a new {option('report')} folder")


def _prepare_report(folder: Path) -> None:
    check_report(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("duplicates-*.png"):  # an earlier report's pictures: replaced
        old.unlink()


def write_report(found: Duplicates, folder: Path) -> Path:
    """Write the groups as pictures (``duplicates-NN.png``: one group a row, its images side by side, the first
    framed and captioned with the group's number and its file name, the others with their distance to it when they
    were paired with it) and ``index.html`` (the pictures, the rule, every group's files) into ``folder``; return
    the page's path."""
    _prepare_report(folder)
    shown = found.groups[:REPORT_GROUPS]
    pictures: list[str] = []
    for start in range(0, len(shown), GROUPS_PER_PICTURE):
        rows: list[list[tuple[Path | None, str, bool]]] = []
        for group in shown[start : start + GROUPS_PER_PICTURE]:
            first = group.members[0]
            row = [(found.files[first], f"#{group.number} {Path(found.names[first]).name}", True)]
            for member in group.members[1:REPORT_COLUMNS]:
                d = _distance_between(group, first, member)
                row.append((found.files[member], "" if d is None else f"d {d:.3g}", False))
            rows.append(row)
        name = f"duplicates-{start // GROUPS_PER_PICTURE + 1:02d}.png"
        _grid(rows).save(folder / name)
        pictures.append(name)
    e = html.escape
    table = "".join(
        f"<tr><td>{g.number}</td><td>{len(g.members)}</td><td>{g.farthest:.6g}</td>"
        f"<td>{'<br>'.join(e(found.names[m]) for m in g.members)}</td></tr>"
        for g in found.groups[:1000]
    )
    more = (
        f"<p>… and {len(found.groups) - 1000:,} more groups (the JSON output lists them all).</p>"
        if len(found.groups) > 1000
        else ""
    )
    summary = [
        f"Compared: {found.descriptor}",
        f"{len(found.names):,} images: {len(found.groups):,} groups of near-duplicates holding {found.in_groups:,} "
        f"images ({len(found.pairs):,} pairs)",
        f"Rule: {found.rule.describe()}",
    ]
    body = _pictures(
        folder, pictures, "Each row a group: its first image framed; under the others, the distance to it."
    )
    page = folder / "index.html"
    page.write_text(
        _page(
            "simsearch duplicates",
            summary,
            body,
            f"<table><tr><th>group</th><th>images</th><th>largest distance</th><th>files</th></tr>{table}</table>{more}",
        )
    )
    return page


def _distance_between(group: Group, a: int, b: int) -> float | None:
    for pair in group.pairs:
        if {pair.a, pair.b} == {a, b}:
            return pair.distance
    return None


def write_existing_report(found: Existing, folder: Path) -> Path:
    """Write the new images that exist already as pictures (``duplicates-NN.png``: one row per new image, framed,
    then the images it duplicates, each captioned with its distance) and ``index.html`` into ``folder``."""
    _prepare_report(folder)
    hits = [(n, m) for n, m in enumerate(found.matches) if m][:REPORT_GROUPS]
    pictures: list[str] = []
    for start in range(0, len(hits), GROUPS_PER_PICTURE):
        rows: list[list[tuple[Path | None, str, bool]]] = []
        for n, matches in hits[start : start + GROUPS_PER_PICTURE]:
            row = [(found.files[n], f"new {Path(found.names[n]).name}", True)]
            row += [
                (found.reference_files[m.image], f"d {m.distance:.3g}", False) for m in matches[: REPORT_COLUMNS - 1]
            ]
            rows.append(row)
        name = f"duplicates-{start // GROUPS_PER_PICTURE + 1:02d}.png"
        _grid(rows).save(folder / name)
        pictures.append(name)
    e = html.escape
    table = "".join(
        f"<tr><td>{e(found.names[n])}</td><td>{'<br>'.join(f'{e(found.reference[m.image])} ({m.distance:.6g})' for m in matches)}</td></tr>"
        for n, matches in hits[:1000]
    )
    summary = [
        f"Compared: {found.descriptor}",
        f"{found.existing:,} of {len(found.names):,} new images already exist among {len(found.reference):,}",
        f"Rule: {found.rule.describe()}",
    ]
    body = _pictures(
        folder, pictures, "Each row a new image (framed), then the images it duplicates, with the distance."
    )
    page = folder / "index.html"
    page.write_text(
        _page(
            "Near-duplicates: which new images already exist",
            summary,
            body,
            f"<table><tr><th>new image</th><th>exists as</th></tr>{table}</table>",
        )
    )
    return page


def _pictures(folder: Path, names: list[str], caption: str) -> str:
    return "".join(
        f'<figure><img src="{html.escape(name)}" alt="{html.escape(name)}"><figcaption>{html.escape(caption)}'
        "</figcaption></figure>"
        for name in names
    )


def _page(title: str, summary: list[str], pictures: str, table: str) -> str:
    items = "".join(f"<li>{html.escape(line)}</li>" for line in summary)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 3px 10px; text-align: left;
vertical-align: top; }} th {{ background: #f0f0f0; }} figure {{ margin: 2em 0; }}
img {{ max-width: 100%; }} figcaption {{ color: #555; font-size: 0.9em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<ul>{items}</ul>
{pictures}
{table}
</body></html>
"""
