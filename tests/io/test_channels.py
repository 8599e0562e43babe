"""The channel rule (``simsearch.io.channels``): a colour image for a grey model, or a grey one for a colour model,
is converted (and counted) or refused (``strict``), the same way on every loading path; and each kind of bad file
is named with the same words by the folder scan and by the reader of a named file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simsearch.errors import ImageError, UsageError, spell
from simsearch.io import (
    ChannelTally,
    LoadedImage,
    LoadJob,
    Preprocess,
    channel_rule,
    current_tally,
    find_images,
    load_batches,
    load_image,
    load_images,
    read_file,
)
from simsearch.io.channels import ChannelRefused

GREY = Preprocess(size=(8, 8), channels=1)
COLOUR = Preprocess(size=(8, 8), channels=3)
REFUSED_GREY_MODEL = (
    "{}: a colour image, but the model takes grey images (1 channel) — pass channels='convert' to convert it to grey "
    "by luminance, or use a model trained on colour images"
)
REFUSED_COLOUR_MODEL = (
    "{}: a grey image, but the model takes colour images (3 channels) — pass channels='convert' to repeat its channel, "
    "or use a model trained on grey images"
)


def colour_png(path: Path, seed: int = 0) -> Path:
    rgb = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def grey_png(path: Path, seed: int = 0) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)).save(path)
    return path


def test_convert_is_the_default_colour_to_grey_by_luminance_grey_to_colour_by_repetition(tmp_path: Path) -> None:
    colour, grey = colour_png(tmp_path / "c.png"), grey_png(tmp_path / "g.png")
    as_grey = load_image(colour, GREY)
    assert as_grey is not None and as_grey.converted and not as_grey.grey
    rgb = np.asarray(Image.open(colour), np.float64)
    luminance = np.asarray(Image.open(colour).convert("L"), np.float32) / 255  # Pillow's ITU-R 601-2 luma
    assert np.abs(luminance * 255 - (rgb @ [0.299, 0.587, 0.114])).max() <= 1  # luminance, not a channel mean
    np.testing.assert_array_equal(as_grey.array[0], luminance)
    as_colour = load_image(grey, COLOUR)
    assert as_colour is not None and as_colour.converted
    np.testing.assert_array_equal(as_colour.array[0], as_colour.array[1])
    np.testing.assert_array_equal(as_colour.array[1], as_colour.array[2])
    same = load_image(grey, GREY)
    assert same is not None and not same.converted


def test_strict_refuses_with_one_message_each_way(tmp_path: Path) -> None:
    colour, grey = colour_png(tmp_path / "c.png"), grey_png(tmp_path / "g.png")
    with pytest.raises(ChannelRefused) as refused:
        load_image(colour, GREY, "c.png", channels="strict")
    assert str(refused.value) == REFUSED_GREY_MODEL.format("c.png")
    with pytest.raises(ImageError) as refused_grey:
        load_image(grey, COLOUR, "g.png", channels="strict")
    assert str(refused_grey.value) == REFUSED_COLOUR_MODEL.format("g.png")
    assert load_image(grey, GREY, channels="strict") is not None  # what fits is never refused


def test_a_scope_sets_the_rule_and_counts_each_image_once_on_threads(tmp_path: Path) -> None:
    paths = [colour_png(tmp_path / f"c{n}.png", n) for n in range(5)] + [grey_png(tmp_path / "g.png")]
    assert current_tally() is None
    with channel_rule() as tally:
        first = list(load_images(paths, GREY, workers=2))
        again = list(load_images(paths[:2], GREY, workers=1))  # eval reads images twice: counted once
    assert all(isinstance(item, LoadedImage) for item in first + again)
    assert (tally.to_grey, tally.to_colour, tally.refused) == (5, 0, 0)
    with channel_rule("strict") as strict:
        items = list(load_images(paths, GREY, workers=2))
    assert [type(item).__name__ for item in items] == ["ChannelRefused"] * 5 + ["LoadedImage"]
    assert (strict.converted, strict.refused) == (0, 5)
    # A rule given outright wins over the scope's.
    with channel_rule("strict") as scoped:
        assert isinstance(next(load_images(paths[:1], GREY, channels="convert")), LoadedImage)
    assert scoped.to_grey == 1


def test_worker_processes_follow_the_callers_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``index``'s decoding processes get the rule from the parent and the parent counts what they send back."""
    import simsearch.io.pipeline as pipeline

    monkeypatch.setattr(pipeline, "PROCESS_MIN_IMAGES", 1)
    paths = [colour_png(tmp_path / f"c{n}.png", n) for n in range(4)]
    job = LoadJob(paths, [p.name for p in paths], [None] * len(paths))
    with channel_rule("strict") as tally:
        [batch] = list(load_batches([job], GREY, workers=2, total=len(paths)))
    assert all(isinstance(item, ChannelRefused) for item in batch) and tally.refused == 4
    assert str(batch[0]) == REFUSED_GREY_MODEL.format("c0.png")
    with channel_rule() as tally:
        [batch] = list(load_batches([job], GREY, workers=2, total=len(paths)))
    assert all(isinstance(item, LoadedImage) and item.converted for item in batch) and tally.to_grey == 4


def test_the_note_is_one_line_in_one_wording() -> None:
    def cli(text: str | None) -> str | None:
        return None if text is None else spell(text, lambda name, value: f"--{name} {value}")

    tally = ChannelTally()
    assert tally.note() is None and tally.refusals() is None
    tally.count(1, "a")
    assert cli(tally.note()) == (
        "1 colour image was converted to grey (by luminance) for a grey model; --channels strict refuses such "
        "images instead"
    )
    tally.count(1, "a")  # the same content again
    tally.count(1, "b")
    tally.count(3, "c")
    assert cli(tally.note()) == (
        "2 colour images were converted to grey (by luminance) for a grey model and 1 grey image was converted to "
        "colour (channel repeated) for a colour model; --channels strict refuses such images instead"
    )
    tally.refused = 3
    assert cli(tally.refusals()) == (
        "3 images whose colour differs from the model's were refused (--channels strict); --channels convert "
        "converts such images instead"
    )
    assert tally.to_json() == {"rule": "convert", "converted_to_grey": 2, "converted_to_colour": 1, "refused": 3}


def test_an_unknown_rule_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"^channels must be convert or strict, not 'grey'$"), channel_rule("grey"):
        pass


# --- one wording for each kind of bad file: the scan of a folder, and the reading of a named file ----------------


def test_the_scan_and_the_reader_name_each_bad_file_alike(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "text.png").write_text("just some text")
    (folder / "empty.png").write_bytes(b"")
    os.mkfifo(folder / "pipe.png")
    (folder / "dir.png").mkdir()
    _, skipped = find_images(folder)
    scanned = {s.rel: s.reason for s in skipped}
    assert scanned == {
        "empty.png": "empty file",
        "pipe.png": "not a regular file (a pipe, socket or device)",
        "text.png": "not an image: its content is no known image format",
    }
    for name, reason in scanned.items():
        with pytest.raises(ImageError) as read:
            load_image(folder / name, GREY, name)
        assert read.value.reason() == reason, name
    with pytest.raises(ImageError, match=r"dir\.png: is a folder, not an image file$"):
        read_file(folder / "dir.png", "dir.png")
    with pytest.raises(ImageError, match=r"gone\.png: no such image file or folder — check the path$"):
        read_file(folder / "gone.png", "gone.png")


def test_a_file_that_starts_like_an_image_but_is_damaged_says_so(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(ImageError, match=r"^damaged\.png: could not be decoded \(damaged PNG data\)$"):
        load_image(damaged, GREY, "damaged.png")
