"""The bad-input corpus: every kind of file that has broken an image indexer somewhere, generated on the spot.

``write_corpus(root)`` writes it under ``root`` and returns what ``index`` must do with each entry: index it
(odd but valid images), skip it with a reason matching a pattern (broken, hostile or unreadable files), or
pass over it without a word (not an image and not pretending to be one, hidden files, folders).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import encode, handmade_png

NON_UTF8_NAME = b"caf\xe9.png"  # Latin-1 'café.png': not valid UTF-8
NON_UTF8_REL = "odd/caf\\xe9.png"  # how simsearch stores and prints it


@dataclass
class Corpus:
    """What ``index`` must do with each entry of the corpus (paths relative to its root, as stored)."""

    indexed: dict[str, tuple[int, int]] = field(default_factory=dict)  # rel → stored (width, height)
    skipped: dict[str, str] = field(default_factory=dict)  # rel → regex the reason must match
    ignored: list[str] = field(default_factory=list)  # neither indexed nor listed
    unreadable: list[Path] = field(default_factory=list)  # made unreadable (see tests/robustness/test_robustness.py)

    @property
    def bad_inputs(self) -> int:
        """Entries that try to trip the reader: all but the plain valid images."""
        return len(self.skipped) + len(self.ignored) + len(self.indexed)


def _put(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def picture(width: int, height: int, seed: int) -> np.ndarray:
    """A seeded grey (height, width) uint8 picture with enough structure to tell images apart."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    base = (xx * 7 + yy * 3 + seed * 40) % 256
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def write_corpus(root: Path) -> Corpus:
    """Write the corpus under ``root`` (which may already hold good images) and say what must become of it."""
    corpus = Corpus()
    png = encode(Image.fromarray(picture(24, 16, 1)), "PNG")
    jpeg = encode(Image.fromarray(picture(24, 16, 2)).convert("RGB"), "JPEG", quality=90)

    # --- odd but valid: indexed, with the size they are displayed at
    deep = (picture(12, 10, 3).astype(np.uint16) * 257).astype(np.uint16)
    _put(root, "odd/16bit.png", encode(Image.fromarray(deep), "PNG"))
    corpus.indexed["odd/16bit.png"] = (12, 10)

    cmyk = Image.fromarray(np.stack([picture(10, 8, s) for s in (4, 5, 6, 7)], axis=-1), "CMYK")
    _put(root, "odd/cmyk.jpg", encode(cmyk, "JPEG", quality=90))
    corpus.indexed["odd/cmyk.jpg"] = (10, 8)

    palette = Image.fromarray(picture(9, 9, 8) // 64).convert("P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 252 * 3)
    _put(root, "odd/palette-alpha.png", encode(palette, "PNG", transparency=0))
    corpus.indexed["odd/palette-alpha.png"] = (9, 9)

    frames = [Image.new("RGB", (7, 5), colour) for colour in [(250, 10, 10), (10, 10, 250), (10, 250, 10)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)
    _put(root, "odd/animated.gif", buf.getvalue())
    corpus.indexed["odd/animated.gif"] = (7, 5)

    _put(root, "odd/one-pixel.png", encode(Image.new("L", (1, 1), 200), "PNG"))
    corpus.indexed["odd/one-pixel.png"] = (1, 1)

    exif = Image.Exif()
    exif[0x0112] = 6  # stored 30 wide × 12 high, displayed rotated: 12 wide × 30 high
    _put(root, "odd/exif-rotated.jpg", encode(Image.fromarray(picture(30, 12, 9)), "JPEG", exif=exif, quality=90))
    corpus.indexed["odd/exif-rotated.jpg"] = (12, 30)

    (root / "odd").mkdir(exist_ok=True)
    with open(os.fsencode(root / "odd") + b"/" + NON_UTF8_NAME, "wb") as f:
        f.write(encode(Image.fromarray(picture(8, 8, 10)), "PNG"))
    corpus.indexed[NON_UTF8_REL] = (8, 8)

    _put(root, "odd/png-named.txt", encode(Image.fromarray(picture(6, 6, 11)), "PNG"))  # found by content
    corpus.indexed["odd/png-named.txt"] = (6, 6)

    # A folder named like an image is a folder: what is inside it is indexed, under its label.
    _put(root, "x.png/inside.png", encode(Image.fromarray(picture(5, 5, 12)), "PNG"))
    corpus.indexed["x.png/inside.png"] = (5, 5)

    # --- broken, hostile or unreadable: skipped, each with its reason
    _put(root, "bad/empty.png", b"")
    corpus.skipped["bad/empty.png"] = r"^empty file$"
    _put(root, "bad/text.png", b"just some text, honestly\n")
    corpus.skipped["bad/text.png"] = r"^not an image"
    _put(root, "bad/page.png", b"<!DOCTYPE html><html><body><h1>404 Not Found</h1></body></html>\n")
    corpus.skipped["bad/page.png"] = r"^not an image"
    _put(root, "bad/truncated.png", png[: len(png) // 2])
    corpus.skipped["bad/truncated.png"] = r"could not be decoded|truncated"
    _put(root, "bad/truncated.jpg", jpeg[: len(jpeg) // 2])
    corpus.skipped["bad/truncated.jpg"] = r"could not be decoded|truncated"
    idat = png.index(b"IDAT") + 4
    _put(root, "bad/bad-idat.png", png[:idat] + b"\xff\xff" + png[idat + 2 :])
    corpus.skipped["bad/bad-idat.png"] = r"could not be decoded"
    _put(root, "bad/magic-only.gif", b"GIF89a")
    corpus.skipped["bad/magic-only.gif"] = r"could not be decoded|not an image"
    # Decompression bombs: 81 Mpixel (over simsearch's limit, under Pillow's), and 4.3 Gpixel (over both).
    _put(root, "bad/bomb.png", handmade_png(9_000, 9_000))
    corpus.skipped["bad/bomb.png"] = r"decompression bomb"
    _put(root, "bad/bomb-giant.png", handmade_png(65_535, 65_535))
    corpus.skipped["bad/bomb-giant.png"] = r"decompression bomb"
    # Over the size limit for one file: sparse, so it costs no disk space and is refused before it is read.
    huge = _put(root, "bad/huge.png", png[:32])
    os.truncate(huge, 600 * 1024 * 1024)
    corpus.skipped["bad/huge.png"] = r"over the .*-byte limit"
    os.symlink("loop.png", root / "bad" / "loop.png")  # a symlink to itself
    corpus.skipped["bad/loop.png"] = r"could not be read: Too many levels of symbolic links"
    os.symlink("gone.png", root / "bad" / "dangling.png")
    corpus.skipped["bad/dangling.png"] = r"could not be read: No such file"
    os.mkfifo(root / "bad" / "fifo.png")  # opening it for reading would wait forever for a writer
    corpus.skipped["bad/fifo.png"] = r"not a regular file"
    unreadable = _put(root, "bad/unreadable.png", png)
    unreadable.chmod(0)
    corpus.unreadable.append(unreadable)
    corpus.skipped["bad/unreadable.png"] = r"could not be read: Permission denied"

    # --- neither images nor pretending to be: passed over in silence
    _put(root, "notes.txt", b"not an image, and not pretending to be one\n")
    corpus.ignored.append("notes.txt")
    _put(root, ".hidden.png", b"hidden files are not looked at")
    corpus.ignored.append(".hidden.png")
    os.symlink("..", root / "bad" / "loop-dir")  # a folder symlink loop: not followed
    corpus.ignored.append("bad/loop-dir")
    return corpus
