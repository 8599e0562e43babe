"""Anomaly scores: which images are unlike the others, ranked, and flagged beyond a threshold fitted on images of the
kind the model or collection knows.

Two scores, higher is more anomalous:

* ``reconstruction``: the mean squared difference between an image and its reconstruction by the model's decoder,
  in the model's input space (a model with a decoder: autoencoder, denoising, vae). What the model never learnt to
  draw, it reconstructs badly. The threshold is a percentile (99 by default) of the same errors on the model's own
  training images, which ``train`` stores in ``encoder.json`` (``anomaly``: the threshold and quantiles).
* ``knn``: the mean distance from an image's embedding to its k nearest neighbours in a collection, in the
  encoder's metric (any family). An image that is itself in the collection (the same content, by sha256) does not
  count itself: its own match, at distance 0, is dropped (leave-one-out). The threshold is a percentile of the
  collection's own leave-one-out scores, computed on the spot (on a seeded sample of at most 2,000 of its images).

    source = load_source(None, "photos", Path("indexes"))
    found = find_anomalies(source, [Path("new-scans/")], by="knn", k=5)
    found.results[0]          # the most anomalous: rank 1, its score, whether it is beyond the threshold
    write_report(found, source.encoder, Path("reports/anomalies"))
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simsearch import vectors
from simsearch.errors import ImageError, ModelError, UsageError, option
from simsearch.io import load_images
from simsearch.latent.images import (
    FLAGGED,
    Cell,
    Grid,
    Source,
    draw_grid,
    expand_images,
    read_images,
    reconstruct,
    reconstruction_grid,
    require_decoder,
    to_pixels,
)
from simsearch.models.encoder import Encoder
from simsearch.progress import Progress, no_progress
from simsearch.store.collection import embeddings_of

#: The scores, as ``--by`` names them (``auto``: reconstruction for a model with a decoder, else knn).
SCORES = ("reconstruction", "knn")
DEFAULT_PERCENTILE = 99.0
#: At most this many of a collection's images (a seeded sample) are scored to fit a knn threshold.
MAX_REFERENCE_QUERIES = 2000
#: What is said of a model folder saved before the reconstruction threshold was recorded.
NO_THRESHOLD = (
    "this model folder stores no anomaly threshold (made before it did): scores are ranked, none flagged — "
    "retrain to get one"
)
#: How many images the report's grids show from each end of the ranking.
REPORT_GRID = 16
#: How many rows of the ranking the report's table lists.
REPORT_ROWS = 1000


def reconstruction_errors(encoder: Encoder, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Each image's reconstruction error: ``images`` (n, C, H, W) float32, preprocessed as ``load_images`` gives
    them, → (n,) float32, the mean squared difference between the image and ``decode(embed(image))`` in the model's
    input space (what ``train`` measures on the training images for the stored threshold). ``ModelError`` for a
    model without a decoder."""
    require_decoder(encoder, "scoring by reconstruction")
    return encoder.reconstruction_errors(np.asarray(images, np.float32), batch_size)


class KnnReference:
    """Reference embeddings in an exact FAISS index (``simsearch.vectors``), for k-NN scores against them."""

    def __init__(self, reference: np.ndarray, metric: str) -> None:
        vectors.check_metric(metric)
        self.reference = np.ascontiguousarray(reference, dtype=np.float32)
        if self.reference.ndim != 2:
            raise ValueError(f"reference embeddings must be (n, d), not {self.reference.shape}")
        self.metric = metric
        self.index = vectors.new_index(self.reference.shape[1], metric)
        vectors.add_vectors(self.index, self.reference, np.arange(len(self.reference), dtype=np.int64), metric)

    def __len__(self) -> int:
        return len(self.reference)

    def scores(self, queries: np.ndarray, k: int, exclude_self: bool = False, chunk: int = 1024) -> np.ndarray:
        """Each query's mean distance to its ``k`` nearest reference embeddings (q,) float32. ``exclude_self``:
        every query is one of the reference rows (leave-one-out), and its nearest match — itself, at distance 0 —
        is dropped. Candidates come from FAISS and are re-measured exactly (``vectors.exact_distances``)."""
        if k < 1:
            raise UsageError(f"{option('k')} must be at least 1, not {k}")
        need = k + (1 if exclude_self else 0)
        if need > len(self):
            held = f"{len(self)} image{'s' if len(self) != 1 else ''}"
            raise UsageError(
                f"{option('k', k)} needs at least {need} reference images{' (one is the image itself)' if exclude_self else ''}"
                f", and there are {held}",
                remedy=f"pass a smaller {option('k')}",
            )
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.reference.shape[1]:
            raise ValueError(f"queries must be (q, {self.reference.shape[1]}), not {queries.shape}")
        wider = min(len(self), need + 8)  # a few spare candidates: FAISS's float rounding may swap near ties
        out = np.empty(len(queries), np.float32)
        for start in range(0, len(queries), chunk):
            part = queries[start : start + chunk]
            _, ids = vectors.search(self.index, part, wider, self.metric)
            distances = vectors.exact_distances(part, self.reference[np.maximum(ids, 0)], self.metric)
            distances = np.sort(np.where(ids >= 0, distances, np.inf), axis=1)
            nearest = distances[:, 1:need] if exclude_self else distances[:, :need]
            out[start : start + len(part)] = nearest.mean(axis=1, dtype=np.float64)
        return out


def knn_scores(
    reference: np.ndarray, queries: np.ndarray, k: int, metric: str, exclude_self: bool = False
) -> np.ndarray:
    """The mean distance (in ``metric``, an encoder's ``metric``: ``l2`` or ``cosine``) from each query embedding
    (q, d) to its ``k`` nearest ``reference`` embeddings (n, d) → (q,) float32. ``exclude_self=True`` when the
    queries are reference rows themselves (leave-one-out): each one's own match is not counted."""
    return KnnReference(reference, metric).scores(queries, k, exclude_self)


# --- thresholds --------------------------------------------------------------------------------------------------


@dataclass
class Threshold:
    """The score beyond which an image is flagged (``value``; None: none flagged, ``note`` says why), and how it
    was obtained: the ``percentile`` of which scores (``fitted_on``, ``images`` of them)."""

    by: str
    percentile: float
    value: float | None
    fitted_on: str | None = None
    images: int | None = None
    note: str | None = None

    def describe(self) -> str:
        if self.value is None:
            return self.note or "no threshold: scores are ranked, none flagged"
        return (
            f"threshold {self.value:.6g}: the {_ordinal(self.percentile)} percentile of {self.fitted_on} "
            f"({self.images:,} images)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "value": self.value,
            "percentile": self.percentile,
            "fitted_on": self.fitted_on,
            "images": self.images,
            "note": self.note,
            "description": self.describe(),
        }


def _ordinal(p: float) -> str:
    text = f"{p:g}"
    if not text.isdigit():
        return text
    n = int(text)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def check_percentile(percentile: float) -> None:
    if not (0.0 <= percentile <= 100.0):
        raise UsageError(f"{option('percentile')} must be between 0 and 100, not {percentile}")


def stored_threshold(encoder: Encoder, percentile: float = DEFAULT_PERCENTILE) -> Threshold:
    """The reconstruction threshold at ``percentile`` of the training images' errors that ``train`` stored in
    ``encoder.json`` (``anomaly``): its own percentile exactly, any other interpolated between the stored quantiles.
    A folder saved before it was recorded has none: ``value`` None and ``NO_THRESHOLD`` as the note."""
    check_percentile(percentile)
    record = encoder.anomaly
    if record is None:
        return Threshold("reconstruction", percentile, None, note=NO_THRESHOLD)
    try:
        if record.get("by") != "reconstruction":
            raise ValueError(f"'by' is {str(record.get('by'))[:40]!r}, not 'reconstruction'")
        quantiles = {float(p): float(v) for p, v in record["quantiles"].items()}
        images = int(record["images"])
        stored_p, stored_value = float(record["percentile"]), float(record["threshold"])
        if not quantiles or not all(math.isfinite(v) for v in [*quantiles.values(), stored_value]):
            raise ValueError("its values must be finite numbers")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelError(
            f"encoder.json's 'anomaly' is malformed ({str(exc)[:120]})", remedy="re-train the model"
        ) from None
    if percentile == stored_p:
        value = stored_value
    else:
        ps = sorted(quantiles)
        value = float(np.interp(percentile, ps, [quantiles[p] for p in ps]))
    fitted_on = "the reconstruction errors of the model's training images"
    return Threshold("reconstruction", percentile, value, fitted_on, images)


def knn_threshold(
    reference: KnnReference,
    k: int,
    percentile: float = DEFAULT_PERCENTILE,
    max_queries: int = MAX_REFERENCE_QUERIES,
    seed: int = 0,
) -> Threshold:
    """The knn threshold: ``percentile`` of the reference's own leave-one-out k-NN scores (each image scored
    against the others), over a seeded sample of at most ``max_queries`` of its images."""
    check_percentile(percentile)
    rows = np.arange(len(reference))
    if len(rows) > max_queries:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), max_queries, replace=False))
    scores = reference.scores(reference.reference[rows], k, exclude_self=True)
    value = float(np.percentile(scores.astype(np.float64), percentile))
    whose = "all the" if len(rows) == len(reference) else f"a sample of {len(rows):,} of the"
    fitted_on = f"the leave-one-out {k}-NN scores of {whose} collection's images"
    return Threshold("knn", percentile, value, fitted_on, len(rows))


# --- scoring images ----------------------------------------------------------------------------------------------


@dataclass
class Scored:
    """One image's place in the ranking (1: the most anomalous)."""

    rank: int
    path: str
    score: float
    flagged: bool
    #: knn: whether the image is itself in the collection (left out of its own neighbours); None for reconstruction
    indexed: bool | None = None
    file: Path | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rank": self.rank, "path": self.path, "score": self.score, "flagged": self.flagged}
        if self.indexed is not None:
            out["indexed"] = self.indexed
        return out


@dataclass
class Anomalies:
    """Every image scored and ranked (``results``, most anomalous first), the threshold, and the files under the
    folders given that could not be read (``skipped``)."""

    by: str
    source: str
    threshold: Threshold
    results: list[Scored]
    k: int | None = None
    skipped: list[ImageError] = field(default_factory=list)

    @property
    def flagged(self) -> int:
        return sum(r.flagged for r in self.results)

    def to_json(self, top: int | None = None) -> dict[str, Any]:
        return {
            "by": self.by,
            "source": self.source,
            "k": self.k,
            "images": len(self.results),
            "flagged": self.flagged,
            "threshold": self.threshold.to_json(),
            "results": [r.to_json() for r in self.results[:top]],
            "skipped": [{"path": e.file, "reason": e.reason()} for e in self.skipped],
        }


def choose_score(source: Source, by: str) -> str:
    """The score ``by`` names (``auto``: reconstruction for a model with a decoder, else knn), checked against
    what the source can give: a decoder for reconstruction, a collection for knn."""
    if by not in (*SCORES, "auto"):
        raise UsageError(f"unknown score {by!r} for {option('by')}", remedy="use reconstruction, knn or auto")
    if by == "auto":
        by = "reconstruction" if source.encoder.decoder is not None or source.collection is None else "knn"
    if by == "reconstruction":
        require_decoder(
            source.encoder,
            f"anomalies {option('by', 'reconstruction')}",
            source.folder,
            remedy=f"use {option('by', 'knn')} with {option('name')} (a collection indexed with this model), or "
            f"train a model with {option('family', 'autoencoder')}",
        )
    elif source.collection is None:
        raise UsageError(
            f"{option('by', 'knn')} scores images by their distance to a collection's images, and a model folder "
            "holds none",
            remedy=f"pass {option('name')} (a collection) instead of {option('model')}",
        )
    return by


def _batches(
    encoder: Encoder, paths: Sequence[Path], skipped: list[ImageError], batch_size: int
) -> Iterator[tuple[list[Path], list[str], np.ndarray, list[str]]]:
    """The images (files, or every image under folders) loaded ``batch_size`` at a time: (paths, names, arrays,
    sha256). A file named by itself that cannot be read raises; one under a folder goes to ``skipped``."""
    files, problems = expand_images(paths)
    skipped += problems
    for start in range(0, len(files), batch_size):
        batch = files[start : start + batch_size]
        names = [str(path) for path, _, _ in batch]
        kept: list[int] = []
        arrays: list[np.ndarray] = []
        sha: list[str] = []
        for n, item in enumerate(load_images([path for path, _, _ in batch], encoder.preprocess, names=names)):
            if isinstance(item, ImageError):
                if batch[n][2]:
                    raise item
                skipped.append(item)
            elif item is not None:
                kept.append(n)
                arrays.append(item.array)
                sha.append(item.sha256)
        if kept:
            yield [batch[n][0] for n in kept], [names[n] for n in kept], np.stack(arrays), sha


def find_anomalies(
    source: Source,
    paths: Sequence[Path],
    by: str = "auto",
    k: int = 5,
    percentile: float = DEFAULT_PERCENTILE,
    batch_size: int = 256,
    progress: Progress = no_progress,
) -> Anomalies:
    """Score every image of ``paths`` (files, or folders: every image under them) by ``by`` (see the module),
    rank them (highest score first; ties in input order) and flag those beyond the threshold at ``percentile``."""
    check_percentile(percentile)
    by = choose_score(source, by)
    encoder = source.encoder
    reference: KnnReference | None = None
    row_of_sha: dict[str, int] = {}
    if by == "knn":
        assert source.collection is not None
        snapshot = source.collection.load()
        if snapshot.manifest["encoder"]["fingerprint"] != encoder.fingerprint:  # rebuilt since the encoder was read
            encoder = source.collection.load_encoder(snapshot.manifest, device=str(encoder.device))
        reference = KnnReference(embeddings_of(snapshot.meta), encoder.metric)
        row_of_sha = {sha: row for row, sha in enumerate(snapshot.meta.column("sha256").to_pylist())}
        progress("fitting the threshold", 0, None)
        threshold = knn_threshold(reference, k, percentile)  # a -k too large is said here, before any image is read
    else:
        threshold = stored_threshold(encoder, percentile)
    skipped: list[ImageError] = []
    files: list[Path] = []
    names: list[str] = []
    scores: list[np.ndarray] = []
    indexed: list[bool] = []
    for batch_paths, batch_names, arrays, sha in _batches(encoder, paths, skipped, batch_size):
        if reference is None:
            scores.append(encoder.reconstruction_errors(arrays, batch_size))
        else:
            rows = [row_of_sha.get(s) for s in sha]
            inside = np.array([r is not None for r in rows], bool)
            z = np.empty((len(arrays), encoder.dim), np.float32)
            if (~inside).any():
                z[~inside] = encoder.embed(arrays[~inside], batch_size)
            batch_scores = np.empty(len(arrays), np.float32)
            if inside.any():
                z[inside] = reference.reference[[r for r in rows if r is not None]]
                batch_scores[inside] = reference.scores(z[inside], k, exclude_self=True)
            if (~inside).any():
                batch_scores[~inside] = reference.scores(z[~inside], k)
            scores.append(batch_scores)
            indexed += inside.tolist()
        files += batch_paths
        names += batch_names
        progress("scoring images", len(names), None)
    if not names:
        shown = ", ".join(str(p) for p in paths[:3]) + (" …" if len(paths) > 3 else "")
        raise ImageError(f"no readable images in {shown}", remedy="check the paths")
    values = np.concatenate(scores)
    order = np.argsort(-values.astype(np.float64), kind="stable")
    results = [
        Scored(
            rank=rank + 1,
            path=names[i],
            score=float(values[i]),
            flagged=threshold.value is not None and float(values[i]) > threshold.value,
            indexed=indexed[i] if indexed else None,
            file=files[i],
        )
        for rank, i in enumerate(order)
    ]
    return Anomalies(by, source.description, threshold, results, k if by == "knn" else None, skipped)


# --- the report --------------------------------------------------------------------------------------------------


def ranking_grid(encoder: Encoder, found: Anomalies, results: Sequence[Scored], columns: int = 8) -> Grid:
    """The images of ``results`` as a grid, captioned with rank and score, flagged ones framed red: for
    reconstruction scores each input above its reconstruction, for knn the inputs alone."""
    inputs = read_images(encoder, [r.file for r in results if r.file is not None])
    frames = [FLAGGED if r.flagged else None for r in results]
    captions = [f"#{r.rank} {r.score:.4g}" for r in results]
    if found.by == "reconstruction":
        decoded, errors = reconstruct(encoder, inputs.arrays)
        return reconstruction_grid(encoder, inputs.names, inputs.arrays, decoded, errors, columns, frames, captions)
    pixels = to_pixels(inputs.arrays, encoder.preprocess)
    rows: list[list[Cell | None]] = []
    for start in range(0, len(results), columns):
        rows.append([Cell(pixels[i], captions[i], frames[i]) for i in range(start, min(start + columns, len(results)))])
    return draw_grid(rows, encoder.preprocess.size)


def write_report(found: Anomalies, encoder: Encoder, folder: Path) -> Path:
    """Write ``top.png`` (the most anomalous images), ``bottom.png`` (the least) and ``report.html`` (self-contained:
    both grids inlined, the threshold and how it was fitted, the ranking) into ``folder``; return the page's path."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"'{folder}' is a file, not a folder", remedy=f"choose a new {option('report')} folder")
    folder.mkdir(parents=True, exist_ok=True)
    count = min(REPORT_GRID, len(found.results))
    top = ranking_grid(encoder, found, found.results[:count])
    bottom = ranking_grid(encoder, found, found.results[len(found.results) - count :])
    top.save(folder / "top.png")
    bottom.save(folder / "bottom.png")
    page = folder / "report.html"
    page.write_text(render_html(found, folder))
    return page


def render_html(found: Anomalies, folder: Path) -> str:
    e = html.escape

    def figure(name: str, caption: str) -> str:
        data = base64.b64encode((folder / name).read_bytes()).decode()
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{e(name)}">'
            f"<figcaption>{e(caption)}</figcaption></figure>"
        )

    score = (
        "reconstruction error (mean squared error in the model's input space)"
        if found.by == "reconstruction"
        else f"mean distance to the {found.k} nearest images of the collection"
    )
    pair = "; each input above its reconstruction" if found.by == "reconstruction" else ""
    rows = "".join(
        f"<tr{' class=flagged' if r.flagged else ''}><td>{r.rank}</td><td>{r.score:.6g}</td>"
        f"<td>{'yes' if r.flagged else ''}</td><td>{e(r.path)}</td></tr>"
        for r in found.results[:REPORT_ROWS]
    )
    more = (
        f"<p>… and {len(found.results) - REPORT_ROWS:,} more (the JSON output lists them all).</p>"
        if len(found.results) > REPORT_ROWS
        else ""
    )
    skipped = f"<li>{len(found.skipped)} files that could not be used left out</li>" if found.skipped else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>simsearch anomalies — {e(found.source)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 3px 10px; text-align: left; }}
th {{ background: #f0f0f0; }} tr.flagged td {{ color: #b0181b; }} figure {{ margin: 2em 0; }}
img {{ max-width: 100%; image-rendering: pixelated; }} figcaption {{ color: #555; font-size: 0.9em; }}
</style></head><body>
<h1>simsearch anomalies</h1>
<ul>
<li>Source: {e(found.source)}</li>
<li>Score: {e(score)} — higher is more anomalous</li>
<li>{e(found.threshold.describe())}</li>
<li>{len(found.results):,} images scored, {found.flagged:,} flagged</li>
{skipped}
</ul>
{figure("top.png", f"The most anomalous images, rank and score under each{pair}; flagged ones framed red.")}
{figure("bottom.png", f"The least anomalous images{pair}.")}
<table><tr><th>rank</th><th>score</th><th>flagged</th><th>path</th></tr>{rows}</table>
{more}
</body></html>
"""
