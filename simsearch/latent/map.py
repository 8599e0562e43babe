"""A 2-D map of every embedding of a collection or of a folder: a page, a picture and a table.

    source = collection_source(Path("indexes/photos"))            # or folder_source(folder, model_folder)
    report = make_map(source.ids, source.embeddings, source.labels, source.paths, Path("out"), method="auto")

``make_map`` lays the embeddings out in two dimensions and writes into ``out_dir``:

- ``map.html``: one self-contained page (``map_page``): the points on a canvas, coloured by label, with a
  legend, zoom and pan, a search box, and on hover the image's thumbnail (inline PNG; for a random sample of at
  most ``max_thumbnails`` points), path and label. It loads nothing from anywhere.
- ``map.png``: the same points as a picture (matplotlib, imported here only), with a legend when there are few
  labels.
- ``map.parquet``: ``id`` (int64), ``x``, ``y`` (float32), ``path``, ``label`` (nullable): one row per point.

Methods: ``pca`` (the two leading principal components: exact and deterministic, always available), ``umap``
(umap-learn, when installed: neighbourhoods kept, clusters apart; needs ``MIN_POINTS["umap"]`` points), ``tsne``
(scikit-learn's Barnes-Hut t-SNE: slow, 3 minutes at 10,000 points on 2 cores) and ``auto`` (UMAP when umap-learn is
importable and there are enough points, else PCA). Every method is seeded (``seed``), so a map is reproducible.
Embeddings of a cosine encoder are normalised to unit length first, so that Euclidean layouts follow its metric.

A collection's map lives in its own folder (``collection_map_dir``: ``<collection>/map/``), where ``simsearch
serve`` finds it. ``make_map`` writes only into a folder that is new, empty, or holds nothing but a map's files;
each file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import base64
import colorsys
import io
import os
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simsearch.errors import DataError, ImageError, UsageError, option
from simsearch.progress import Progress, no_progress

METHODS = ("auto", "umap", "pca", "tsne")

#: The fewest points each layout works with (UMAP's 15 neighbours need 16; t-SNE's perplexity needs a few).
MIN_POINTS = {"umap": 16, "tsne": 5, "pca": 1}

#: The files of a map, by key (``MapReport.files``).
MAP_FILES = {"html": "map.html", "png": "map.png", "parquet": "map.parquet"}

#: A collection's map: this folder inside the collection's folder.
MAP_FOLDER = "map"

#: Thumbnails: at most this many pixels on the longer side, and at most this many bytes of PNG in all (beyond it,
#: the rest of the sample goes without).
THUMB_SIDE = 40
THUMB_BUDGET = 12_000_000

#: Colours: Tableau's 10 (its grey made navy) and its 20 without greys (grey means "no label"), then hues spread by
#: the golden angle.
TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#000075", "#bcbd22", "#17becf"]
TAB20 = [
    "#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896", "#9467bd", "#c5b0d5",
    "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#bcbd22", "#dbdb8d", "#17becf", "#9edae5",
]  # fmt: skip
NO_LABEL = "#8f8f8f"

#: The picture names every label in a legend up to this many labels.
LEGEND_LABELS = 20


@dataclass
class MapSource:
    """What to map: one row per image, in order."""

    ids: np.ndarray  # int64
    embeddings: np.ndarray  # (n, d) float32
    labels: list[str | None]
    paths: list[str]
    title: str
    metric: str = "l2"
    #: Images that could not be embedded (a folder's): (name, reason).
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class MapReport:
    """What ``make_map`` wrote."""

    out_dir: Path
    points: int
    method: str
    seconds: float
    files: dict[str, Path]
    thumbnails: int
    labels: int

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out_dir),
            "points": self.points,
            "method": self.method,
            "seconds": round(self.seconds, 3),
            "files": {key: str(path) for key, path in self.files.items()},
            "thumbnails": self.thumbnails,
            "labels": self.labels,
        }


def collection_map_dir(collection_path: Path) -> Path:
    """Where a collection's own map is written (and served from)."""
    return Path(collection_path) / MAP_FOLDER


def umap_available() -> bool:
    """Whether umap-learn can be imported (without importing it: that takes seconds)."""
    import importlib.util

    return importlib.util.find_spec("umap") is not None


def check_method(method: str) -> None:
    """Refuse a method that is not one of ``METHODS`` (before any work)."""
    if method not in METHODS:
        raise UsageError(
            f"unknown map method '{method[:40]}'", remedy=f"use {option('method')} one of: {', '.join(METHODS)}"
        )


def choose_method(method: str, n: int) -> str:
    """The layout ``method`` means for ``n`` points: ``auto`` resolved, an impossible request refused."""
    check_method(method)
    if method == "auto":
        return "umap" if n >= MIN_POINTS["umap"] and umap_available() else "pca"
    if method == "umap" and not umap_available():
        raise UsageError(
            "UMAP needs the umap-learn package, which is not installed",
            remedy=f"pip install umap-learn, or use {option('method', 'pca')}",
        )
    if n < MIN_POINTS[method]:
        raise DataError(
            f"too few points for {method.upper() if method == 'umap' else 't-SNE'}: {n} (it needs at least "
            f"{MIN_POINTS[method]})",
            remedy=f"use {option('method', 'pca')}",
        )
    return method


# --- sources -------------------------------------------------------------------------------------------------


def collection_source(path: Path) -> MapSource:
    """A collection's stored embeddings, ids, paths (``root``/``path``) and labels."""
    from simsearch.store.collection import Collection, embeddings_of, int64_column

    snapshot = Collection(path).load()
    meta = snapshot.meta
    if meta.num_rows == 0:
        raise DataError(
            f"collection '{path}' holds no images", remedy="index a folder into it first (simsearch index IMAGES)"
        )
    roots = meta.column("root").to_pylist()
    rels = meta.column("path").to_pylist()
    return MapSource(
        ids=np.array(int64_column(meta, "id"), np.int64),
        embeddings=np.array(embeddings_of(meta), np.float32),
        labels=meta.column("label").to_pylist(),
        paths=[_join(root, rel) for root, rel in zip(roots, rels, strict=True)],
        title=Path(path).name or str(path),
        metric=snapshot.metric,
    )


def folder_source(
    folder: Path, model: Path, device: str = "auto", workers: int = 0, progress: Progress = no_progress
) -> MapSource:
    """The images under ``folder`` (labels from their sub-folders) embedded with the model folder ``model``; ids
    are the rows' numbers. Images that cannot be embedded are left out and listed in ``skipped``."""
    from simsearch.embedding import embed_files
    from simsearch.io import find_images
    from simsearch.verification import load_encoder

    entries, unreadable = find_images(folder)
    if not entries:
        raise DataError(f"no images under '{folder}'", remedy="check the path")
    encoder, _ = load_encoder(str(model), None, Path(), device)
    files, names = [e.path for e in entries], [e.rel for e in entries]
    embedded = embed_files(encoder, files, convert=True, names=names, workers=workers, progress=progress)
    skipped = [(s.rel, s.reason) for s in unreadable]
    skipped += [(entries[n].rel, error.reason()) for n, error in embedded.errors]
    if not embedded.kept:
        name, reason = skipped[0]
        raise DataError(
            f"none of the {len(entries)} images under '{folder}' could be embedded (the first, {name}: {reason})",
            remedy="check that the images and the model go together",
        )
    root = str(Path(folder).resolve())
    kept = [entries[n] for n in embedded.kept]
    return MapSource(
        ids=np.arange(len(kept), dtype=np.int64),
        embeddings=embedded.embeddings,
        labels=[e.label for e in kept],
        paths=[_join(root, e.rel) for e in kept],
        title=Path(folder).resolve().name or root,
        metric=encoder.metric,
        skipped=skipped,
    )


def _join(root: str, rel: str) -> str:
    return rel if not root else f"{root.rstrip('/')}/{rel}"


# --- layouts -------------------------------------------------------------------------------------------------


def layout(embeddings: np.ndarray, method: str, seed: int = 0, metric: str = "l2") -> np.ndarray:
    """(n, 2) float32 coordinates of ``embeddings`` by ``method`` (``umap``, ``pca`` or ``tsne``; resolve
    ``auto`` with ``choose_method`` first)."""
    x = np.asarray(embeddings, np.float64)
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
    if method == "pca":
        xy = _pca(x)
    elif method == "umap":
        xy = _umap(x, seed)
    elif method == "tsne":
        xy = _tsne(x, seed)
    else:
        raise UsageError(f"unknown map method '{method[:40]}'", remedy=f"use {option('method', 'pca')}")
    xy = np.asarray(xy, np.float32)
    if not np.isfinite(xy).all():
        raise DataError(
            f"the {method} layout gave NaN or infinite coordinates", remedy=f"use {option('method', 'pca')}"
        )
    return xy


def _pca(x: np.ndarray) -> np.ndarray:
    """The two leading principal components, each signed so that its largest loading is positive."""
    n, d = x.shape
    xy = np.zeros((n, 2))
    if n < 2 or d == 0:
        return xy
    centred = x - x.mean(axis=0)
    if d <= n:
        vectors = np.linalg.eigh(centred.T @ centred)[1]
        components = vectors[:, ::-1][:, : min(2, d)]
    else:
        components = np.linalg.svd(centred, full_matrices=False)[2][: min(2, n)].T
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(components.shape[1])])
    components = components * np.where(signs == 0, 1.0, signs)
    xy[:, : components.shape[1]] = centred @ components
    return xy


def _umap(x: np.ndarray, seed: int) -> np.ndarray:
    import umap

    with warnings.catch_warnings():  # "n_jobs overridden by setting random_state": seeded runs are single-threaded
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), min_dist=0.1, random_state=seed)
        return np.asarray(reducer.fit_transform(x.astype(np.float32)))


#: Below this many points t-SNE runs on one thread: its many short parallel steps otherwise wait on OpenMP threads
#: that spin beside torch's (20 points: 8 s instead of 0.1 s, once torch is imported).
TSNE_THREADED_FROM = 5000


def _tsne(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perplexity = float(min(30.0, (len(x) - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    with threadpool_limits(limits=1 if len(x) < TSNE_THREADED_FROM else None, user_api="openmp"):
        return np.asarray(tsne.fit_transform(x))


# --- the map -------------------------------------------------------------------------------------------------


def make_map(
    ids: np.ndarray,
    embeddings: np.ndarray,
    labels: Sequence[str | None],
    paths: Sequence[str],
    out_dir: Path,
    method: str = "auto",
    seed: int = 0,
    max_thumbnails: int = 5000,
    *,
    metric: str = "l2",
    title: str = "",
    progress: Progress = no_progress,
) -> MapReport:
    """Lay out ``embeddings`` (one row per id, label and path) in two dimensions and write ``map.html``,
    ``map.png`` and ``map.parquet`` into ``out_dir`` (see the module's docstring). Thumbnails are read from
    ``paths``; a file that is gone or unreadable simply has none."""
    started = time.perf_counter()
    ids = np.asarray(ids, np.int64)
    embeddings = np.asarray(embeddings, np.float32)
    n = len(ids)
    if embeddings.ndim != 2 or len(embeddings) != n or len(labels) != n or len(paths) != n:
        raise ValueError("ids, embeddings, labels and paths must have one row per point")
    if n == 0:
        raise DataError("there are no embeddings to map", remedy="index some images first")
    if not np.isfinite(embeddings).all():
        raise DataError(
            "some embeddings are NaN or infinite", remedy=f"index the images again with {option('rebuild', 'true')}"
        )
    chosen = choose_method(method, n)
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir)

    progress(f"layout ({chosen})", 0, 1)
    xy = layout(embeddings, chosen, seed, metric)
    progress(f"layout ({chosen})", 1, 1)

    names = sorted({label for label in labels if label is not None})
    index = {name: g for g, name in enumerate(names)}
    groups = np.array([-1 if label is None else index[label] for label in labels], np.int64)
    colours = palette(len(names))

    sample = _thumbnail_sample(n, max_thumbnails, seed)
    thumbs = thumbnails([paths[i] for i in sample], progress=progress)
    kept = [(int(i), png) for i, png in zip(sample, thumbs, strict=True) if png is not None]

    files = {key: out_dir / name for key, name in MAP_FILES.items()}
    progress("writing", 0, 3)
    _write_parquet(files["parquet"], ids, xy, paths, labels)
    progress("writing", 1, 3)
    _write_png(files["png"], xy, groups, names, colours, title, chosen, seed)
    progress("writing", 2, 3)
    from simsearch.latent.map_page import render_page

    page = render_page(title or "latent map", _page_data(xy, groups, names, colours, paths, kept, title, chosen))
    _atomic_write(files["html"], page.encode("utf-8"))
    progress("writing", 3, 3)
    return MapReport(out_dir, n, chosen, time.perf_counter() - started, files, len(kept), len(names))


def palette(count: int) -> list[str]:
    """``count`` distinct colours (hex), one per label in sorted order."""
    if count <= len(TAB10):
        return TAB10[:count]
    if count <= len(TAB20):
        return TAB20[:count]
    colours = []
    for g in range(count):
        hue = (g * 0.618033988749895) % 1.0
        lightness = (0.42, 0.55, 0.34)[g % 3]
        r, gr, b = colorsys.hls_to_rgb(hue, lightness, 0.75)
        colours.append(f"#{round(r * 255):02x}{round(gr * 255):02x}{round(b * 255):02x}")
    return colours


def prepare_out_dir(out_dir: Path) -> None:
    """Make ``out_dir``, or refuse it when it holds anything but a map's files (simsearch writes only into a folder
    that is new, empty, or its own)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"'{out_dir}' is a file, not a folder", remedy=f"choose another {option('out_dir')}")
    if out_dir.is_dir():
        ours = set(MAP_FILES.values())
        others = sorted(
            entry.name for entry in os.scandir(out_dir) if entry.name not in ours and not _temporary(entry.name)
        )
        if others:
            shown = ", ".join(repr(name) for name in others[:3]) + (
                f" and {len(others) - 3} more" if len(others) > 3 else ""
            )
            raise UsageError(
                f"'{out_dir}' holds other files than a map's ({shown})",
                remedy=f"simsearch will not write there; choose a new or empty folder for {option('out_dir')}",
            )
    out_dir.mkdir(parents=True, exist_ok=True)


def _temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp") and name[1:-4] in MAP_FILES.values()


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _thumbnail_sample(n: int, limit: int, seed: int) -> np.ndarray:
    """Which points get a thumbnail: all of them, or a random (seeded) ``limit`` of them, in order."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max(0, limit), replace=False))


def thumbnails(
    paths: Sequence[str], side: int = THUMB_SIDE, budget: int = THUMB_BUDGET, progress: Progress = no_progress
) -> list[bytes | None]:
    """A PNG thumbnail (at most ``side`` pixels on the longer side, never enlarged) of each file, or None where the
    file is gone or unreadable, or once ``budget`` bytes of PNG are spent. Decoded on a few threads."""
    out: list[bytes | None] = [None] * len(paths)
    spent = 0
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for n, png in enumerate(pool.map(lambda p: _thumbnail(p, side), paths)):
            if png is not None and spent + len(png) <= budget:
                out[n] = png
                spent += len(png)
            if n % 256 == 0 or n + 1 == len(paths):
                progress("thumbnails", n + 1, len(paths))
    return out


def _thumbnail(path: str, side: int) -> bytes | None:
    from simsearch.io import decode_image, read_file

    try:
        image = decode_image(read_file(Path(path)), path, draft=(side, side))
    except ImageError:
        return None
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _page_data(
    xy: np.ndarray,
    groups: np.ndarray,
    names: list[str],
    colours: list[str],
    paths: Sequence[str],
    thumbs: list[tuple[int, bytes]],
    title: str,
    method: str,
) -> dict[str, Any]:
    """What the page's script reads: coordinates as base64 little-endian float32, labels as indices, paths as a
    table of folders and a name each (a folder ends in ``/``), thumbnails as base64 PNG for the points that have
    one."""
    dirs: dict[str, int] = {}
    dir_of: list[int] = []
    name_of: list[str] = []
    for p in paths:
        cut = p.rfind("/") + 1
        dir_of.append(dirs.setdefault(p[:cut], len(dirs)))
        name_of.append(p[cut:])
    return {
        "title": title or "latent map",
        "method": {"pca": "PCA", "umap": "UMAP", "tsne": "t-SNE"}[method],
        "n": len(xy),
        "x": base64.b64encode(xy[:, 0].astype("<f4").tobytes()).decode("ascii"),
        "y": base64.b64encode(xy[:, 1].astype("<f4").tobytes()).decode("ascii"),
        "labels": names,
        "colours": colours,
        "none_colour": NO_LABEL,
        "label": groups.tolist(),
        "dirs": list(dirs),
        "dir": dir_of,
        "name": name_of,
        "thumbs": {
            "index": [i for i, _ in thumbs],
            "png": [base64.b64encode(png).decode("ascii") for _, png in thumbs],
        },
    }


def _write_parquet(
    path: Path, ids: np.ndarray, xy: np.ndarray, paths: Sequence[str], labels: Sequence[str | None]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "x": pa.array(xy[:, 0], pa.float32()),
            "y": pa.array(xy[:, 1], pa.float32()),
            "path": pa.array(list(paths), pa.string()),
            "label": pa.array(list(labels), pa.string()),
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    _atomic_write(path, buffer.getvalue())


def _write_png(
    path: Path,
    xy: np.ndarray,
    groups: np.ndarray,
    names: list[str],
    colours: list[str],
    title: str,
    method: str,
    seed: int,
) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgba_array
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    n = len(xy)
    table = to_rgba_array([*colours, NO_LABEL])  # row -1 (no label) is the last
    rgba = table[groups]
    rgba[:, 3] = float(np.clip(np.sqrt(3000 / n), 0.15, 0.9))
    order = np.random.default_rng(seed).permutation(n)  # no label drawn systematically over another
    fig = Figure(figsize=(9, 8), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    size = 14.0 if n <= 1000 else 5.0 if n <= 10_000 else 1.5
    ax.scatter(xy[order, 0], xy[order, 1], c=rgba[order], s=size, linewidths=0, rasterized=True)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")
    label_note = "no labels" if not names else f"{len(names)} labels"
    name = {"pca": "PCA", "umap": "UMAP", "tsne": "t-SNE"}[method]
    ax.set_title(f"{title or 'latent map'} — {name}, {n:,} points, {label_note}", fontsize=11)
    has_none = bool((groups < 0).any())
    if names and len(names) <= LEGEND_LABELS:
        handles = [
            Line2D([], [], marker="o", linestyle="", color=colour, label=label)
            for label, colour in zip(names, colours, strict=True)
        ]
        if has_none:
            handles.append(Line2D([], [], marker="o", linestyle="", color=NO_LABEL, label="no label"))
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    _atomic_write(path, buffer.getvalue())
