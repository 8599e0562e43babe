"""Image files → embeddings: the one path that ``query`` (``Searcher.query_files``), ``verify`` (``Verifier``),
``eval`` and the benchmarks take, so that one file gets one embedding whichever command asks.

    result = embed_files(encoder, [Path("a.png"), Path("b.png")])
    result.embeddings  # (m, d) float32, one row per file that could be used, in input order
    result.errors      # (position, ImageError) for each file that could not

Each file is read, decoded and preprocessed with the encoder's own ``Preprocess`` (size, channels, ``resize``
letterbox or trim, inversion, mean and std), and embedded by the encoder. The channel rule is ``io.channels``'s,
the same for every command: an image whose colour differs from the model's (a colour image for a grey model, a
grey image for a colour one) is converted and counted (``convert``, the default), or refused (``strict``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simsearch.errors import ImageError, ModelError, option
from simsearch.io import LoadedImage, load_images, source_names
from simsearch.io.channels import current_rule
from simsearch.metrics import METRICS
from simsearch.models.encoder import Encoder
from simsearch.progress import Progress, no_progress


@dataclass
class Embedded:
    """What ``embed_files`` made of a list of files: the embeddings of those it could use, and why it could not
    use the others."""

    embeddings: np.ndarray  # (m, d) float32, in input order
    kept: list[int] = field(default_factory=list)  # the position in the input of each row of ``embeddings``
    errors: list[tuple[int, ImageError]] = field(default_factory=list)  # (position in the input, why), in order
    #: Novelty of each row (``models.novelty``: above 1, unlike the training images), or None when the encoder
    #: has no reference to tell (baselines, models saved before references were kept).
    novelty: np.ndarray | None = None
    #: The position in the input of each file whose colour was converted to the model's (``io.channels``).
    converted: list[int] = field(default_factory=list)

    @property
    def unfamiliar(self) -> np.ndarray | None:
        """Whether each row's image is unlike the images the model was trained on (None: not known)."""
        return None if self.novelty is None else self.novelty > 1.0


def embed_files(
    encoder: Encoder,
    paths: Sequence[Path | bytes],
    *,
    channels: str | None = None,
    convert: bool | None = None,
    strict: bool = False,
    names: Sequence[str] | None = None,
    stored: Callable[[str], np.ndarray | None] | None = None,
    workers: int = 0,
    batch_size: int = 256,
    progress: Progress = no_progress,
) -> Embedded:
    """Embed image files with ``encoder``, ``batch_size`` at a time (decoded on ``workers`` threads).

    ``channels``: the channel rule, ``convert`` or ``strict`` (default: the caller's ``io.channel_rule`` block's,
    else ``convert``); ``convert=False`` is the older spelling of ``strict`` (``True``: the rule in force).
    ``strict``: the first file that cannot be used raises its ``ImageError`` (before any later batch is read);
    otherwise such files are listed in ``errors``. A file cannot be used when it is missing or unreadable, does
    not decode, is refused by the channel rule, or is embedded as NaN or infinite values. ``names``: how errors
    name the files (default: their paths). ``stored``: the embedding already stored for a content hash (sha256),
    or None: a file it knows is not embedded again.
    """
    names = source_names(paths) if names is None else list(names)
    rule = current_rule(channels if channels is not None else "strict" if convert is False else None)
    spec = encoder.preprocess
    rows: list[np.ndarray] = []
    novelty: list[np.ndarray] = []
    result = Embedded(np.zeros((0, encoder.dim), np.float32))

    def fail(position: int, error: ImageError) -> None:
        if strict:
            raise error
        result.errors.append((position, error))

    for start in range(0, len(paths), batch_size):
        batch = list(paths[start : start + batch_size])
        loaded: list[tuple[int, LoadedImage]] = []
        batch_names = names[start : start + len(batch)]
        for offset, item in enumerate(load_images(batch, spec, workers, batch_names, channels=rule)):
            position = start + offset
            if isinstance(item, ImageError):
                fail(position, item)
            elif item is not None:
                loaded.append((position, item))
        known = [stored(item.sha256) if stored is not None else None for _, item in loaded]
        fresh = [n for n, z in enumerate(known) if z is None]
        out = np.empty((len(loaded), encoder.dim), np.float32)
        if fresh:
            out[fresh] = encoder.embed(np.stack([loaded[n][1].array for n in fresh]))
        for n, z in enumerate(known):
            if z is not None:
                out[n] = z
        good = [bool(np.isfinite(row).all()) for row in out]
        for (position, item), ok in zip(loaded, good, strict=True):
            if ok:
                result.kept.append(position)
                if item.converted:
                    result.converted.append(position)
            else:
                fail(position, ImageError("the encoder gave a NaN or infinite embedding for it", file=names[position]))
        rows.append(out[np.asarray(good, bool)])
        if encoder.reference is not None and loaded:
            scores = encoder.reference.score(np.stack([item.array for _, item in loaded]), spec)
            novelty.append(scores[np.asarray(good, bool)])
        progress("embedding", min(start + len(batch), len(paths)), len(paths))
    if rows:
        result.embeddings = np.concatenate(rows)
    if encoder.reference is not None:
        result.novelty = np.concatenate(novelty) if novelty else np.zeros(0, np.float64)
    result.errors.sort(key=lambda error: error[0])
    return result


def check_metric(metric: str, source: str | Path) -> None:
    """Refuse a model or collection whose metric simsearch cannot measure (``source`` names it: a description
    such as ``this pca model``, or the path of a collection)."""
    if metric not in METRICS:
        what = f"its metric {metric[:20]!r} is not one simsearch measures ({', '.join(METRICS)})"
        raise ModelError(
            what if isinstance(source, Path) else f"{source}: {what}",
            file=source if isinstance(source, Path) else None,
            remedy=f"retrain the model, or rebuild the collection with {option('rebuild', 'true')}",
        )
