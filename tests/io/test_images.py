"""Tests for simsearch.images: finding files by content, decoding every format safely, preprocessing, loading.

Every image is generated with Pillow in tmp_path (no data files); everything is seeded and fast.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from simsearch.errors import ImageError
from simsearch.io import (
    MAX_PIXELS,
    ImageSurvey,
    LoadedImage,
    Preprocess,
    Skipped,
    decode_image,
    find_images,
    label_of,
    letterbox,
    load_image,
    load_images,
    read_file,
    sniff_format,
    survey_images,
    to_array,
    trim,
)
from tests.conftest import encode, handmade_png, run_with_timeout
from tests.helpers import after_magic, mutated

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
GIF_MAGIC = b"GIF89a"


# ----------------------------------------------------------------------------------------------------------------
# helpers


def gradient(width: int, height: int, mode: str = "L", seed: int = 0) -> Image.Image:
    """A smooth, non-symmetric test picture (so lossy formats keep it recognisable)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    grey = (xx * 200 / max(width - 1, 1) + yy * 40 / max(height - 1, 1)).astype(np.uint8)
    if mode == "L":
        return Image.fromarray(grey, "L")
    offset = int(rng.integers(0, 30))
    rgb = np.stack([grey, 255 - grey, np.full_like(grey, 100 + offset)], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB").convert(mode)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------------
# 1. every format is recognised by its content, whatever the file is called

# (format, Pillow mode written, save options, expected decoded mode, lossy)
FORMATS = [
    ("PNG", "L", {}, "L", False),
    ("PNG", "RGB", {}, "RGB", False),
    ("JPEG", "RGB", {"quality": 95}, "RGB", True),
    ("JPEG", "L", {"quality": 95}, "L", True),
    ("PPM", "L", {}, "L", False),  # PGM (P5)
    ("PPM", "RGB", {}, "RGB", False),  # PPM (P6)
    ("PPM", "1", {}, "L", False),  # PBM (P4)
    ("BMP", "RGB", {}, "RGB", False),
    ("GIF", "P", {}, "RGB", False),
    ("TIFF", "RGB", {}, "RGB", False),
    ("TIFF", "L", {"compression": "tiff_lzw"}, "L", False),
    ("WEBP", "RGB", {"lossless": True}, "RGB", False),
    ("WEBP", "RGB", {"quality": 90}, "RGB", True),
]
SNIFFED = {"PNG": "PNG", "JPEG": "JPEG", "PPM": "PNM", "BMP": "BMP", "GIF": "GIF", "TIFF": "TIFF", "WEBP": "WEBP"}


@pytest.mark.parametrize(("fmt", "mode", "options", "decoded_mode", "lossy"), FORMATS)
def test_every_format_is_found_by_content_and_decodes(
    tmp_path: Path, fmt: str, mode: str, options: dict, decoded_mode: str, lossy: bool
) -> None:
    source = gradient(13, 7, "RGB" if mode in ("RGB", "P") else "L")
    if mode == "P":
        source = source.quantize(64)
    elif mode == "1":
        source = source.convert("1")
    data = encode(source, fmt, **options)
    assert sniff_format(data[:32]) == SNIFFED[fmt]

    # No extension, a meaningless one, and a lying one: all are found, none is skipped.
    names = ["noext", "a.dat", "photo.txt", "really_a_png.jpg" if fmt != "PNG" else "really_a_jpeg.jpeg"]
    for name in names:
        write(tmp_path / name, data)
    found, skipped = find_images(tmp_path)
    assert skipped == []
    assert sorted(e.rel for e in found) == sorted(names)
    for entry in found:
        assert entry.bytes == len(data)
        assert entry.label is None

    img = decode_image(read_file(found[0].path), found[0].rel)
    assert img.size == (13, 7)
    assert img.mode == decoded_mode
    expected = source.convert(decoded_mode)
    diff = np.abs(pixels(img) - pixels(expected))
    assert diff.max() <= (40 if lossy else 0), f"{fmt}/{mode}: pixels differ by up to {diff.max()}"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (PNG_MAGIC + b"\x00" * 8, "PNG"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 12, "JPEG"),
        (b"P5\n3 2\n255\n", "PNM"),
        (b"P1 # comment", "PNM"),
        (b"BM" + b"\x00" * 12 + (40).to_bytes(4, "little"), "BMP"),
        (b"BM" + b"\x00" * 14, None),  # no known DIB header size
        (b"BMI table of contents", None),
        (b"P1 table", None),
        (b"GIF87a\x01\x00\x01\x00", "GIF"),
        (b"II*\x00\x08\x00\x00\x00", "TIFF"),
        (b"MM\x00*\x00\x00\x00\x08", "TIFF"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"", None),
        (b"BM", None),  # too short to be a BMP header
        (b"P7\n", None),
        (b"P5x", None),
        (b"RIFF\x10\x00\x00\x00WAVEfmt ", None),
        (b"<!DOCTYPE html>", None),
        (b"hello world, not an image", None),
    ],
)
def test_sniff_format(head: bytes, expected: str | None) -> None:
    assert sniff_format(head) == expected


# ----------------------------------------------------------------------------------------------------------------
# 2. find_images: labels, order, what is ignored, bad roots


def small_png(value: int = 128, size: tuple[int, int] = (4, 3)) -> bytes:
    return encode(Image.new("L", size, value), "PNG")


def test_label_of() -> None:
    assert label_of("s12/3.pgm") == "s12"
    assert label_of("a/b/x.png") == "a/b"
    assert label_of("x.png") is None


def test_find_images_labels_and_fields(tmp_path: Path) -> None:
    write(tmp_path / "s12" / "3.pgm", encode(Image.new("L", (3, 3), 9), "PPM"))
    write(tmp_path / "a" / "b" / "x.png", small_png())
    write(tmp_path / "top.png", small_png())
    found, skipped = find_images(tmp_path)
    assert skipped == []
    by_rel = {e.rel: e for e in found}
    assert set(by_rel) == {"s12/3.pgm", "a/b/x.png", "top.png"}
    assert by_rel["s12/3.pgm"].label == "s12"
    assert by_rel["a/b/x.png"].label == "a/b"
    assert by_rel["top.png"].label is None
    entry = by_rel["a/b/x.png"]
    assert entry.path == tmp_path / "a" / "b" / "x.png"
    assert entry.bytes == entry.path.stat().st_size
    assert entry.mtime == entry.path.stat().st_mtime


def test_find_images_order_within_folders_is_sorted_and_deterministic(tmp_path: Path) -> None:
    # Created in scrambled order; names chosen so that creation order differs from sorted order.
    for name in ["c/9.png", "c/10.png", "a/z.png", "a/b.png", "b/m.png", "a/B.png"]:
        write(tmp_path / name, small_png())
    found, _ = find_images(tmp_path)
    rels = [e.rel for e in found]
    assert rels == ["a/B.png", "a/b.png", "a/z.png", "b/m.png", "c/10.png", "c/9.png"]
    assert [e.rel for e in find_images(tmp_path)[0]] == rels


def test_find_images_result_is_sorted_by_path(tmp_path: Path) -> None:
    write(tmp_path / "z.png", small_png())
    write(tmp_path / "a" / "x.png", small_png())
    found, _ = find_images(tmp_path)
    rels = [e.rel for e in found]
    assert rels == sorted(rels)
    assert [e.path for e in found] == sorted(e.path for e in found)


def test_find_images_ignores_hidden_and_non_images(tmp_path: Path) -> None:
    write(tmp_path / "keep.png", small_png())
    write(tmp_path / ".hidden.png", small_png())
    write(tmp_path / ".git" / "inside.png", small_png())
    write(tmp_path / "sub" / ".cache" / "deep.png", small_png())
    write(tmp_path / ".DS_Store", b"\x00\x00\x00\x01Bud1")
    write(tmp_path / "README.txt", b"These are my scans.\n")
    write(tmp_path / "meta.json", b'{"a": 1}')
    found, skipped = find_images(tmp_path)
    assert [e.rel for e in found] == ["keep.png"]
    assert skipped == []  # README.txt and meta.json are not images, and say nothing about being one


def test_find_images_missing_root(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        find_images(tmp_path / "nope")


def test_find_images_root_is_a_file(tmp_path: Path) -> None:
    path = write(tmp_path / "one.png", small_png())
    with pytest.raises(ImageError, match="not a folder"):
        find_images(path)


def test_find_images_directory_named_like_an_image(tmp_path: Path) -> None:
    (tmp_path / "x.png").mkdir()
    write(tmp_path / "x.png" / "inner.png", small_png())
    found, skipped = find_images(tmp_path)
    assert [e.rel for e in found] == ["x.png/inner.png"]
    assert found[0].label == "x.png"
    assert skipped == []


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_find_images_symlink_loop_terminates(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write(root / "cls" / "img.png", small_png())
    os.symlink(root, root / "loop")
    os.symlink(root / "cls", root / "cls" / "again")
    found, skipped = run_with_timeout(lambda: find_images(root), 10.0)
    assert [e.rel for e in found] == ["cls/img.png"]
    assert skipped == []


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_find_images_broken_symlinks(tmp_path: Path) -> None:
    write(tmp_path / "ok.png", small_png())
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    os.symlink(tmp_path / "gone.txt", tmp_path / "dangling.txt")
    found, skipped = find_images(tmp_path)
    assert [e.rel for e in found] == ["ok.png"]
    # The one announcing itself as an image is reported; the other is silently not an image.
    assert [s.rel for s in skipped] == ["dangling.png"]
    assert "could not be read" in skipped[0].reason


# ----------------------------------------------------------------------------------------------------------------
# 3. broken files: Skipped with a reason, or ImageError — never another exception

SPEC = Preprocess(size=(8, 8), channels=1)


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def corrupt_idat(png: bytes) -> bytes:
    """Break the zlib header of a PNG's pixel data (its IDAT chunk); the file's structure stays intact."""
    at = png.index(b"IDAT") + 4
    return png[:at] + b"\xff\xff" + png[at + 2 :]


def test_broken_files_are_skipped_with_reasons(tmp_path: Path) -> None:
    write(tmp_path / "empty.png", b"")
    write(tmp_path / "notes.png", b"just some text, honestly\n")
    write(tmp_path / "page.jpg", b"<!DOCTYPE html><html><body>404 Not Found</body></html>")
    write(tmp_path / "Capital.PNG", b"also text")
    write(tmp_path / "good.png", small_png())
    found, skipped = find_images(tmp_path)
    assert [e.rel for e in found] == ["good.png"]
    reasons = {s.rel: s.reason for s in skipped}
    assert set(reasons) == {"empty.png", "notes.png", "page.jpg", "Capital.PNG"}
    assert all(isinstance(s, Skipped) for s in skipped)
    assert "empty" in reasons["empty.png"]
    for rel in ("notes.png", "page.jpg", "Capital.PNG"):
        assert "not an image" in reasons[rel]


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("empty.png", lambda: b""),
        ("notes.png", lambda: b"just some text, honestly\n"),
        ("page.jpg", lambda: b"<!DOCTYPE html><html><body>404</body></html>"),
        ("half.png", lambda: truncated(encode(gradient(40, 30, "RGB"), "PNG"))),
        ("half.jpg", lambda: truncated(encode(gradient(40, 30, "RGB"), "JPEG"))),
        ("magic_only.png", lambda: PNG_MAGIC),
        ("magic_only.gif", lambda: GIF_MAGIC),
        ("bad_idat.png", lambda: corrupt_idat(encode(gradient(8, 8), "PNG"))),
    ],
)
def test_broken_files_raise_image_error(tmp_path: Path, name: str, make) -> None:
    data = make()
    path = write(tmp_path / name, data)
    with pytest.raises(ImageError, match=name.replace(".", r"\.")):
        decode_image(data, name)
    with pytest.raises(ImageError):
        load_image(path, SPEC, name)


def test_truncated_png_and_jpeg_are_found_but_do_not_load(tmp_path: Path) -> None:
    png = encode(gradient(40, 30, "RGB"), "PNG")
    jpg = encode(gradient(40, 30, "RGB"), "JPEG")
    write(tmp_path / "half.png", truncated(png))
    write(tmp_path / "half.jpg", truncated(jpg))
    found, skipped = find_images(tmp_path)
    assert [e.rel for e in found] == ["half.jpg", "half.png"]  # the magic bytes are intact
    assert skipped == []
    for entry in found:
        with pytest.raises(ImageError, match=r"could not be decoded|truncated"):
            load_image(entry.path, SPEC, entry.rel)


def test_empty_file_message_mentions_empty() -> None:
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"", "empty.png")


def test_unidentified_content_says_so() -> None:
    """The same words as the folder scan's for the same file (``find_images``)."""
    with pytest.raises(ImageError, match=r"notes\.png: not an image: its content is no known image format$"):
        decode_image(b"just some text, honestly\n", "notes.png")


def test_read_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such image file or folder"):
        read_file(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="is a folder, not an image file"):
        read_file(tmp_path)
    path = write(tmp_path / "x.png", b"abc")
    assert read_file(path) == b"abc"


# ----------------------------------------------------------------------------------------------------------------
# 4. odd but valid images come out as L or RGB


def test_16_bit_png_is_scaled_to_8_bits() -> None:
    arr = np.array([[0, 32768, 65535, 65535], [16384, 49152, 1000, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(arr), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    img = decode_image(data)
    assert img.mode == "L"
    assert img.size == (4, 2)
    out = pixels(img)
    expected = arr.astype(np.float64) * 255 / 65535
    assert np.abs(out - expected).max() <= 1
    assert out[0, 2] == 255
    assert out[0, 0] == 0
    assert abs(out[0, 1] - 128) <= 1


def test_dark_16_bit_png_is_scaled_like_any_other() -> None:
    dark = np.array([[0, 100, 255, 255]], dtype=np.uint16)
    img = decode_image(encode(Image.fromarray(dark), "PNG"))
    # 255/65535 of full scale is about 1/255: nearly black, like the same pixel next to a brighter one.
    assert pixels(img).max() <= 1


def test_16_bit_scaling_is_consistent_across_images() -> None:
    """The same 16-bit value must not flip from white to black depending on the image's other pixels."""
    alone = decode_image(encode(Image.fromarray(np.array([[255, 255]], dtype=np.uint16)), "PNG"))
    beside_brighter = decode_image(encode(Image.fromarray(np.array([[255, 256]], dtype=np.uint16)), "PNG"))
    assert pixels(alone)[0, 0] == pixels(beside_brighter)[0, 0]


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95)  # pure red in CMYK
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    img = decode_image(data)
    assert img.mode == "RGB"
    r, g, b = pixels(img).reshape(-1, 3).mean(axis=0)
    assert r > 230 and g < 25 and b < 25


def test_palette_png_with_transparency_is_composited_on_white() -> None:
    img = Image.new("P", (6, 4), 0)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    img.paste(1, (3, 0, 6, 4))  # right half: blue, left half: black but fully transparent
    data = encode(img, "PNG", transparency=0)
    out = decode_image(data)
    assert out.mode == "RGB"
    arr = pixels(out)
    assert (arr[:, :3] == 255).all()  # transparent black → white
    assert (arr[:, 3:] == [0, 0, 255]).all()


def test_rgba_alpha_is_composited_on_white() -> None:
    arr = np.zeros((2, 3, 4), dtype=np.uint8)
    arr[..., :3] = (10, 20, 30)
    arr[0, :, 3] = 0  # top row invisible
    arr[1, 0, 3] = 255  # opaque
    arr[1, 1, 3] = 128  # half
    arr[1, 2, 3] = 0
    out = decode_image(encode(Image.fromarray(arr, "RGBA"), "PNG"))
    assert out.mode == "RGB"
    got = pixels(out)
    assert (got[0] == 255).all()
    assert got[1, 0].tolist() == [10, 20, 30]
    assert np.abs(got[1, 1] - (np.array([10, 20, 30]) * 128 + 255 * 127) / 255).max() <= 1
    assert (got[1, 2] == 255).all()


def test_grey_with_alpha_is_composited_on_white() -> None:
    la = Image.merge("LA", [Image.new("L", (3, 1), 0), Image.frombytes("L", (3, 1), bytes([0, 255, 0]))])
    out = decode_image(encode(la, "PNG"))
    assert out.mode in ("L", "RGB")
    grey = pixels(out.convert("L"))[0].tolist()
    assert grey == [255, 0, 255]


@pytest.mark.parametrize(("mode", "colour"), [("L", 0), ("RGB", (0, 0, 0))])
def test_colour_key_transparency_is_composited_on_white(mode: str, colour: object) -> None:
    data = encode(Image.new(mode, (4, 4), colour), "PNG", transparency=colour)
    assert "transparency" in Image.open(io.BytesIO(data)).info
    out = decode_image(data)
    assert (pixels(out) == 255).all()


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (5, 4), colour) for colour in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    data = buf.getvalue()
    assert Image.open(io.BytesIO(data)).n_frames == 3
    out = decode_image(data)
    assert out.mode == "RGB"
    assert out.size == (5, 4)
    assert (pixels(out) == [255, 0, 0]).all()


def test_one_pixel_image() -> None:
    out = decode_image(encode(Image.new("L", (1, 1), 77), "PNG"))
    assert out.size == (1, 1)
    assert out.getpixel((0, 0)) == 77
    arr = to_array(out, Preprocess(size=(4, 6)))
    assert arr.shape == (1, 4, 6)
    assert np.allclose(arr, 77 / 255)


def test_bilevel_image_becomes_l() -> None:
    img = Image.new("1", (4, 2), 0)
    img.putpixel((1, 0), 1)
    out = decode_image(encode(img, "PNG"))
    assert out.mode == "L"
    assert pixels(out).tolist() == [[0, 255, 0, 0], [0, 0, 0, 0]]


def test_float_and_32_bit_tiffs_become_l() -> None:
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    out = decode_image(encode(f, "TIFF"))
    assert out.mode == "L"
    assert np.abs(pixels(out)[0] - [0, 127, 255]).max() <= 1
    i = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), "I")
    out = decode_image(encode(i, "TIFF"))
    assert out.mode == "L"
    assert pixels(out)[0].tolist() == [0, 255]


# ----------------------------------------------------------------------------------------------------------------
# 5. EXIF orientation


def test_exif_orientation_is_applied() -> None:
    arr = np.full((20, 40), 255, dtype=np.uint8)  # 40 wide × 20 high
    arr[:, :20] = 0  # left half black
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = encode(Image.fromarray(arr, "L"), "JPEG", exif=exif, quality=95)
    assert Image.open(io.BytesIO(data)).size == (40, 20)
    out = decode_image(data)
    assert out.size == (20, 40)
    got = pixels(out)
    # Turned clockwise, the left (black) half ends up on top.
    assert got[:18].mean() < 20
    assert got[22:].mean() > 235


def test_no_exif_means_no_rotation() -> None:
    out = decode_image(encode(Image.new("L", (40, 20)), "JPEG"))
    assert out.size == (40, 20)


# ----------------------------------------------------------------------------------------------------------------
# 6. decompression bombs are refused from the header, before any pixel is allocated


def test_handmade_png_is_valid_for_small_sizes() -> None:
    """The hand-crafted PNG parses (so the bomb tests below test the limit, not a broken file)."""
    img = Image.open(io.BytesIO(handmade_png(4, 4)))
    assert img.size == (4, 4)
    assert img.mode == "L"


@pytest.mark.parametrize(("width", "height"), [(100_000, 100_000), (10_000, 10_000), (9_000, 9_000)])
def test_decompression_bomb_is_refused_quickly(width: int, height: int) -> None:
    assert width * height > MAX_PIXELS
    data = handmade_png(width, height)
    assert len(data) < 200
    start = time.perf_counter()
    with pytest.raises(ImageError) as info:
        decode_image(data, "bomb.png")
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    message = str(info.value)
    assert "bomb.png" in message
    assert "limit" in message
    assert "bomb" in message
    if width * height < Image.MAX_IMAGE_PIXELS:  # under Pillow's own threshold: it is this module's limit
        assert f"{MAX_PIXELS:,}" in message
        assert f"{width}×{height}" in message


# ----------------------------------------------------------------------------------------------------------------
# 7. letterbox and to_array


def bordered(width: int, height: int, border, inner, mode: str) -> Image.Image:
    """A picture whose border is mostly ``border`` (with a few odd pixels) and whose centre is ``inner``."""
    img = Image.new(mode, (width, height), border)
    img.paste(inner, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    odd = (0, 0, 0) if mode == "RGB" else 0
    for x in (0, 1, 2):
        img.putpixel((x, 0), odd)  # a few outliers on the border: the median ignores them
    return img


@pytest.mark.parametrize(
    ("mode", "border", "inner"), [("L", 200, 40), ("RGB", (10, 200, 30), (250, 250, 250))], ids=["L", "RGB"]
)
def test_letterbox_keeps_aspect_and_pads_with_border_median(mode: str, border, inner) -> None:
    img = bordered(40, 20, border, inner, mode)
    out = letterbox(img, (32, 32))
    assert out.mode == mode
    assert out.size == (32, 32)
    arr = pixels(out)
    if mode == "L":
        arr = arr[..., None]
    fill = np.array(border if mode == "RGB" else [border])
    # 40×20 scaled by 0.8 → 32×16, centred: rows 8..23 hold the picture, the rest is padding.
    assert (arr[:8] == fill).all()
    assert (arr[24:] == fill).all()
    content = arr[8:24]
    centre = content[6:10, 12:20]
    assert (np.abs(centre - np.array(inner if mode == "RGB" else [inner])) <= 2).all()
    expected = pixels(img.resize((32, 16), Image.Resampling.BILINEAR))
    assert np.array_equal(content, expected if mode == "RGB" else expected[..., None])


def test_letterbox_tall_image_pads_left_and_right() -> None:
    img = Image.new("L", (10, 30), 90)
    out = letterbox(img, (15, 15))
    assert out.size == (15, 15)
    arr = pixels(out)
    # 10×30 scaled by 0.5 → 5×15, placed at x = 5.
    assert (arr == 90).all()  # border median of a uniform picture is its colour
    img.paste(0, (0, 0, 10, 30))
    img.paste(255, (4, 6, 6, 24))  # far enough from the edge that the downscaled border stays black
    out = pixels(letterbox(img, (15, 15)))
    assert out[:, :5].max() == 0 and out[:, 10:].max() == 0
    assert out[7, 7] > 100


def test_letterbox_same_size_is_unchanged() -> None:
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (12, 20), dtype=np.uint8)
    img = Image.fromarray(arr, "L")
    out = letterbox(img, (12, 20))
    assert out.size == (20, 12)
    assert np.array_equal(np.asarray(out), arr)


def test_letterbox_pads_without_resizing_when_one_side_fits() -> None:
    rng = np.random.default_rng(4)
    arr = rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)
    out = pixels(letterbox(Image.fromarray(arr, "RGB"), (32, 32)))
    assert np.array_equal(out[8:24], arr)  # exact copy: no resampling happened


def test_letterbox_upscales_small_images() -> None:
    out = letterbox(Image.new("L", (4, 2), 30), (16, 16))
    assert out.size == (16, 16)
    assert (pixels(out) == 30).all()


def test_to_array_shape_dtype_and_range() -> None:
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 256, (8, 12), dtype=np.uint8)
    img = Image.fromarray(arr, "L")
    out = to_array(img, Preprocess(size=(8, 12)))
    assert out.shape == (1, 8, 12)
    assert out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.allclose(out[0], arr / 255.0, atol=1e-6)


def test_to_array_invert() -> None:
    rng = np.random.default_rng(6)
    arr = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    img = Image.fromarray(arr, "L")
    plain = to_array(img, Preprocess(size=(5, 7)))
    inverted = to_array(img, Preprocess(size=(5, 7), invert=True))
    assert np.allclose(inverted, 1.0 - plain, atol=1e-6)
    assert not np.allclose(inverted, plain)


def test_to_array_normalises_each_channel() -> None:
    rng = np.random.default_rng(7)
    arr = rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)
    spec = Preprocess(size=(6, 4), channels=3, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    out = to_array(Image.fromarray(arr, "RGB"), spec)
    assert out.shape == (3, 6, 4)
    assert out.dtype == np.float32
    x = arr.transpose(2, 0, 1) / 255.0
    expected = (x - np.array([0.5, 0.25, 0.0])[:, None, None]) / np.array([0.5, 0.25, 2.0])[:, None, None]
    assert np.allclose(out, expected, atol=1e-5)
    # Channel order is R, G, B.
    assert np.allclose(out[0], (arr[..., 0] / 255.0 - 0.5) / 0.5, atol=1e-5)


def test_to_array_grey_mean_std_single_values() -> None:
    img = Image.new("L", (3, 3), 51)  # 0.2
    out = to_array(img, Preprocess(size=(3, 3), mean=(0.1,), std=(0.5,)))
    assert np.allclose(out, (0.2 - 0.1) / 0.5, atol=1e-6)


def test_to_array_converts_channels() -> None:
    rgb = Image.new("RGB", (4, 4), (255, 0, 0))
    grey = to_array(rgb, Preprocess(size=(4, 4), channels=1))
    assert grey.shape == (1, 4, 4)
    assert np.allclose(grey, Image.new("RGB", (1, 1), (255, 0, 0)).convert("L").getpixel((0, 0)) / 255.0)
    three = to_array(Image.new("L", (4, 4), 102), Preprocess(size=(4, 4), channels=3))
    assert three.shape == (3, 4, 4)
    assert np.allclose(three, 0.4)


def test_to_array_letterboxes() -> None:
    img = bordered(40, 20, 200, 40, "L")
    out = to_array(img, Preprocess(size=(32, 32)))
    assert out.shape == (1, 32, 32)
    assert np.allclose(out[0, :8], 200 / 255.0)
    assert np.allclose(out[0, 24:], 200 / 255.0)


def test_trim_crops_the_background_margin_with_a_little_padding() -> None:
    arr = np.full((100, 100), 250, np.uint8)
    arr[40:50, 20:70] = 10  # a dark stroke on light paper, with a faint stain the tolerance ignores
    arr[5, 5] = 230
    out = trim(Image.fromarray(arr))
    assert out.size == (50 + 2 * 3, 10 + 2 * 3)  # (W, H): the stroke's box, 3% of the long side on each side
    assert np.asarray(out)[3:-3, 3:-3].max() == 10
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[2:4, 25:29, 1] = 200  # green only: any channel counts
    assert trim(Image.fromarray(rgb, "RGB")).size == (6, 4)  # clipped at the right and top edges
    blank = Image.new("L", (12, 9), 128)
    assert trim(blank) is blank


def test_to_array_trims_then_letterboxes() -> None:
    arr = np.full((64, 64), 255, np.uint8)
    arr[10:20, 30:40] = 0  # a small square drawing in a corner of the sheet
    out = to_array(Image.fromarray(arr), Preprocess(size=(16, 16), resize="trim", invert=True))
    assert out.shape == (1, 16, 16)
    assert out[0, 3:13, 3:13].min() > 0.9  # the square fills the input, less its padding
    assert out[0, :2].max() < 0.1 and out[0, :, -2:].max() < 0.1
    plain = to_array(Image.fromarray(arr), Preprocess(size=(16, 16), invert=True))
    assert plain.sum() < out.sum() / 4
    assert Preprocess.from_json(Preprocess(size=(4, 4), resize="trim").to_json()).resize == "trim"


@pytest.mark.parametrize(
    "kwargs",
    [{"size": (8, 8), "channels": 2}, {"size": (0, 8)}, {"size": (8,)}, {"size": (8, 8), "resize": "stretch"}],
)
def test_preprocess_rejects_bad_specs(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Preprocess(**kwargs)


def test_preprocess_json_round_trip() -> None:
    spec = Preprocess(size=(24, 32), channels=3, invert=True, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    assert Preprocess.from_json(spec.to_json()) == spec
    assert Preprocess.from_json({"size": [5, 6], "channels": 1}) == Preprocess(size=(5, 6))


# ----------------------------------------------------------------------------------------------------------------
# 8. load_image and load_images


def test_load_image_fields(tmp_path: Path) -> None:
    img = gradient(30, 10, "RGB")
    data = encode(img, "PNG")
    path = write(tmp_path / "pic.png", data)
    spec = Preprocess(size=(16, 16), channels=3)
    loaded = load_image(path, spec)
    assert isinstance(loaded, LoadedImage)
    assert loaded.sha256 == hashlib.sha256(data).hexdigest()
    assert loaded.bytes == len(data)
    assert (loaded.width, loaded.height) == (30, 10)
    assert loaded.grey is False
    assert loaded.array.shape == (3, 16, 16)
    assert loaded.array.dtype == np.float32
    assert np.allclose(loaded.array, to_array(decode_image(data), spec))


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize("resize", ["letterbox", "trim"])
def test_load_image_size_is_the_stored_picture_turned_by_exif(tmp_path: Path, orientation: int, resize: str) -> None:
    """The width and height recorded are the file's picture with its EXIF orientation applied, also when a JPEG is
    decoded reduced for a small input (letterbox)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(gradient(400, 200, "L"), "JPEG", exif=exif, quality=90)
    loaded = load_image(write(tmp_path / "turned.jpg", data), Preprocess(size=(16, 16), resize=resize))
    assert isinstance(loaded, LoadedImage)
    assert (loaded.width, loaded.height) == ((200, 400) if orientation in (6, 8) else (400, 200))
    assert loaded.array.shape == (1, 16, 16)


def test_load_image_grey_flag(tmp_path: Path) -> None:
    grey_rgb = Image.merge("RGB", [gradient(6, 6)] * 3)
    loaded = load_image(write(tmp_path / "g.png", encode(grey_rgb, "PNG")), SPEC)
    assert loaded is not None and loaded.grey is True


def test_load_image_skips_known_hash(tmp_path: Path) -> None:
    data = small_png(33)
    path = write(tmp_path / "same.png", data)
    digest = hashlib.sha256(data).hexdigest()
    assert load_image(path, SPEC, known_sha256=digest) is None
    other = load_image(path, SPEC, known_sha256="0" * 64)
    assert other is not None and other.sha256 == digest


def test_load_image_does_not_decode_when_hash_matches(tmp_path: Path) -> None:
    # Not an image at all: had it been decoded, it would raise.
    data = b"not an image"
    path = write(tmp_path / "x.png", data)
    assert load_image(path, SPEC, known_sha256=hashlib.sha256(data).hexdigest()) is None
    with pytest.raises(ImageError):
        load_image(path, SPEC)


def test_load_image_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.png", b"nope")
    with pytest.raises(ImageError, match="shown-name"):
        load_image(path, SPEC, name="shown-name")
    with pytest.raises(ImageError, match="no such image file or folder"):
        load_image(tmp_path / "missing.png", SPEC)


@pytest.mark.parametrize("workers", [1, 2, 0])
def test_load_images_keeps_input_order(tmp_path: Path, workers: int) -> None:
    values = [10, 60, 110, 160, 210, 250]
    good = [write(tmp_path / f"good{i}.png", small_png(v, (3 + i, 5))) for i, v in enumerate(values)]
    bad_text = write(tmp_path / "text.png", b"hello")
    bad_trunc = write(tmp_path / "trunc.png", truncated(encode(gradient(40, 40), "PNG")))
    missing = tmp_path / "missing.png"
    paths = [good[0], bad_text, good[1], good[2], missing, good[3], bad_trunc, good[4], good[5]]
    kinds = ["ok", "err", "ok", "ok", "err", "ok", "err", "ok", "ok"]
    names = [f"name{i}" for i in range(len(paths))]
    results = list(load_images(paths, SPEC, workers=workers, names=names))
    assert len(results) == len(paths)
    good_iter = iter(zip(values, range(6), strict=True))
    for i, (result, kind) in enumerate(zip(results, kinds, strict=True)):
        if kind == "err":
            assert isinstance(result, ImageError), (i, result)
            assert f"name{i}" in str(result)
        else:
            value, j = next(good_iter)
            assert isinstance(result, LoadedImage), (i, result)
            assert (result.width, result.height) == (3 + j, 5)
            assert np.allclose(result.array.mean(), value / 255.0, atol=1e-6)


def test_load_images_known_hashes(tmp_path: Path) -> None:
    datas = [small_png(v) for v in (1, 2, 3, 4, 5)]
    paths = [write(tmp_path / f"{i}.png", d) for i, d in enumerate(datas)]
    known = [None, hashlib.sha256(datas[1]).hexdigest(), None, hashlib.sha256(datas[3]).hexdigest(), "x"]
    results = list(load_images(paths, SPEC, workers=2, known_sha256=known))
    assert [r is None for r in results] == [False, True, False, True, False]
    assert [r.sha256 for r in results if r is not None] == [hashlib.sha256(datas[i]).hexdigest() for i in (0, 2, 4)]


def test_load_images_empty() -> None:
    assert list(load_images([], SPEC, workers=2)) == []


# ----------------------------------------------------------------------------------------------------------------
# 9. survey_images


def test_survey_median_size_and_grey(tmp_path: Path) -> None:
    sizes = [(10, 20), (30, 40), (50, 60), (70, 80), (90, 100)]  # (W, H)
    paths = [write(tmp_path / f"{i}.png", small_png(100, s)) for i, s in enumerate(sizes)]
    paths.append(write(tmp_path / "broken.png", b"nope"))  # ignored
    survey = survey_images(paths)
    assert survey == ImageSurvey(count=5, median_height=60, median_width=50, grey=True, background=survey.background)
    assert survey.background == pytest.approx(100 / 255)


def test_survey_background_is_the_median_border_brightness(tmp_path: Path) -> None:
    paper = np.full((20, 30), 230, np.uint8)
    paper[5:15, 5:25] = 10  # dark ink inside, light border
    night = 255 - paper
    light = [write(tmp_path / f"p{i}.png", encode(Image.fromarray(paper), "PNG")) for i in range(3)]
    dark = write(tmp_path / "n.png", encode(Image.fromarray(night), "PNG"))
    assert survey_images([*light, dark]).background == pytest.approx(230 / 255)
    assert survey_images([dark]).background == pytest.approx(25 / 255)


def test_survey_one_coloured_image_is_not_grey(tmp_path: Path) -> None:
    paths = [write(tmp_path / f"{i}.png", small_png(50 * i)) for i in range(4)]
    assert survey_images(paths).grey is True
    # The coloured one comes second: grey images after it must not make the survey grey again.
    paths.insert(1, write(tmp_path / "colour.png", encode(Image.new("RGB", (4, 3), (200, 10, 10)), "PNG")))
    survey = survey_images(paths)
    assert survey.grey is False
    assert survey.count == 5


def test_survey_rgb_with_equal_channels_is_grey(tmp_path: Path) -> None:
    grey_rgb = Image.merge("RGB", [gradient(8, 6)] * 3)
    data = encode(grey_rgb, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "RGB"
    paths = [write(tmp_path / "a.png", data), write(tmp_path / "b.png", small_png())]
    assert survey_images(paths).grey is True
    almost = np.asarray(grey_rgb).copy()
    almost[0, 0, 2] ^= 1  # one channel of one pixel differs by one
    paths.append(write(tmp_path / "c.png", encode(Image.fromarray(almost, "RGB"), "PNG")))
    assert survey_images(paths).grey is False


def test_survey_with_nothing_decodable(tmp_path: Path) -> None:
    paths = [write(tmp_path / "a.png", b"nope"), tmp_path / "missing.png"]
    with pytest.raises(ImageError, match="none of the sampled files"):
        survey_images(paths)
    with pytest.raises(ImageError):
        survey_images([])


# ----------------------------------------------------------------------------------------------------------------
# 10. fuzz: decode_image never raises anything but ImageError


def _valid_samples() -> list[bytes]:
    rgb = gradient(6, 5, "RGB")
    return [
        encode(rgb, "PNG"),
        encode(rgb.quantize(8), "PNG", transparency=0),
        encode(rgb, "JPEG"),
        encode(rgb, "GIF"),
        encode(rgb, "TIFF"),
        encode(rgb.convert("L"), "PPM"),
        encode(rgb, "BMP"),
        encode(rgb, "WEBP", lossless=True),
    ]


VALID_SAMPLES = _valid_samples()

random_with_magic = after_magic([b"", PNG_MAGIC, JPEG_MAGIC, GIF_MAGIC, b"II*\x00", b"BM", b"P5\n"], 2000)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about corrupt EXIF/TIFF tags
@settings(
    max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.one_of(random_with_magic, mutated(st.sampled_from(VALID_SAMPLES), operations=6, cut=8)))
def test_decode_image_only_raises_image_error(data: bytes) -> None:
    try:
        img = decode_image(data, "fuzz")
    except ImageError as exc:
        assert str(exc).startswith("fuzz")
        return
    assert img.mode in ("L", "RGB")
    assert img.size[0] >= 1 and img.size[1] >= 1
    np.asarray(img)  # fully loaded: reading its pixels must work


def test_large_jpegs_are_decoded_at_a_reduced_scale_with_their_true_size(tmp_path: Path) -> None:
    from simsearch.io import decode_image, load_image, to_array

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((640, 480))
    path = tmp_path / "photo.jpg"
    photo.save(path, "JPEG", quality=90)
    spec = Preprocess(size=(48, 64), channels=3)
    loaded = load_image(path, spec)
    assert loaded is not None and (loaded.width, loaded.height) == (640, 480)  # the file's size, not the draft's
    assert decode_image(path.read_bytes(), draft=spec.size).size == (160, 120)  # 1/4 still covers 64×64
    full = to_array(decode_image(path.read_bytes()), spec)
    assert np.abs(loaded.array - full).mean() < 0.01  # the same picture, reduced a little more smoothly
    png = tmp_path / "photo.png"
    photo.save(png)
    assert decode_image(png.read_bytes(), draft=spec.size).size == (640, 480)  # only JPEG has a draft mode


@pytest.mark.parametrize("processes", [False, True])
def test_load_batches_gives_load_images_results_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: bool
) -> None:
    import simsearch.io.pipeline as images

    monkeypatch.setattr(images, "PROCESS_MIN_IMAGES", 1 if processes else 10**9)
    rng = np.random.default_rng(3)
    paths = []
    for i in range(23):
        path = tmp_path / f"{i:02d}.png"
        if i % 7 == 3:
            path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
        else:
            Image.fromarray(rng.integers(0, 256, (9 + i, 11), dtype=np.uint8)).save(path)
        paths.append(path)
    spec = Preprocess(size=(8, 8))
    names = [p.name for p in paths]
    known = [hashlib.sha256(p.read_bytes()).hexdigest() if i == 5 else None for i, p in enumerate(paths)]
    expected = list(load_images(paths, spec, 1, names, known))
    jobs = [images.LoadJob(paths[i : i + 5], names[i : i + 5], known[i : i + 5]) for i in range(0, 23, 5)]
    batches = list(images.load_batches(iter(jobs), spec, workers=2, total=len(paths), ahead=1))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    got = [result for b in batches for result in b]
    assert got[5] is None and expected[5] is None
    for mine, theirs in zip(got, expected, strict=True):
        assert type(mine) is type(theirs)
        if isinstance(theirs, ImageError):
            assert str(mine) == str(theirs)
        elif theirs is not None:
            np.testing.assert_array_equal(mine.array, theirs.array)
            assert (mine.sha256, mine.width, mine.height) == (theirs.sha256, theirs.width, theirs.height)
    assert sum(isinstance(r, ImageError) for r in got) == 3


def test_gamma_raises_the_intensities_to_its_power_and_is_stored_only_when_used(tmp_path: Path) -> None:
    grey = np.random.default_rng(5).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    plain = Preprocess(size=(8, 8), channels=1)
    sqrt = Preprocess(size=(8, 8), channels=1, mean=(0.2,), std=(0.5,), gamma=0.5)
    (a,) = load_images([tmp_path / "g.png"], plain)
    (b,) = load_images([tmp_path / "g.png"], sqrt)
    np.testing.assert_allclose(b.array, (np.sqrt(a.array) - 0.2) / 0.5, atol=1e-6)  # type: ignore[union-attr]
    # A spec without gamma is written as before (a model's fingerprint hashes it); one with it round-trips.
    assert "gamma" not in plain.to_json() and Preprocess.from_json(plain.to_json()) == plain
    assert sqrt.to_json()["gamma"] == 0.5 and Preprocess.from_json(sqrt.to_json()) == sqrt
    for bad in (0.0, -1.0, float("nan"), 4.5):
        with pytest.raises(ValueError, match="gamma must be above 0 and at most 4"):
            Preprocess(size=(8, 8), gamma=bad)
    with pytest.raises(ValueError, match=r"preprocess\.gamma must be a number"):
        Preprocess.from_json({**sqrt.to_json(), "gamma": "half"})
