"""What a model's decoder makes: reconstructions, interpolations, samples from a VAE's prior, denoised images, and the
picture grids they are shown in.

    source = load_source("models/ae", None, Path("indexes"))          # a model folder, or a collection's encoder
    inputs = read_images(source.encoder, [Path("a.png"), Path("b.png")])
    outputs, errors = reconstruct(source.encoder, inputs.arrays)       # errors: mean squared error, input space
    reconstruction_grid(source.encoder, inputs, outputs, errors).image.save("grid.png")

Everything is in the encoder's input space: images are read with its own preprocessing (size, resize, inversion,
mean and std; colour converted to its channels, as ``query`` does), and its decoder gives images in that space.
``to_pixels`` undoes the preprocessing for display (un-normalised, un-inverted, clipped to 0..255), so a
reconstruction looks like the input it came from. Only the autoencoder, denoising and vae families have a decoder;
only the vae has a prior, N(0, I), to sample from (its embedding is μ, and its decoder learnt to decode draws of
N(μ, σ²), which the KL term pulls towards N(0, I)).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from simsearch.errors import ImageError, ModelError, UsageError, option
from simsearch.io import Preprocess, denormalise, find_images, load_images, normalise, save_png
from simsearch.models.encoder import Encoder
from simsearch.models.registry import REGISTRY, get_family
from simsearch.store.collection import Collection, resolve_path
from simsearch.verification import load_encoder

#: Tiles are enlarged by a whole factor until their short side is at least this many pixels (16×16 → 64×64).
MIN_TILE_SIDE = 64
#: Pixels between tiles, and around the grid.
GAP = 4
#: Height of a caption band, under each row of tiles that has a caption.
CAPTION_HEIGHT = 14
BACKGROUND = (255, 255, 255)
TEXT = (40, 40, 40)
FLAGGED = (215, 25, 28)
#: The families whose models decode (those with a decoder in the registry), named in refusals.
DECODER_FAMILIES = tuple(name for name, family in REGISTRY.items() if family.decoder is not None)
#: The marker ``denoise`` leaves in its output folder: the files it wrote there, which a later run may replace.
OUTPUT_MARKER = ".simsearch-denoise.json"


# --- where the encoder comes from --------------------------------------------------------------------------------


@dataclass
class Source:
    """An encoder and where it came from: a model folder, or a collection (then ``collection`` is set)."""

    encoder: Encoder
    description: str
    collection: Collection | None = None
    folder: Path | None = None


def load_source(model: str | None, name: str | None, home: Path, device: str = "cpu") -> Source:
    """The encoder of a model folder (``model``), or of a collection (``name``, default ``default``). A
    collection passed as a model folder is refused with the remedy (pass it by name)."""
    if model is not None:  # the model folder's checks, and both given, are load_encoder's
        encoder, description = load_encoder(model, name, home, device)
        return Source(encoder, description, folder=Path(model))
    collection = Collection(resolve_path(name or "default", home))
    manifest = collection.read_manifest()
    encoder = collection.load_encoder(manifest, device=device)
    return Source(encoder, f"collection {collection.path}", collection, collection.path / manifest["files"]["encoder"])


def require_decoder(
    encoder: Encoder, command: str, folder: Path | None = None, needs: str = "", remedy: str = ""
) -> None:
    """Refuse a model that cannot decode: its family has no decoder (siamese, pca, pixels), or it was saved
    without one (a format-1 folder, named by ``folder``). ``needs`` names the families ``command`` takes (default:
    every family with a decoder); ``remedy`` replaces the default one (train such a model) for a family without."""
    if encoder.decoder is not None:
        return
    wanted = needs or _families_text(DECODER_FAMILIES)
    if get_family(encoder.family).decoder is None:
        first = "vae" if needs == "a vae model" else DECODER_FAMILIES[0]
        others = "" if needs == "a vae model" else f" (or {', '.join(DECODER_FAMILIES[1:])})"
        raise ModelError(
            f"the {encoder.family} family has no decoder: {command} needs {wanted}",
            remedy=remedy or f"train one with {option('family', first)}{others}",
        )
    raise ModelError(
        f"this {encoder.family} model was saved without its decoder (a format-1 folder, made before decoders were "
        "kept)",
        file=folder,
        remedy=f"re-train it with {option('family', encoder.family)} to keep one",
    )


def _families_text(names: Sequence[str]) -> str:
    article = "an" if names[0][:1] in "aeio" else "a"  # an autoencoder, a vae (vee-ay-ee)
    return (
        f"{article} {', '.join(names[:-1])} or {names[-1]} model" if len(names) > 1 else f"{article} {names[0]} model"
    )


# --- images in ---------------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    """Images read with an encoder's preprocessing: ``arrays`` (n, C, H, W) float32 in its input space, and for
    each its path, how it is named (``names``), where an output for it goes (``rel``: the file name of an image
    given by itself, the path under its folder for one found in a folder) and its content's sha256. ``skipped``:
    the files under folders that could not be read (an image named by itself that cannot be read is an error)."""

    paths: list[Path]
    names: list[str]
    rel: list[str]
    arrays: np.ndarray
    sha256: list[str]
    skipped: list[ImageError] = field(default_factory=list)


def expand_images(paths: Sequence[Path]) -> tuple[list[tuple[Path, str, bool]], list[ImageError]]:
    """Image arguments → ``(file, rel, named)`` for every image: a file by itself (``rel`` its name, ``named``
    True), or every image under a folder (recognised by content; ``rel`` its path under the folder). Also the
    files under folders that look like images but are not. A path that does not exist is an ``ImageError``."""
    files: list[tuple[Path, str, bool]] = []
    problems: list[ImageError] = []
    for path in map(Path, paths):
        if path.is_dir():
            entries, skipped = find_images(path)
            files += [(entry.path, entry.rel, False) for entry in entries]
            problems += [ImageError(s.reason, file=path / s.rel) for s in skipped]
        elif path.is_file():
            files.append((path, path.name, True))
        else:
            raise ImageError("no such image file or folder", file=path, remedy="check the path")
    return files, problems


def read_images(encoder: Encoder, paths: Sequence[Path], strict: bool = True) -> Inputs:
    """Read image files, or every image under folders, with ``encoder``'s preprocessing (colour converted to its
    channels, as ``query`` does). A file named by itself that cannot be read is an ``ImageError``; one found under
    a folder is listed in ``skipped`` (or raised too, with ``strict``)."""
    files, skipped = expand_images(paths)
    if strict and skipped:
        raise skipped[0]
    kept: list[int] = []
    arrays: list[np.ndarray] = []
    sha: list[str] = []
    names = [str(path) for path, _, _ in files]
    for n, item in enumerate(load_images([path for path, _, _ in files], encoder.preprocess, names=names)):
        if isinstance(item, ImageError):
            if strict or files[n][2]:
                raise item
            skipped.append(item)
        elif item is not None:
            kept.append(n)
            arrays.append(item.array)
            sha.append(item.sha256)
    if not kept:
        shown = ", ".join(str(p) for p in paths[:3]) + (" …" if len(paths) > 3 else "")
        raise ImageError(f"no readable images in {shown}", remedy="check the paths")
    return Inputs(
        paths=[files[n][0] for n in kept],
        names=[names[n] for n in kept],
        rel=[files[n][1] for n in kept],
        arrays=np.stack(arrays),
        sha256=sha,
        skipped=skipped,
    )


# --- the input space and displayable pixels ----------------------------------------------------------------------


def to_unit(images: np.ndarray, spec: Preprocess) -> np.ndarray:
    """Undo the normalisation (gamma and inversion) of images in an encoder's input space: (n, C, H, W) → the same
    in [0, 1] intensities as the files had them (not clipped: a decoder may overshoot)."""
    unit = denormalise(images, spec)
    return 1.0 - unit if spec.invert else unit


def from_unit(unit: np.ndarray, spec: Preprocess) -> np.ndarray:
    """``to_unit``'s inverse: [0, 1] intensities (n, C, H, W) → the encoder's input space."""
    unit = np.asarray(unit, np.float32)
    return normalise(1.0 - unit if spec.invert else unit, spec)


def to_pixels(images: np.ndarray, spec: Preprocess) -> np.ndarray:
    """Images in an encoder's input space (n, C, H, W) → displayable uint8 pixels: (n, H, W) grey or (n, H, W, 3)
    RGB, the preprocessing undone (``to_unit``) and clipped to 0..255."""
    unit = np.clip(to_unit(images, spec), 0.0, 1.0)
    pixels = np.rint(unit * 255.0).astype(np.uint8)
    return pixels[:, 0] if pixels.shape[1] == 1 else pixels.transpose(0, 2, 3, 1).copy()


def squared_errors(decoded: np.ndarray, images: np.ndarray) -> np.ndarray:
    """The mean squared difference of each pair of images (n, C, H, W) → (n,) float32, as
    ``Encoder.reconstruction_errors`` measures it."""
    diff = np.asarray(decoded, np.float64) - np.asarray(images, np.float64)
    return np.mean(np.square(diff), axis=tuple(range(1, diff.ndim))).astype(np.float32)


# --- what the decoder makes --------------------------------------------------------------------------------------


def reconstruct(encoder: Encoder, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Each image's reconstruction ``decode(embed(x))`` (n, C, H, W) and its error: the mean squared difference
    from the image in the model's input space (n,) float32."""
    require_decoder(encoder, "reconstruct")
    decoded = encoder.decode(encoder.embed(images, batch_size), batch_size)
    return decoded, squared_errors(decoded, images)


def interpolate(encoder: Encoder, a: np.ndarray, b: np.ndarray, steps: int = 8) -> np.ndarray:
    """Decode ``steps`` evenly spaced points of the segment between the embeddings of the images ``a`` and ``b``
    (each (C, H, W), in the input space), ends included: (steps, C, H, W), the first ``a``'s reconstruction and the
    last ``b``'s."""
    require_decoder(encoder, "interpolate")
    if steps < 2:
        raise UsageError(f"{option('steps')} must be at least 2 (the two ends), not {steps}")
    z = encoder.embed(np.stack([a, b]).astype(np.float32))
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    return encoder.decode(((1.0 - t) * z[0] + t * z[1]).astype(np.float32))


def sample(encoder: Encoder, n: int = 16, seed: int = 0) -> np.ndarray:
    """A VAE's decoding of ``n`` draws from its prior N(0, I) (seeded): (n, C, H, W) in the input space. Other
    families are refused: an autoencoder's embeddings follow no known distribution."""
    if encoder.family != "vae":
        require_decoder(encoder, "sample", needs="a vae model")
        article = "an" if encoder.family[0] in "aeiou" else "a"
        raise ModelError(
            f"{article} {encoder.family} model has no prior to sample from",
            remedy=f"use interpolate, or train {option('family', 'vae')}",
        )
    require_decoder(encoder, "sample", needs="a vae model")
    if n < 1:
        raise UsageError(f"{option('count')} must be at least 1, not {n}")
    z = np.random.default_rng(seed).standard_normal((n, encoder.dim)).astype(np.float32)
    return encoder.decode(z)


def add_noise(images: np.ndarray, spec: Preprocess, sigma: float, seed: int = 0) -> np.ndarray:
    """``images`` (input space) with Gaussian noise of standard deviation ``sigma`` added to their [0, 1]
    intensities, clipped to [0, 1] and rounded to what an 8-bit PNG holds (so the noisy image written is exactly
    the one the model saw), back in the input space."""
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise UsageError(f"{option('noise')} must be a standard deviation of 0 or more, not {sigma}")
    unit = np.clip(to_unit(images, spec), 0.0, 1.0)
    noisy = np.clip(unit + np.random.default_rng(seed).normal(0.0, sigma, unit.shape), 0.0, 1.0)
    return from_unit(np.rint(noisy * 255.0) / 255.0, spec)


@dataclass
class Denoised:
    """What ``denoise`` made: each output's path, and the noisy inputs' paths when noise was added."""

    outputs: list[Path]
    noisy: list[Path]
    errors: np.ndarray  # (n,) each output's mean squared difference from the (clean) input, in the input space


def denoise(encoder: Encoder, inputs: Inputs, folder: Path, noise: float | None = None, seed: int = 0) -> Denoised:
    """Write the model's reconstruction of each image as a PNG in ``folder`` (named after the input: ``a.jpg`` →
    ``a.png``; an image found under a folder keeps its path under it), at the model's input size. With ``noise``,
    Gaussian noise (``add_noise``) is added first and the noisy input is written too (``a.noisy.png``).

    ``folder`` may be new or hold other files; a file in it is replaced only when an earlier ``denoise`` wrote it
    (its marker lists them), and an input image never is."""
    require_decoder(encoder, "denoise")
    spec = encoder.preprocess
    stems = [str(Path(rel).with_suffix("")) for rel in inputs.rel]
    outputs = [folder / f"{stem}.png" for stem in stems]
    noisy_paths = [folder / f"{stem}.noisy.png" for stem in stems] if noise is not None else []
    check_outputs(folder, [*outputs, *noisy_paths], inputs)
    source = add_noise(inputs.arrays, spec, noise, seed) if noise is not None else inputs.arrays
    decoded = encoder.decode(encoder.embed(source))
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / OUTPUT_MARKER
    written = sorted({*_marked(folder), *(str(p.relative_to(folder)) for p in [*outputs, *noisy_paths])})
    marker.write_text(json.dumps({"command": "denoise", "files": written}, indent=1) + "\n")
    for path, pixels in zip(outputs, to_pixels(decoded, spec), strict=True):
        save_png(pixels, path)
    if noise is not None:
        for path, pixels in zip(noisy_paths, to_pixels(source, spec), strict=True):
            save_png(pixels, path)
    return Denoised(outputs, noisy_paths, squared_errors(decoded, inputs.arrays))


def _marked(folder: Path) -> set[str]:
    """The files an earlier ``denoise`` wrote into ``folder`` (its marker's list), or none."""
    try:
        data = json.loads((folder / OUTPUT_MARKER).read_text())
    except (OSError, ValueError, RecursionError):
        return set()
    files = data.get("files") if isinstance(data, dict) else None
    return {f for f in files if isinstance(f, str)} if isinstance(files, list) else set()


def check_outputs(folder: Path, outputs: Sequence[Path], inputs: Inputs) -> None:
    """Refuse outputs that would replace what is not theirs: ``folder`` a file, two inputs written to one name, an
    output that is an input image, or an existing file that no earlier ``denoise`` wrote."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"'{folder}' is a file, not a folder", remedy=f"choose a new {option('out')} folder")
    seen: dict[Path, str] = {}
    for path, name in zip(outputs, [*inputs.names, *inputs.names], strict=False):
        if path in seen:
            raise UsageError(
                f"'{seen[path]}' and '{name}' would both be written as '{path}'",
                remedy="give them separately, or pass the folder that holds them",
            )
        seen[path] = name
    given = {os.path.realpath(p) for p in inputs.paths}
    marked = _marked(folder)
    for path in outputs:
        if os.path.realpath(path) in given:
            raise UsageError(
                f"'{path}' is one of the input images and would be replaced",
                remedy=f"choose another {option('out')} folder",
            )
        if os.path.lexists(path) and str(path.relative_to(folder)) not in marked:
            raise UsageError(
                f"'{path}' exists and was not written by denoise",
                remedy=f"simsearch will not replace it; choose a new {option('out')} folder",
            )


def check_output_file(path: Path, inputs: Sequence[Path] = ()) -> None:
    """Refuse a picture's ``--out`` that is a folder, one of the input images, or an existing file that is not a
    PNG (a PNG is replaced: an earlier picture)."""
    if path.is_dir():
        raise UsageError(f"'{path}' is a folder", remedy=f"give {option('out')} a file name such as grid.png")
    if any(os.path.realpath(path) == os.path.realpath(p) for p in inputs):
        raise UsageError(f"'{path}' is one of the input images", remedy=f"choose another {option('out')} file")
    if path.exists():
        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError:
            head = b""
        if head != b"\x89PNG\r\n\x1a\n":
            raise UsageError(
                f"'{path}' exists and is not a PNG",
                remedy=f"simsearch will not replace it; choose another {option('out')}",
            )


# --- grids -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One tile of a grid: uint8 pixels (H, W) or (H, W, 3) at the model's input size, the caption under it, and
    a frame colour (None: no frame)."""

    pixels: np.ndarray
    caption: str = ""
    frame: tuple[int, int, int] | None = None


@dataclass
class Grid:
    """A drawn grid: the picture, the scale its tiles were enlarged by, and each tile's box (left, top, right,
    bottom) by row and column (None where a row is shorter)."""

    image: Image.Image
    scale: int
    boxes: list[list[tuple[int, int, int, int] | None]]

    def save(self, path: Path) -> None:
        """Write the grid as a PNG."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.image.save(path, format="PNG")


def tile_scale(size: tuple[int, int]) -> int:
    """The whole factor tiles of ``size`` (H, W) are enlarged by: the smallest that makes the short side at least
    ``MIN_TILE_SIDE`` pixels (1 for inputs that large already)."""
    return max(1, math.ceil(MIN_TILE_SIDE / max(1, min(size))))


def draw_grid(rows: Sequence[Sequence[Cell | None]], size: tuple[int, int], scale: int | None = None) -> Grid:
    """Draw ``rows`` of tiles of ``size`` (H, W), each enlarged ``scale`` times (nearest neighbour: the pixels the
    model sees; default ``tile_scale``), ``GAP`` pixels apart and around, with a ``CAPTION_HEIGHT`` band under
    each row that has a caption. The picture is
    ``GAP + columns·(W·scale + GAP)`` wide and ``GAP + Σ rows (H·scale + caption band + GAP)`` high."""
    scale = scale or tile_scale(size)
    height, width = size[0] * scale, size[1] * scale
    columns = max((len(row) for row in rows), default=0)
    bands = [CAPTION_HEIGHT if any(cell is not None and cell.caption for cell in row) else 0 for row in rows]
    image = Image.new(
        "RGB", (GAP + columns * (width + GAP), GAP + sum(height + band + GAP for band in bands)), BACKGROUND
    )
    draw = ImageDraw.Draw(image)
    font = _font()
    boxes: list[list[tuple[int, int, int, int] | None]] = []
    top = GAP
    for row, band in zip(rows, bands, strict=True):
        boxes.append([])
        for column, cell in enumerate(row):
            if cell is None:
                boxes[-1].append(None)
                continue
            left = GAP + column * (width + GAP)
            tile = Image.fromarray(cell.pixels).convert("RGB").resize((width, height), Image.Resampling.NEAREST)
            image.paste(tile, (left, top))
            boxes[-1].append((left, top, left + width, top + height))
            if cell.frame is not None:
                draw.rectangle((left - 2, top - 2, left + width + 1, top + height + 1), outline=cell.frame, width=2)
            if cell.caption:
                text = _fit(cell.caption, font, width + GAP - 1)
                draw.text((left, top + height + 1), text, fill=cell.frame or TEXT, font=font)
        top += height + band + GAP
    return Grid(image, scale, boxes)


def _font() -> Any:
    try:
        return ImageFont.load_default(size=10)
    except (OSError, TypeError, ImportError):  # Pillow without FreeType: its small bitmap font
        return ImageFont.load_default()


def _fit(text: str, font: Any, width: int) -> str:
    """``text``, cut with an ellipsis from the left (file names differ at their end) until it fits ``width``."""
    if font.getlength(text) <= width:
        return text
    while len(text) > 1 and font.getlength("…" + text) > width:
        text = text[1:]
    return "…" + text


def short_name(name: str) -> str:
    """A file's name for a caption: its path, which ``draw_grid`` cuts from the left to fit the tile
    (``…hbars/0.png``)."""
    return name


def reconstruction_grid(
    encoder: Encoder,
    names: Sequence[str],
    images: np.ndarray,
    decoded: np.ndarray,
    errors: np.ndarray,
    columns: int = 8,
    frames: Sequence[tuple[int, int, int] | None] | None = None,
    captions: Sequence[str] | None = None,
) -> Grid:
    """Inputs in a row and their reconstructions in the row below, each input's file name under it and each
    reconstruction's error under it (or ``captions``); at most ``columns`` images per pair of rows, each pair framed
    in ``frames`` colour when given."""
    spec = encoder.preprocess
    inputs, outputs = to_pixels(images, spec), to_pixels(decoded, spec)
    rows: list[list[Cell | None]] = []
    for start in range(0, len(images), max(1, columns)):
        chunk = range(start, min(start + columns, len(images)))
        frame = [frames[i] if frames is not None else None for i in chunk]
        rows.append([Cell(inputs[i], short_name(names[i]), frame[n]) for n, i in enumerate(chunk)])
        rows.append(
            [
                Cell(outputs[i], captions[i] if captions is not None else f"mse {errors[i]:.4g}", frame[n])
                for n, i in enumerate(chunk)
            ]
        )
    return draw_grid(rows, spec.size)


def interpolation_strip(
    encoder: Encoder, names: tuple[str, str], a: np.ndarray, b: np.ndarray, decoded: np.ndarray
) -> Grid:
    """One row: the input A, the decoded points from A's reconstruction to B's (captioned with t), the input B."""
    spec = encoder.preprocess
    ends = to_pixels(np.stack([a, b]), spec)
    steps = to_pixels(decoded, spec)
    count = len(decoded)
    row: list[Cell | None] = [Cell(ends[0], short_name(names[0]))]
    row += [Cell(steps[i], f"t={i / (count - 1):.2f}") for i in range(count)]
    row.append(Cell(ends[1], short_name(names[1])))
    return draw_grid([row], spec.size)


def sample_grid(encoder: Encoder, decoded: np.ndarray) -> Grid:
    """The samples in a near-square grid, without captions."""
    pixels = to_pixels(decoded, encoder.preprocess)
    columns = max(1, math.ceil(math.sqrt(len(pixels))))
    rows: list[list[Cell | None]] = [
        [Cell(p) for p in pixels[start : start + columns]] for start in range(0, len(pixels), columns)
    ]
    return draw_grid(rows, encoder.preprocess.size)
