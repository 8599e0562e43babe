"""Fuzzing: random bytes and valid-but-odd images, fed to the image reader, the query path and the CLI.

The property everywhere: only ``SimsearchError`` escapes the library, and the CLI answers with results or
with exactly one ``Error:`` line — never a traceback. Hypothesis runs derandomized (the same examples every run).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from simsearch.cli import app
from simsearch.errors import SimsearchError
from simsearch.indexing import IndexConfig, index_folder
from simsearch.io import LoadedImage, Preprocess, find_images, load_image
from simsearch.search import Searcher
from simsearch.store.collection import Collection
from tests.conftest import encode, pattern, write_folder
from tests.helpers import after_magic, mutated

FUZZ = settings(
    deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow], max_examples=120
)
MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM", b"P5\n", b"RIFF"]

# Pillow modes, the formats that can store each, and the EXIF orientations a format carries.
MODES = {
    "1": ["PNG", "BMP", "TIFF", "PPM", "GIF"],
    "L": ["PNG", "JPEG", "BMP", "TIFF", "PPM", "GIF", "WEBP"],
    "LA": ["PNG", "TIFF", "WEBP"],
    "P": ["PNG", "BMP", "TIFF", "GIF"],
    "RGB": ["PNG", "JPEG", "BMP", "TIFF", "PPM", "GIF", "WEBP"],
    "RGBA": ["PNG", "TIFF", "WEBP"],
    "CMYK": ["JPEG", "TIFF"],
    "I;16": ["PNG", "TIFF"],
    "I": ["TIFF"],
    "F": ["TIFF"],
    "YCbCr": ["JPEG"],
}


@st.composite
def odd_images(draw) -> bytes:
    """A valid image of any mode, any size from 1×1 to a thin 1×400, in any format that can hold it,
    sometimes with transparency, several frames, or an EXIF orientation."""
    mode = draw(st.sampled_from(sorted(MODES)))
    fmt = draw(st.sampled_from(MODES[mode]))
    width = draw(st.one_of(st.integers(1, 40), st.sampled_from([1, 2, 400])))
    height = draw(st.one_of(st.integers(1, 40), st.sampled_from([1, 3, 400])))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    base = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    if mode == "P":
        img = base.quantize(draw(st.integers(2, 256)))
    elif mode in ("I;16", "I"):
        img = Image.fromarray(rng.integers(0, 65536, (height, width)).astype(np.uint16 if mode == "I;16" else np.int32))
    elif mode == "F":
        img = Image.fromarray(rng.uniform(-2, 3, (height, width)).astype(np.float32), "F")
    else:
        img = base.convert(mode)
    options: dict[str, object] = {}
    if fmt in ("PNG", "GIF") and mode in ("P", "L", "RGB") and draw(st.booleans()):
        options["transparency"] = 0 if mode != "RGB" else (0, 0, 0)
    if fmt in ("JPEG", "TIFF", "WEBP", "PNG") and draw(st.booleans()):
        exif = Image.Exif()
        exif[0x0112] = draw(st.integers(0, 9))  # 1..8 are orientations; 0 and 9 are invalid ones
        options["exif"] = exif.tobytes()
    if fmt in ("GIF", "PNG", "WEBP", "TIFF") and draw(st.booleans()):
        options.update(save_all=True, append_images=[img.copy()])
    try:
        return encode(img, fmt, **options)
    except (OSError, ValueError, KeyError, TypeError):  # an option this Pillow cannot write with this mode
        return encode(img, fmt)


random_bytes = after_magic(MAGIC, 3000)
any_file = st.one_of(random_bytes, odd_images(), mutated(odd_images()))
specs = st.builds(
    Preprocess,
    size=st.tuples(st.integers(1, 48), st.integers(1, 48)),
    channels=st.sampled_from([1, 3]),
    invert=st.booleans(),
)


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Collection:
    """15 labelled images embedded by a small convolutional autoencoder (trained for one epoch)."""
    from simsearch.training import TrainConfig

    root = tmp_path_factory.mktemp("fuzz")
    write_folder(root / "images")
    collection = Collection(root / "c")
    train = TrainConfig(epochs=1, max_seconds=20, batch_size=8, dim=8, device="cpu")
    index_folder(root / "images", collection, IndexConfig(device="cpu", train=train))
    return collection


@pytest.fixture(scope="module")
def searcher(collection: Collection) -> Searcher:
    return Searcher(collection, use_gpu=False)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-files")


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about corrupt EXIF and TIFF tags
@FUZZ
@given(data=any_file, spec=specs)
def test_the_image_reader_gives_an_image_or_an_image_error(scratch: Path, data: bytes, spec: Preprocess) -> None:
    path = scratch / "fuzz.png"
    path.write_bytes(data)
    found, skipped = find_images(scratch)
    assert len(found) + len(skipped) == 1
    try:
        loaded = load_image(path, spec, "fuzz.png")
    except SimsearchError as exc:
        assert str(exc).startswith("fuzz.png: ")
        return
    assert isinstance(loaded, LoadedImage) and found  # what decodes was also found by its content
    assert loaded.array.shape == (spec.channels, *spec.size) and loaded.array.dtype == np.float32
    assert np.isfinite(loaded.array).all()
    assert loaded.width >= 1 and loaded.height >= 1


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(FUZZ, max_examples=80)
@given(data=any_file, k=st.integers(1, 20))
def test_queries_answer_or_raise_a_simsearch_error(searcher: Searcher, scratch: Path, data: bytes, k: int) -> None:
    path = scratch / "query.png"
    path.write_bytes(data)
    try:
        [result] = searcher.query_files([path], k=k)
    except SimsearchError:
        return
    distances = [n.distance for n in result.neighbours]
    assert len(distances) == min(k, searcher.count)
    assert all(np.isfinite(distances)) and distances == sorted(distances)
    assert result.vote in {"hbars", "vbars", "blob"}


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(FUZZ, max_examples=50)
@given(data=any_file)
def test_the_cli_never_prints_a_traceback(collection: Collection, scratch: Path, data: bytes) -> None:
    path = scratch / "cli.png"
    path.write_bytes(data)
    result = invoke_cleanly(["query", str(path), "--name", str(collection.path), "-k", "3", "--json"], path, 1)
    if result.exit_code == 0:  # at most the channel rule's note (a colour image for the grey model, converted)
        assert all(line.startswith("Note: ") for line in result.stderr.splitlines()) and len(result.stdout) > 0


def invoke_cleanly(args: list[str], path: Path, error_code: int, answers: tuple[int, ...] = (0,)) -> Any:
    """Run the command line on ``args``: it must end without a traceback, and a failure (an exit code not in
    ``answers``) must be exit ``error_code`` with one line on stderr, ``Error: PATH: …``. Returns the result for
    the success checks."""
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code not in answers:
        assert result.exit_code == error_code, result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"Error: {path}: "), result.stderr
    return result


arrays = st.one_of(
    st.tuples(st.integers(0, 3), st.sampled_from([1, 3]), st.integers(1, 20), st.integers(1, 20)),
    st.just((2, 1, 16, 16)),
).flatmap(
    lambda shape: st.tuples(
        st.just(shape),
        st.sampled_from([0.0, 1.0, -1e30, 1e30, float("nan"), float("inf"), -float("inf"), 3.4e38]),
        st.integers(0, 2**16),
    )
)


@FUZZ
@given(case=arrays)
def test_embedding_odd_arrays_gives_finite_results_or_a_simsearch_error(searcher: Searcher, case) -> None:
    shape, special, seed = case
    images = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    if images.size:
        images.flat[seed % images.size] = special
    try:
        results = searcher.query_arrays(images, [f"q{i}" for i in range(len(images))], k=4)
    except SimsearchError:
        return
    assert len(results) == len(images)
    for result in results:
        assert all(np.isfinite(n.distance) for n in result.neighbours)


@pytest.mark.parametrize(("mode", "fmt"), [(mode, fmt) for mode, formats in MODES.items() for fmt in formats])
def test_every_odd_image_the_fuzzer_makes_is_read(searcher: Searcher, tmp_path: Path, mode: str, fmt: str) -> None:
    """The control for the fuzzers above: their valid images really are valid, and answer queries."""
    grey = pattern("blob", np.random.default_rng(0))
    if mode == "I;16":
        img = Image.fromarray(grey.astype(np.uint16) * 257)
    elif mode in ("I", "F"):
        img = Image.fromarray(grey.astype(np.int32 if mode == "I" else np.float32) / (1 if mode == "I" else 255.0))
        img = img.convert(mode)
    else:
        img = Image.fromarray(grey).convert("RGB").convert(mode)
    path = tmp_path / "odd"
    path.write_bytes(encode(img, fmt))
    loaded = load_image(path, searcher.encoder.preprocess)
    assert loaded is not None and (loaded.width, loaded.height) == (16, 16)
    [result] = searcher.query_files([path], k=3)
    assert len(result.neighbours) == 3 and all(np.isfinite(n.distance) for n in result.neighbours)


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(FUZZ, max_examples=80)
@given(data=any_file, convert=st.booleans())
def test_verify_decides_or_raises_a_simsearch_error(
    searcher: Searcher, scratch: Path, data: bytes, convert: bool
) -> None:
    from simsearch.verification import Verifier, operating_point

    path = scratch / "verify.png"
    path.write_bytes(data)
    good = next(Path(searcher.meta.column("root")[0].as_py()).rglob("*.png"))
    verifier = Verifier(searcher.encoder, convert=convert)
    point = operating_point(searcher.encoder, "1.0")
    try:
        verdict = verifier.verify(path, good, point)
    except SimsearchError:
        return
    assert np.isfinite(verdict.distance) and verdict.distance >= 0
    assert verdict.match == (verdict.distance <= 1.0 and not verdict.unfamiliar)  # an unfamiliar input never matches


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(FUZZ, max_examples=40)
@given(data=any_file)
def test_the_verify_command_never_prints_a_traceback(collection: Collection, scratch: Path, data: bytes) -> None:
    path = scratch / "verify-cli.png"
    path.write_bytes(data)
    args = ["verify", str(path), str(path), "--name", str(collection.path), "--threshold", "0.5", "--json"]
    result = invoke_cleanly(args, path, 2, answers=(0, 1))
    if result.exit_code == 0:  # an image compared with itself is at distance 0: a match
        assert result.stderr == "" and '"match": true' in result.stdout
    if result.exit_code == 1:  # … unless it is unlike the training images: then never a match, and said why
        answer = json.loads(result.stdout)
        assert (
            answer["match"] is False and answer["unfamiliar"] == [str(path)] and "unfamiliar input" in answer["reason"]
        )
