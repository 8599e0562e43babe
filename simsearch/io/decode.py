"""Read and decode image files safely: size limits, decompression bombs refused from the header, every Pillow mode
normalised to grey or RGB. The only module that imports Pillow's decoders; every failure is an ``ImageError``.
"""

from __future__ import annotations

import io
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from simsearch.errors import ImageError, ImageTooLarge
from simsearch.io.discover import A_FOLDER, EMPTY, MISSING, NOT_AN_IMAGE, NOT_REGULAR, sniff_format, unreadable

# Refuse images whose header declares more pixels than this before decoding a single one (decompression bombs).
MAX_PIXELS = 64_000_000


# A file this large is not decoded at all.
MAX_FILE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class Decoded:
    """A decoded image and its size as stored (width, height), EXIF orientation applied: the size of the file's
    picture even when a JPEG was decoded reduced (``draft``)."""

    image: Image.Image
    width: int
    height: int


def decode_image(data: bytes, name: str = "image", draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``data`` into an RGB, RGBA-composited, or greyscale Pillow image, fully loaded (see ``decode``)."""
    return decode(data, name, draft).image


def decode(data: bytes, name: str = "image", draft: tuple[int, int] | None = None) -> Decoded:
    """Decode ``data`` into an RGB, RGBA-composited, or greyscale Pillow image, fully loaded, with its stored size.

    Applies the EXIF orientation, takes the first frame of animations, refuses decompression bombs before
    allocating them, and raises ``ImageError`` with the reason for anything else that goes wrong.
    ``draft`` (H, W): a JPEG is decoded straight at the smallest 1/2, 1/4 or 1/8 scale that still covers it
    (the decoder's own DCT scaling: several times faster for photos, and a smoother reduction).
    """
    if not data:
        raise ImageError(EMPTY, file=name)
    try:
        # Image.open reads only the header: the pixel count is checked before anything is decoded.
        img: Image.Image = Image.open(io.BytesIO(data))
        w, h = img.size
        if w <= 0 or h <= 0:
            raise ImageError(f"image has no pixels ({w}×{h})", file=name)
        if w * h > MAX_PIXELS:
            raise ImageTooLarge(
                f"{w}×{h} pixels is over the limit of {MAX_PIXELS:,} (possible decompression bomb)", file=name
            )
        img.seek(0)
        if draft is not None and img.format == "JPEG":
            side = max(draft)  # EXIF may turn the image: cover the longer side both ways
            img.draft(img.mode, (side, side))
        img.load()
        # Read once the pixels are loaded: a PNG keeps its EXIF after them, and would be decoded twice.
        orientation = _orientation(img)
        turned = orientation in (5, 6, 7, 8)
        if orientation != 1:  # in place: no copy of the pixels
            ImageOps.exif_transpose(img, in_place=True)
        return Decoded(_normalise_mode(img), *((h, w) if turned else (w, h)))
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"refused as a possible decompression bomb ({exc})", file=name) from None
    except UnidentifiedImageError:
        # The folder scan refuses content of no known format with the same words; a file that starts like an
        # image but is broken after its first bytes is damaged, like a truncated one.
        fmt = sniff_format(data[:32])
        if fmt is None:
            raise ImageError(NOT_AN_IMAGE, file=name) from None
        raise ImageError(f"could not be decoded (damaged {fmt} data)", file=name) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as exc:
        raise ImageError(f"could not be decoded ({exc or type(exc).__name__})", file=name) from None


def _normalise_mode(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to ``L`` (grey) or ``RGB``; transparency is composited onto white.

    Integer modes (``I;16*``, ``I``) come from 16-bit files and are scaled by 65535 whatever their values,
    so that the same pixel value always gives the same grey; float images in [0, 1] are scaled by 255.
    """
    mode = img.mode
    if "transparency" in img.info and mode in ("P", "L", "RGB"):
        img = img.convert("RGBA")  # palette or colour-key transparency
    elif mode in ("L", "RGB"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0
        if mode == "F":
            top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        return Image.fromarray(np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    if img.mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")  # P, CMYK, YCbCr, LAB, HSV


def check_size(data: bytes, name: str) -> bytes:
    """``data``, unless it is over the size limit for one image."""
    if len(data) > MAX_FILE_BYTES:
        raise ImageTooLarge(f"{len(data):,} bytes is over the {MAX_FILE_BYTES:,}-byte limit for one image", file=name)
    return data


def read_file(path: Path, name: str | None = None) -> bytes:
    """Read a whole file, refusing what is not a regular readable file of sensible size."""
    name = name or str(path)
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(A_FOLDER, file=name)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(NOT_REGULAR, file=name)
        if st.st_size > MAX_FILE_BYTES:
            raise ImageTooLarge(
                f"{st.st_size:,} bytes is over the {MAX_FILE_BYTES:,}-byte limit for one image", file=name
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(MISSING, file=name, remedy="check the path") from None
    except IsADirectoryError:
        raise ImageError(A_FOLDER, file=name) from None
    except OSError as exc:
        raise ImageError(unreadable(exc), file=name) from None


def is_grey(img: Image.Image) -> bool:
    """True when the image carries no colour (mode L, or RGB with equal channels)."""
    if img.mode == "L":
        return True
    arr = np.asarray(img)
    return bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1–8; 1 when there is none or it cannot be read)."""
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block: the picture is shown as stored
        return 1
    return value if isinstance(value, int) else 1


@dataclass(frozen=True)
class ImageSurvey:
    """What a sample of a folder's images looks like: used to choose an encoder's input spec.

    ``background`` is the median brightness (0..1) of the images' border pixels: above 0.5, the images are
    dark marks on a light background (ink on paper) and are best inverted.
    """

    count: int
    median_height: int
    median_width: int
    grey: bool
    background: float = 0.0


def survey_images(paths: Iterable[Path]) -> ImageSurvey:
    """Decode a sample of images and report their median size, whether all are grey, and their background."""
    heights: list[int] = []
    widths: list[int] = []
    borders: list[float] = []
    grey = True
    for path in paths:
        try:
            img = decode_image(read_file(path), str(path))
        except ImageError:
            continue
        widths.append(img.size[0])
        heights.append(img.size[1])
        grey = grey and is_grey(img)
        lum = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
        borders.append(float(np.median(np.concatenate([lum[0], lum[-1], lum[:, 0], lum[:, -1]]))))
    if not heights:
        raise ImageError("none of the sampled files could be decoded", remedy="check that the folder holds images")
    return ImageSurvey(len(heights), int(np.median(heights)), int(np.median(widths)), grey, float(np.median(borders)))


def save_png(array: np.ndarray, path: Path) -> None:
    """Write a (H, W) or (H, W, 3) uint8 array as a PNG (used by the demo to export its sample)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")
