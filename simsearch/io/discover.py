"""Find image files under a folder, recognised by content (magic bytes), not by extension.

``scan.dat`` holding a PNG is an image, ``notes.png`` holding text is not; a file that announces itself as an image
but is not one comes back as ``Skipped`` with the reason. Labels come from folders.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from PIL import ImageFile

from simsearch.errors import ImageError

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


# --- one wording for each kind of bad file, whichever step finds it (the folder scan, or reading a named file) ---

#: A path that names nothing (a query argument, a file of a pair, a file gone since the scan).
MISSING = "no such image file or folder"
#: A file whose first bytes are no image format simsearch reads (text or HTML named ``.png``).
NOT_AN_IMAGE = "not an image: its content is no known image format"
#: A FIFO, socket or device: reading it could block forever.
NOT_REGULAR = "not a regular file (a pipe, socket or device)"
#: A folder where an image file was expected.
A_FOLDER = "is a folder, not an image file"
#: A file of no bytes.
EMPTY = "empty file"


def unreadable(exc: OSError) -> str:
    """Why a file could not be read, in the OS's words: ``could not be read: Permission denied``."""
    return f"could not be read: {exc.strerror or exc}"


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
        raise ImageError(f"folder '{root}' does not exist", remedy="check the path")
    if not root.is_dir():
        raise ImageError(f"'{root}' is not a folder", remedy="pass the folder that holds your images")
    found: list[ImageFileEntry] = []
    skipped: list[Skipped] = []

    def on_error(err: OSError) -> None:
        where = Path(err.filename) if err.filename else root
        rel = display_name(os.path.relpath(where, root)).replace(os.sep, "/")
        skipped.append(Skipped(rel, f"folder {unreadable(err)}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = os.path.relpath(dirpath, root)  # once a folder: relpath is slow at 100,000 files
        prefix = "" if folder == os.curdir else display_name(folder).replace(os.sep, "/") + "/"
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath, name)
            rel = prefix + display_name(name)
            announced = os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
            try:
                st = os.stat(path)
                if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read below forever
                    if announced:
                        skipped.append(Skipped(rel, NOT_REGULAR))
                    continue
                with open(path, "rb") as f:
                    head = f.read(32)
            except OSError as exc:
                if announced or not isinstance(exc, FileNotFoundError):
                    skipped.append(Skipped(rel, unreadable(exc)))
                continue
            if sniff_format(head) is not None:
                found.append(ImageFileEntry(path, rel, label_of(rel), st.st_size, st.st_mtime))
            elif announced:
                reason = EMPTY if st.st_size == 0 else NOT_AN_IMAGE
                skipped.append(Skipped(rel, reason))
    # os.walk lists a folder's files before its sub-folders' files; sort the whole list by path.
    found.sort(key=lambda e: e.rel)
    skipped.sort(key=lambda s: s.rel)
    return found, skipped
