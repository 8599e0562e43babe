"""Find image files, read and validate them, and turn them into tensors. The only module that imports Pillow.

Files are recognised by their content (magic bytes), not by their extension: ``scan.dat`` holding a PNG is an
image, ``notes.png`` holding text is not. Every failure comes back as a reason (``Skipped``) or an
``ImageError``; nothing here crashes on a bad file.
"""

from __future__ import annotations

import collections
import hashlib
import io
import math
import multiprocessing
import os
import stat
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from simsearch import processes
from simsearch.errors import ImageError

# Refuse images whose header declares more pixels than this before decoding a single one (decompression bombs).
MAX_PIXELS = 64_000_000
# A file this large is not decoded at all.
MAX_FILE_BYTES = 512 * 1024 * 1024
# The longest side of an encoder input (the largest --size).
MAX_SIDE = 1024

# Extensions that announce an image: a file with one of these that is not an image is *skipped with a reason*;
# any other non-image file (README.txt, .json) is simply not an image and is ignored.
IMAGE_SUFFIXES = frozenset(
    [
        ".png",
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".pgm",
        ".ppm",
        ".pbm",
        ".pnm",
        ".bmp",
        ".dib",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
    ]
)

ImageFile.LOAD_TRUNCATED_IMAGES = False


BMP_DIB_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


def sniff_format(head: bytes) -> str | None:
    """Name the image format that ``head`` (the first 32 bytes of a file) starts with, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"123456" and head[2:3] in b" \t\r\n#":
        rest = head[2:].lstrip(b" \t\r\n")
        if not rest or rest[:1] == b"#" or rest[:1].isdigit():
            return "PNM"
        return None
    # BMP: "BM", then the size of the DIB header that follows the 14-byte file header.
    if head.startswith(b"BM") and len(head) >= 18 and int.from_bytes(head[14:18], "little") in BMP_DIB_SIZES:
        return "BMP"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    return None


@dataclass(frozen=True)
class ImageFileEntry:
    """An image file found under ``root``. ``rel`` is its POSIX path relative to the root, as stored."""

    path: Path
    rel: str
    label: str | None
    bytes: int
    mtime: float


@dataclass(frozen=True)
class Skipped:
    """A file that could not be used, and why."""

    rel: str
    reason: str


def display_name(rel_path: str) -> str:
    """A printable, UTF-8-safe form of a path (undecodable bytes in file names become escapes)."""
    return os.fsencode(rel_path).decode("utf-8", "backslashreplace")


def label_of(rel: str) -> str | None:
    """The label of an image: its parent folder relative to the root (``s12/3.pgm`` → ``s12``), or None."""
    parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
    return parent or None


def find_images(root: Path) -> tuple[list[ImageFileEntry], list[Skipped]]:
    """Walk ``root`` recursively (not following symlinked folders) and return its image files, sorted by path,
    and the files that announce themselves as images but are not (empty, text named ``.png``, unreadable).

    Hidden files and folders (``.git``, ``.DS_Store``) are ignored.
    """
    root = Path(root)
    if not root.exists():
        raise ImageError(f"folder '{root}' does not exist — check the path")
    if not root.is_dir():
        raise ImageError(f"'{root}' is not a folder — pass the folder that holds your images")
    found: list[ImageFileEntry] = []
    skipped: list[Skipped] = []

    def on_error(err: OSError) -> None:
        where = Path(err.filename) if err.filename else root
        rel = display_name(os.path.relpath(where, root)).replace(os.sep, "/")
        skipped.append(Skipped(rel, f"folder could not be read: {err.strerror}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath, name)
            rel = display_name(os.path.relpath(path, root)).replace(os.sep, "/")
            announced = path.suffix.lower() in IMAGE_SUFFIXES
            try:
                st = path.stat()
                if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read below forever
                    if announced:
                        skipped.append(Skipped(rel, "not a regular file (a pipe, socket or device)"))
                    continue
                with open(path, "rb") as f:
                    head = f.read(32)
            except OSError as exc:
                if announced or not isinstance(exc, FileNotFoundError):
                    skipped.append(Skipped(rel, f"could not be read: {exc.strerror or exc}"))
                continue
            if sniff_format(head) is not None:
                found.append(ImageFileEntry(path, rel, label_of(rel), st.st_size, st.st_mtime))
            elif announced:
                reason = "empty file" if st.st_size == 0 else "not an image: its content is no known image format"
                skipped.append(Skipped(rel, reason))
    # os.walk lists a folder's files before its sub-folders' files; sort the whole list by path.
    found.sort(key=lambda e: e.rel)
    skipped.sort(key=lambda s: s.rel)
    return found, skipped


def decode_image(data: bytes, name: str = "image", draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``data`` into an RGB, RGBA-composited, or greyscale Pillow image, fully loaded.

    Applies the EXIF orientation, takes the first frame of animations, refuses decompression bombs before
    allocating them, and raises ``ImageError`` with the reason for anything else that goes wrong.
    ``draft`` (H, W): a JPEG is decoded straight at the smallest 1/2, 1/4 or 1/8 scale that still covers it
    (the decoder's own DCT scaling: several times faster for photos, and a smoother reduction).
    """
    if not data:
        raise ImageError(f"{name}: empty file")
    try:
        # Image.open reads only the header: the pixel count is checked before anything is decoded.
        img: Image.Image = Image.open(io.BytesIO(data))
        w, h = img.size
        if w <= 0 or h <= 0:
            raise ImageError(f"{name}: image has no pixels ({w}×{h})")
        if w * h > MAX_PIXELS:
            raise ImageError(
                f"{name}: {w}×{h} pixels is over the limit of {MAX_PIXELS:,} (possible decompression bomb)"
            )
        img.seek(0)
        if draft is not None and img.format == "JPEG":
            side = max(draft)  # EXIF may turn the image: cover the longer side both ways
            img.draft(img.mode, (side, side))
        img.load()
        img = ImageOps.exif_transpose(img) or img
        return _normalise_mode(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image Pillow can decode") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as exc:
        raise ImageError(f"{name}: could not be decoded ({exc or type(exc).__name__})") from None


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


#: How an image is fitted to the encoder's input size (see ``Preprocess``).
RESIZE_MODES = ("letterbox", "trim")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes an encoder input: ``(channels, H, W)`` float32 ``(x/255 [inverted] - mean) / std``.

    ``resize`` is ``letterbox``: scale to fit inside H×W keeping the aspect ratio, pad the rest with the
    median colour of the image's border; or ``trim``: first crop away the margin of that border colour (see
    ``trim``), then letterbox — the drawing, not the sheet it is on, fills the input.
    """

    size: tuple[int, int]
    channels: int = 1
    invert: bool = False
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    resize: str = "letterbox"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {self.channels}")
        if len(self.size) != 2 or not all(1 <= side <= MAX_SIDE for side in self.size):
            raise ValueError(f"size must be (H, W) with sides 1..{MAX_SIDE}, not {self.size}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {self.resize!r}; expected one of {', '.join(RESIZE_MODES)}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels) or not all(math.isfinite(v) for v in values):
                raise ValueError(f"{name} must be 1 or {self.channels} finite numbers, not {values}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, not {self.std}")

    def to_json(self) -> dict[str, object]:
        return {
            "size": list(self.size),
            "channels": self.channels,
            "resize": self.resize,
            "invert": self.invert,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_json(cls, data: object) -> Preprocess:
        """The spec stored in ``encoder.json``; ``ValueError`` says which field is malformed."""
        if not isinstance(data, dict):
            raise ValueError("preprocess must be an object")
        size, channels = data.get("size"), data.get("channels")
        mean, std = data.get("mean", [0.0]), data.get("std", [1.0])
        invert, resize = data.get("invert", False), data.get("resize", "letterbox")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(side) for side in size)):
            raise ValueError(f"preprocess.size must be [H, W], not {str(size)[:40]}")
        if not _is_int(channels):
            raise ValueError(f"preprocess.channels must be 1 or 3, not {str(channels)[:40]}")
        for name, values in (("mean", mean), ("std", std)):
            if not (isinstance(values, list) and all(_is_number(v) for v in values)):
                raise ValueError(f"preprocess.{name} must be a list of numbers, not {str(values)[:40]}")
        if not isinstance(invert, bool) or not isinstance(resize, str):
            raise ValueError("preprocess.invert must be true or false, and preprocess.resize a name")
        return cls(
            size=(size[0], size[1]),
            channels=channels,  # type: ignore[arg-type]
            invert=invert,
            mean=tuple(float(m) for m in mean),
            std=tuple(float(s) for s in std),
            resize=resize,
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def border_colour(arr: np.ndarray) -> np.ndarray:
    """The median colour of an image array's outermost rows and columns: its background, usually."""
    border = np.concatenate(
        [
            arr[0].reshape(-1, *arr.shape[2:]),
            arr[-1].reshape(-1, *arr.shape[2:]),
            arr[:, 0].reshape(-1, *arr.shape[2:]),
            arr[:, -1].reshape(-1, *arr.shape[2:]),
        ]
    )
    return np.median(border, axis=0).astype(np.uint8)


def trim(img: Image.Image, tolerance: int = 64, pad: float = 0.03) -> Image.Image:
    """Crop ``img`` to the box around every pixel that differs from the border colour by more than
    ``tolerance`` (of 255) in some channel, widened by ``pad`` × the image's long side (at least one pixel) on
    each side. An image with nothing on its background is returned as it is."""
    arr = np.asarray(img)
    distance = np.abs(arr.astype(np.int16) - border_colour(arr).astype(np.int16))
    differs: np.ndarray = np.any(distance.reshape(arr.shape[0], arr.shape[1], -1) > tolerance, axis=2)
    rows, cols = np.flatnonzero(differs.any(axis=1)), np.flatnonzero(differs.any(axis=0))
    if len(rows) == 0:
        return img
    margin = max(1, round(pad * max(img.size)))
    top, bottom = max(0, rows[0] - margin), min(arr.shape[0], rows[-1] + 1 + margin)
    left, right = max(0, cols[0] - margin), min(arr.shape[1], cols[-1] + 1 + margin)
    return img.crop((int(left), int(top), int(right), int(bottom)))


def letterbox(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Fit ``img`` inside ``size`` = (H, W) keeping its aspect ratio; pad with its border's median colour."""
    height, width = size
    w, h = img.size
    scale = min(width / w, height / h)
    new_w, new_h = max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale)))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    if (new_w, new_h) == (width, height):
        return img
    fill = border_colour(np.asarray(img))
    canvas = Image.new(img.mode, (width, height), tuple(int(v) for v in np.atleast_1d(fill)))
    canvas.paste(img, ((width - new_w) // 2, (height - new_h) // 2))
    return canvas


def to_array(img: Image.Image, spec: Preprocess) -> np.ndarray:
    """Preprocess a decoded image: ``(channels, H, W)`` float32, normalised as ``spec`` says."""
    img = img.convert("L" if spec.channels == 1 else "RGB")
    img = letterbox(trim(img) if spec.resize == "trim" else img, spec.size)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = arr[None, :, :] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if spec.invert:
        arr = 1.0 - arr
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((arr - mean) / std, dtype=np.float32)


@dataclass
class LoadedImage:
    """One image read from disk: its preprocessed pixels and the facts stored in the metadata."""

    array: np.ndarray  # (channels, H, W) float32
    sha256: str
    bytes: int
    width: int
    height: int
    grey: bool = field(default=True)


def read_file(path: Path, name: str | None = None) -> bytes:
    """Read a whole file, refusing what is not a regular readable file of sensible size."""
    name = name or str(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ImageError(f"{name}: not a file — pass an image file")
        if size > MAX_FILE_BYTES:
            raise ImageError(f"{name}: {size:,} bytes is over the {MAX_FILE_BYTES:,}-byte limit for one image")
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file — check the path") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a folder, not an image file") from None
    except PermissionError:
        raise ImageError(f"{name}: permission denied — make it readable") from None
    except OSError as exc:
        raise ImageError(f"{name}: could not be read ({exc.strerror or exc})") from None


def is_grey(img: Image.Image) -> bool:
    """True when the image carries no colour (mode L, or RGB with equal channels)."""
    if img.mode == "L":
        return True
    arr = np.asarray(img)
    return bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())


def load_image(
    path: Path, spec: Preprocess, name: str | None = None, known_sha256: str | None = None
) -> LoadedImage | None:
    """Read, hash, decode and preprocess one image file; ``ImageError`` says why it failed.

    When the file's sha256 equals ``known_sha256`` it is not decoded at all and None is returned.
    """
    data = read_file(path, name)
    digest = hashlib.sha256(data).hexdigest()
    if digest == known_sha256:
        return None
    width, height = image_size(data)
    # A JPEG may be decoded reduced when the whole picture is letterboxed; a trimmed one keeps every pixel,
    # as the crop may be a small part of it.
    img = decode_image(data, name or str(path), draft=spec.size if spec.resize == "letterbox" else None)
    return LoadedImage(
        array=to_array(img, spec),
        sha256=digest,
        bytes=len(data),
        width=width,
        height=height,
        grey=is_grey(img),
    )


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) as stored, EXIF orientation applied: read from the header only (0×0 if unreadable)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except Exception:  # decode_image reports what is wrong with the file
        return 0, 0
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def load_images(
    paths: Sequence[Path],
    spec: Preprocess,
    workers: int = 0,
    names: Sequence[str] | None = None,
    known_sha256: Sequence[str | None] | None = None,
) -> Iterator[LoadedImage | ImageError | None]:
    """Load many images in input order, decoding on ``workers`` threads (0: one per core, at most 8).

    Yields for each path its ``LoadedImage``, the ``ImageError`` that says why it failed, or None when its
    hash equals the one given in ``known_sha256`` (unchanged: not decoded). Pillow releases the GIL while
    decoding, so threads give real parallelism here.
    """
    name_list = list(names) if names is not None else [str(p) for p in paths]
    known = list(known_sha256) if known_sha256 is not None else [None] * len(paths)

    def one(i: int) -> LoadedImage | ImageError | None:
        return _load_or_error(paths[i], spec, name_list[i], known[i])

    n_workers = _worker_count(workers)
    if n_workers <= 1 or len(paths) < 4:
        yield from (one(i) for i in range(len(paths)))
        return
    with ThreadPoolExecutor(n_workers) as pool:
        yield from pool.map(one, range(len(paths)))


#: Below this many images a run decodes on threads: starting worker processes would cost more than it saves.
PROCESS_MIN_IMAGES = 2_000


@dataclass(frozen=True)
class LoadJob:
    """One batch of files to load: their paths, the names errors use, and the sha256 each had (or None)."""

    paths: Sequence[Path]
    names: Sequence[str]
    known_sha256: Sequence[str | None]


def _load_or_error(path: Path, spec: Preprocess, name: str, known: str | None) -> LoadedImage | ImageError | None:
    """``load_image``, with the ``ImageError`` that says why it failed returned rather than raised."""
    try:
        return load_image(path, spec, name, known)
    except ImageError as exc:
        return exc


def _worker_count(workers: int) -> int:
    """``--workers``: 0 means one per core, at most 8."""
    return workers or min(8, os.cpu_count() or 1)


def _load_chunk(spec: Preprocess, paths: Sequence[Path], names: Sequence[str], known: Sequence[str | None]) -> list:
    return [_load_or_error(path, spec, name, sha) for path, name, sha in zip(paths, names, known, strict=True)]


def load_batches(
    jobs: Iterable[LoadJob], spec: Preprocess, workers: int = 0, total: int = 0, ahead: int = 2
) -> Generator[list[LoadedImage | ImageError | None], None, None]:
    """``load_images`` for a stream of batches, decoded ``ahead`` batches in front of the caller.

    With ``total`` ≥ ``PROCESS_MIN_IMAGES`` images and more than one worker, each batch is split across
    worker processes (hashing, decoding and resizing hold the GIL in part, and the caller's embedding runs
    meanwhile), and at most ``ahead + 1`` batches are held in memory at once. Smaller runs decode each batch on
    threads when it is asked for. Results come back in input order, one list per job.
    """
    n_workers = _worker_count(workers)
    if n_workers <= 1 or total < PROCESS_MIN_IMAGES:
        for job in jobs:
            yield list(load_images(job.paths, spec, workers, job.names, job.known_sha256))
        return
    # Forked workers, as torch's DataLoader does on Linux: they only decode (Pillow and numpy, never torch), and
    # unlike spawned ones they need no `if __name__ == "__main__"` guard in the caller's script.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    # Workers close the writer lock they inherit and end with this process (processes.child_init): a killed
    # `index` leaves no orphan holding the collection.
    with ProcessPoolExecutor(
        n_workers, mp_context=context, initializer=processes.child_init, initargs=(os.getpid(),)
    ) as pool:
        queue: collections.deque[list[Future]] = collections.deque()
        iterator = iter(jobs)

        def submit() -> bool:
            job = next(iterator, None)
            if job is None:
                return False
            step = -(-len(job.paths) // n_workers)
            queue.append(
                [
                    pool.submit(
                        _load_chunk,
                        spec,
                        job.paths[i : i + step],
                        job.names[i : i + step],
                        job.known_sha256[i : i + step],
                    )
                    for i in range(0, len(job.paths), step)
                ]
            )
            return True

        try:
            for _ in range(ahead + 1):
                if not submit():
                    break
            while queue:
                futures = queue.popleft()
                try:
                    batch = [result for future in futures for result in future.result()]
                except BrokenProcessPool:
                    raise ImageError(
                        "a decoding worker process died (killed, or out of memory?) — run again, with fewer --workers"
                    ) from None
                submit()
                yield batch
        finally:
            for futures in queue:
                for future in futures:
                    future.cancel()


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
        raise ImageError("none of the sampled files could be decoded — check that the folder holds images")
    return ImageSurvey(len(heights), int(np.median(heights)), int(np.median(widths)), grey, float(np.median(borders)))


def save_png(array: np.ndarray, path: Path) -> None:
    """Write a (H, W) or (H, W, 3) uint8 array as a PNG (used by the demo to export its sample)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")
