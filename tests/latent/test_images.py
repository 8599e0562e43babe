"""What a decoder makes: reconstruct, interpolate, sample and denoise (library and command line), the display helper
that undoes the preprocessing, the grids, and every refusal's one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simsearch.io import Preprocess, load_images
from simsearch.latent.images import (
    CAPTION_HEIGHT,
    GAP,
    Cell,
    draw_grid,
    from_unit,
    interpolate,
    read_images,
    reconstruct,
    sample,
    tile_scale,
    to_pixels,
    to_unit,
)
from simsearch.models.encoder import Encoder
from tests.conftest import write_folder
from tests.helpers import error_lines, invoke

FORMAT1 = Path(__file__).resolve().parents[1] / "models" / "fixtures" / "format1-autoencoder" / "model"
SCALE = 4  # 16×16 inputs are drawn at 64×64


def train_model(images: Path, family: str, out: Path, epochs: int) -> Path:
    """A tiny model of ``family`` trained on ``images`` for ``epochs`` (dim 8, CPU: a second or two), saved at
    ``out``."""
    from simsearch.training import TrainConfig, train_on_folder

    config = TrainConfig(family=family, epochs=epochs, max_seconds=60, batch_size=8, dim=8, device="cpu", seed=0)
    train_on_folder(images, config).save(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Images (hbars, vbars, blob: 8 of each, 16×16 grey) and an autoencoder, a vae and a siamese model trained on
    them, once for the module."""
    root = tmp_path_factory.mktemp("latent-images")
    write_folder(root / "images", per_class=8)
    return {
        "images": root / "images",
        "autoencoder": train_model(root / "images", "autoencoder", root / "ae", epochs=6),
        "vae": train_model(root / "images", "vae", root / "vae", epochs=4),
        "siamese": train_model(root / "images", "siamese", root / "sia", epochs=1),
    }


def tiles(path: Path, rows: int, columns: int, captioned: bool = True) -> list[list[np.ndarray]]:
    """The tiles of a grid PNG of 16×16 inputs drawn at ``SCALE``, each reduced back to 16×16 (grey)."""
    image = np.asarray(Image.open(path).convert("L"))
    side, band = 16 * SCALE, CAPTION_HEIGHT if captioned else 0
    assert image.shape == (GAP + rows * (side + band + GAP), GAP + columns * (side + GAP))
    out = []
    for r in range(rows):
        top = GAP + r * (side + band + GAP)
        out.append(
            [
                image[top : top + side : SCALE, GAP + c * (side + GAP) : GAP + c * (side + GAP) + side : SCALE]
                for c in range(columns)
            ]
        )
    return out


# --- the display helper and grids -------------------------------------------------------------------------------


def test_to_pixels_undoes_the_preprocessing_inversion_included(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    colour = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(colour).save(tmp_path / "c.png")
    for path, pixels, spec in (
        (tmp_path / "g.png", grey, Preprocess(size=(16, 16), channels=1, invert=True, mean=(0.3,), std=(0.2,))),
        (tmp_path / "c.png", colour, Preprocess(size=(16, 16), channels=3, mean=(0.1, 0.5, 0.9), std=(0.5, 1, 2))),
        (tmp_path / "g.png", grey, Preprocess(size=(16, 16), channels=1, invert=True, mean=(0.3,), gamma=0.5)),
    ):
        (item,) = load_images([path], spec)
        array = item.array[None]  # type: ignore[union-attr]
        np.testing.assert_array_equal(to_pixels(array, spec), pixels[None])
        np.testing.assert_allclose(from_unit(to_unit(array, spec), spec), array, atol=1e-5)
    spec = Preprocess(size=(2, 2), channels=1, mean=(0.5,), std=(0.25,))
    beyond = np.array([[[[-5.0, 5.0], [0.0, -2.0]]]], np.float32)  # 0.5 + 0.25·x: clipped to 0 and 255
    np.testing.assert_array_equal(to_pixels(beyond, spec), [[[0, 255], [128, 0]]])


def test_a_grid_places_tiles_by_the_documented_layout() -> None:
    assert tile_scale((16, 16)) == 4 and tile_scale((61, 128)) == 2 and tile_scale((64, 64)) == 1
    a, b = np.zeros((3, 5), np.uint8), np.full((3, 5), 200, np.uint8)
    grid = draw_grid([[Cell(a, "a"), Cell(b)], [Cell(b)]], (3, 5), scale=2)
    # 2 columns of 10-pixel-wide tiles; a caption band under the first row only
    assert grid.image.size == (GAP + 2 * (10 + GAP), GAP + (6 + CAPTION_HEIGHT + GAP) + (6 + GAP))
    assert grid.boxes[0][1] == (GAP + 10 + GAP, GAP, GAP + 10 + GAP + 10, GAP + 6)
    left, top, right, bottom = grid.boxes[1][0]  # type: ignore[misc]
    assert top == GAP + 6 + CAPTION_HEIGHT + GAP
    assert (np.asarray(grid.image)[top:bottom, left:right] == 200).all()


# --- reconstruct -----------------------------------------------------------------------------------------------


def test_reconstruct_draws_inputs_above_reconstructions_with_their_errors(
    models: dict[str, Path], tmp_path: Path
) -> None:
    files = [models["images"] / kind / "1.png" for kind in ("hbars", "vbars", "blob")]
    out = tmp_path / "grid.png"
    result = invoke("reconstruct", *files, "--model", models["autoencoder"], "--out", out, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    reported = json.loads(result.stdout)
    encoder = Encoder.load(models["autoencoder"])
    inputs = read_images(encoder, files)
    decoded, errors = reconstruct(encoder, inputs.arrays)
    assert [i["path"] for i in reported["images"]] == [str(f) for f in files]
    np.testing.assert_allclose([i["error"] for i in reported["images"]], errors, rtol=1e-5)
    np.testing.assert_allclose(errors, encoder.reconstruction_errors(inputs.arrays), rtol=1e-5)
    manual = ((decoded.astype(np.float64) - inputs.arrays) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(errors, manual, rtol=1e-5)
    # The grid: 3 columns × 2 rows of the model's input size (×4), the inputs above, their reconstructions below
    grid = tiles(out, rows=2, columns=3)
    for n in range(3):
        np.testing.assert_array_equal(grid[0][n], to_pixels(inputs.arrays, encoder.preprocess)[n])
        np.testing.assert_array_equal(grid[1][n], to_pixels(decoded, encoder.preprocess)[n])
    text = invoke("reconstruct", *files, "--model", models["autoencoder"], "--out", out, "--device", "cpu")
    assert text.exit_code == 0 and "Wrote" in text.stdout and f"{errors[0]:.5g}" in text.stdout


def test_reconstruct_wraps_a_folder_into_pairs_of_rows_and_takes_a_collections_encoder(
    models: dict[str, Path], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    indexed = invoke(
        "index", models["images"] / "blob", "--model", models["autoencoder"], "--home", home, "--name", "c"
    )
    assert indexed.exit_code == 0, indexed.output
    out = tmp_path / "g.png"
    result = invoke(
        "reconstruct", models["images"] / "blob", "--name", "c", "--home", home, "--out", out, "--columns", "3"
    )
    assert result.exit_code == 0, result.output
    tiles(out, rows=6, columns=3)  # 8 images, 3 a row: 3 pairs of rows


def test_colour_images_are_converted_for_a_grey_model(models: dict[str, Path], tmp_path: Path) -> None:
    grey = np.asarray(Image.open(models["images"] / "blob" / "0.png"))
    Image.fromarray(np.stack([grey] * 3, axis=2)).save(tmp_path / "rgb.png")
    result = invoke(
        "reconstruct", tmp_path / "rgb.png", "--model", models["autoencoder"], "--out", tmp_path / "g.png", "--json"
    )
    assert result.exit_code == 0, result.output
    direct = invoke(
        "reconstruct",
        models["images"] / "blob" / "0.png",
        "--model",
        models["autoencoder"],
        "--out",
        tmp_path / "h.png",
        "--json",
    )
    errors = [json.loads(r.stdout)["images"][0]["error"] for r in (result, direct)]
    assert errors[0] == pytest.approx(errors[1], rel=1e-4)


# --- interpolate ------------------------------------------------------------------------------------------------


def test_interpolation_ends_are_the_two_reconstructions(models: dict[str, Path], tmp_path: Path) -> None:
    a, b = models["images"] / "hbars" / "0.png", models["images"] / "blob" / "0.png"
    encoder = Encoder.load(models["vae"])
    inputs = read_images(encoder, [a, b])
    path = interpolate(encoder, inputs.arrays[0], inputs.arrays[1], steps=5)
    decoded, _ = reconstruct(encoder, inputs.arrays)
    assert path.shape == (5, 1, 16, 16)
    np.testing.assert_allclose(path[0], decoded[0], atol=1e-4)
    np.testing.assert_allclose(path[-1], decoded[1], atol=1e-4)
    assert not np.allclose(path[2], path[0], atol=1e-3) and not np.allclose(path[2], path[-1], atol=1e-3)
    out = tmp_path / "strip.png"
    result = invoke("interpolate", a, b, "--model", models["vae"], "--steps", "5", "--out", out)
    assert result.exit_code == 0, result.output
    (row,) = tiles(out, rows=1, columns=7)  # A, 5 decoded points, B
    np.testing.assert_array_equal(row[0], to_pixels(inputs.arrays, encoder.preprocess)[0])
    np.testing.assert_array_equal(row[-1], to_pixels(inputs.arrays, encoder.preprocess)[1])
    for n in range(5):
        assert np.abs(row[1 + n].astype(int) - to_pixels(path, encoder.preprocess)[n]).max() <= 1
    bad = invoke("interpolate", a, b, "--model", models["vae"], "--steps", "1", "--out", out)
    assert bad.exit_code == 2


# --- sample -----------------------------------------------------------------------------------------------------


def test_vae_samples_are_deterministic_per_seed_and_differ_between_seeds(
    models: dict[str, Path], tmp_path: Path
) -> None:
    encoder = Encoder.load(models["vae"])
    first, again, other = sample(encoder, 6, seed=0), sample(encoder, 6, seed=0), sample(encoder, 6, seed=1)
    np.testing.assert_array_equal(first, again)
    assert first.shape == (6, 1, 16, 16) and not np.allclose(first, other)
    # What is decoded is a draw of N(0, I), the prior the decoder was trained against (the embedding is μ)
    z = np.random.default_rng(0).standard_normal((6, encoder.dim)).astype(np.float32)
    np.testing.assert_array_equal(first, encoder.decode(z))
    outs = [tmp_path / f"{name}.png" for name in ("a", "b", "c")]
    for out, seed in zip(outs, (0, 0, 1), strict=True):
        result = invoke("sample", "--model", models["vae"], "-n", "16", "--seed", seed, "--out", out)
        assert result.exit_code == 0, result.output
    assert outs[0].read_bytes() == outs[1].read_bytes() != outs[2].read_bytes()
    tiles(outs[0], rows=4, columns=4, captioned=False)
    result = invoke("sample", "--model", models["vae"], "-n", "5", "--out", outs[0])
    assert result.exit_code == 0
    tiles(outs[0], rows=2, columns=3, captioned=False)


# --- denoise ----------------------------------------------------------------------------------------------------


def test_denoise_writes_one_png_per_input(models: dict[str, Path], tmp_path: Path) -> None:
    files = [models["images"] / "vbars" / "2.png", models["images"] / "blob" / "3.png"]
    out = tmp_path / "clean"
    result = invoke("denoise", *files, "--model", models["autoencoder"], "--out", out)
    assert result.exit_code == 0, result.output
    assert "was not trained to denoise" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [".simsearch-denoise.json", "2.png", "3.png"]
    encoder = Encoder.load(models["autoencoder"])
    decoded, _ = reconstruct(encoder, read_images(encoder, files).arrays)
    for n, name in enumerate(("2.png", "3.png")):
        np.testing.assert_array_equal(np.asarray(Image.open(out / name)), to_pixels(decoded, encoder.preprocess)[n])
    # Again, into the same folder, with noise: the earlier outputs are replaced and the noisy inputs written too
    result = invoke("denoise", *files, "--model", models["autoencoder"], "--out", out, "--noise", "0.2", "--json")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".png") == [
        "2.noisy.png",
        "2.png",
        "3.noisy.png",
        "3.png",
    ]
    noisy = np.asarray(Image.open(out / "2.noisy.png")).astype(int)
    clean = np.asarray(Image.open(files[0])).astype(int)
    assert noisy.shape == (16, 16) and 20 < np.abs(noisy - clean).mean() < 60  # σ = 0.2 of 255, clipped
    reported = json.loads(result.stdout)
    assert reported["trained_to_denoise"] is False and reported["images"][0]["noisy"] == str(out / "2.noisy.png")
    # A folder keeps its images' paths under it; a denoising model says nothing about not being trained to denoise
    ae = Encoder.load(models["autoencoder"])
    Encoder("denoising", ae.arch, ae.preprocess, ae.module, decoder=ae.decoder).save(tmp_path / "dae")
    result = invoke("denoise", models["images"] / "blob", "--model", tmp_path / "dae", "--out", tmp_path / "d")
    assert result.exit_code == 0, result.output
    assert "not trained to denoise" not in result.stdout
    assert sorted(p.name for p in (tmp_path / "d").glob("*.png")) == [f"{i}.png" for i in range(8)]
    result = invoke("denoise", models["images"], "--model", tmp_path / "dae", "--out", tmp_path / "e")
    assert result.exit_code == 0 and len(list((tmp_path / "e").glob("*/*.png"))) == 24  # hbars/0.png …


def test_denoise_replaces_neither_inputs_nor_files_it_did_not_write(models: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(models["images"] / "hbars", tmp_path / "hbars")
    theirs = tmp_path / "other"
    theirs.mkdir()
    (theirs / "0.png").write_bytes(b"the user's own file")
    for out, line in (
        (
            tmp_path / "hbars",
            f"Error: '{tmp_path / 'hbars' / '0.png'}' is one of the input images and would be replaced — choose another --out folder",
        ),
        (
            theirs,
            f"Error: '{theirs / '0.png'}' exists and was not written by denoise — simsearch will not replace it; choose a new --out folder",
        ),
    ):
        result = invoke("denoise", tmp_path / "hbars" / "0.png", "--model", models["autoencoder"], "--out", out)
        assert result.exit_code == 2 and error_lines(result) == [line]
    assert (theirs / "0.png").read_bytes() == b"the user's own file"
    same = invoke(
        "denoise",
        models["images"] / "hbars" / "0.png",
        models["images"] / "blob" / "0.png",
        "--model",
        models["autoencoder"],
        "--out",
        tmp_path / "x",
    )
    assert same.exit_code == 2 and "would both be written as" in error_lines(same)[0]


# --- refusals ---------------------------------------------------------------------------------------------------


def test_models_without_a_decoder_are_refused_with_one_line(models: dict[str, Path], tmp_path: Path) -> None:
    image = models["images"] / "hbars" / "0.png"
    out = tmp_path / "o.png"
    siamese = models["siamese"]
    train_one = "train one with --family autoencoder (or denoising, vae)"
    for args, line in (
        (
            ("reconstruct", image, "--out", out),
            f"the siamese family has no decoder: reconstruct needs an autoencoder, denoising or vae model — {train_one}",
        ),
        (
            ("interpolate", image, image, "--out", out),
            f"the siamese family has no decoder: interpolate needs an autoencoder, denoising or vae model — {train_one}",
        ),
        (
            ("denoise", image, "--out", tmp_path / "d"),
            f"the siamese family has no decoder: denoise needs an autoencoder, denoising or vae model — {train_one}",
        ),
        (
            ("sample", "--out", out),
            "the siamese family has no decoder: sample needs a vae model — train one with --family vae",
        ),
    ):
        result = invoke(*args, "--model", siamese)
        assert result.exit_code == 1 and error_lines(result) == [f"Error: {line}"], result.output
    result = invoke("sample", "--model", models["autoencoder"], "--out", out)
    assert error_lines(result) == [
        "Error: an autoencoder model has no prior to sample from — use interpolate, or train --family vae"
    ]
    result = invoke("reconstruct", image, "--model", FORMAT1, "--out", out)
    assert error_lines(result) == [
        f"Error: {FORMAT1}: this autoencoder model was saved without its decoder (a format-1 folder, made before "
        "decoders were kept) — re-train it with --family autoencoder to keep one"
    ]
    assert not out.exists() and not (tmp_path / "d").exists()


def test_bad_sources_and_images_are_one_line(models: dict[str, Path], tmp_path: Path) -> None:
    image = models["images"] / "hbars" / "0.png"
    out = tmp_path / "o.png"
    home = tmp_path / "home"
    assert invoke("index", models["images"] / "blob", "--model", "pixels", "--home", home, "--name", "c").exit_code == 0
    (tmp_path / "text.png").write_text("not an image")
    cases = (
        (
            ("reconstruct", image, "--model", home / "c"),
            f"Error: '{home / 'c'}' is a collection, not a model folder — pass it as --name {home / 'c'} to use its encoder",
        ),
        (
            ("reconstruct", image, "--model", tmp_path / "none"),
            f"Error: no model folder at '{tmp_path / 'none'}' — pass a model folder made by training",
        ),
        (
            ("reconstruct", image, "--name", "c", "--home", home),
            "Error: the pixels family has no decoder: reconstruct needs an autoencoder, denoising or vae model — train one with --family autoencoder (or denoising, vae)",
        ),
        (
            ("reconstruct", tmp_path / "missing.png", "--model", models["autoencoder"]),
            f"Error: {tmp_path / 'missing.png'}: no such image file or folder — check the path",
        ),
        (
            ("reconstruct", image, "--model", models["autoencoder"], "--name", "c"),
            "Error: give either --model (a model folder) or --name (a collection), not both",
        ),
        (
            ("reconstruct", image, "--model", models["autoencoder"], "--out", image),
            f"Error: '{image}' is one of the input images — choose another --out file",
        ),
    )
    for args, line in cases:
        result = invoke(*args, *(() if "--out" in args else ("--out", out)))
        assert result.exit_code in (1, 2) and error_lines(result) == [line], result.output
    result = invoke("reconstruct", tmp_path / "text.png", "--model", models["autoencoder"], "--out", out)
    assert result.exit_code == 1 and len(error_lines(result)) == 1
    assert error_lines(result)[0].startswith(f"Error: {tmp_path / 'text.png'}: ")
    assert not out.exists()
