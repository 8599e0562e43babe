"""``simsearch stability``: the rank function on matrices of known rank, the unfoldings, the noise list, and the
exact facts of a measurement (no noise: nothing moves, every neighbour kept, no rank changes) on tiny models."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from simsearch.errors import DataError, UsageError
from simsearch.io import Preprocess
from simsearch.latent.stability import (
    add_noise,
    embed_with_features,
    knn_overlap,
    latent_ranks,
    max_ranks,
    measure,
    nearest_clean,
    normalise,
    numerical_rank,
    parse_noise,
    pixel_spec,
    stability_of_folder,
    to_pixels,
    unfoldings,
)
from simsearch.models.encoder import Encoder
from tests.conftest import write_folder
from tests.helpers import error_lines, invoke


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny autoencoder and a tiny Siamese model (8-d, 3 epochs) on 24 generated 16×16 images, and the images."""
    from simsearch.training import TrainConfig, train_on_folder

    root = tmp_path_factory.mktemp("stability")
    write_folder(root / "images", per_class=8)
    config = TrainConfig(epochs=3, max_seconds=120, batch_size=8, dim=8, device="cpu", folds=1)
    paths = {"images": root / "images"}
    for family in ("autoencoder", "siamese"):
        paths[family] = root / family
        train_on_folder(root / "images", replace(config, family=family)).save(paths[family])
    return paths


def pixels_of(folder: Path, encoder: Encoder) -> np.ndarray:
    from simsearch.io import find_images
    from simsearch.latent.stability import load_pixels

    entries, _ = find_images(folder)
    pixels, kept = load_pixels([e.path for e in entries], [e.rel for e in entries], encoder.preprocess)
    assert len(kept) == len(entries)
    return pixels


# --- ranks ------------------------------------------------------------------------------------------------------


def test_numerical_rank_of_matrices_of_known_rank() -> None:
    rng = np.random.default_rng(0)
    for m, n in ((7, 7), (5, 12), (30, 4)):
        for r in range(min(m, n) + 1):
            a = rng.standard_normal((m, r)) @ rng.standard_normal((r, n))
            assert numerical_rank(a) == r
            assert numerical_rank(a.astype(np.float32)) == r
    stack = np.stack([np.eye(6), np.zeros((6, 6)), np.diag([1.0, 2, 3, 0, 0, 0]), np.ones((6, 6))])
    np.testing.assert_array_equal(numerical_rank(stack), [6, 0, 3, 1])
    assert numerical_rank(np.array([[1, 2], [2, 4]])) == 1  # integers: float64's epsilon
    assert numerical_rank(np.diag([1.0, 1e-3])) == 2
    assert numerical_rank(np.diag([1.0, 1e-3]), rtol=1e-2) == 1  # below rtol × the largest singular value
    assert numerical_rank(np.zeros((3, 0))) == 0
    with pytest.raises(ValueError):
        numerical_rank(np.ones(3))


def test_unfoldings_and_their_ranks() -> None:
    rng = np.random.default_rng(1)
    c, h, w = 5, 3, 4
    x = rng.standard_normal((2, c, h, w))
    modes = unfoldings(x)
    assert modes["channels"].shape == (2, c, h * w)
    assert modes["height"].shape == (2, h, c * w)
    assert modes["width"].shape == (2, w, c * h)
    assert modes["channels"][1, 3, 2 * w + 1] == x[1, 3, 2, 1]
    assert modes["height"][1, 2, 3 * w + 1] == x[1, 3, 2, 1]
    assert modes["width"][1, 1, 3 * h + 2] == x[1, 3, 2, 1]
    # An outer product a ⊗ b ⊗ d has rank 1 in every unfolding; a generic tensor has each unfolding's full rank.
    outer = np.einsum("i,j,k->ijk", *(rng.standard_normal(s) for s in (c, h, w)))[None]
    assert {mode: int(r[0]) for mode, r in latent_ranks(outer).items()} == {"channels": 1, "height": 1, "width": 1}
    assert (
        {mode: int(r[0]) for mode, r in latent_ranks(x[:1]).items()}
        == max_ranks((c, h, w))
        == {
            "channels": 5,
            "height": 3,
            "width": 4,
        }
    )
    # Two channels switched off (a ReLU map with dead units): the channel unfolding loses them, H and W keep theirs.
    off = x[:1].copy()
    off[0, :2] = 0
    assert {mode: int(r[0]) for mode, r in latent_ranks(off).items()} == {"channels": 3, "height": 3, "width": 4}


# --- the noise --------------------------------------------------------------------------------------------------


def test_parse_noise() -> None:
    assert parse_noise("0.05,0.1,0.2") == (0.05, 0.1, 0.2)
    assert parse_noise(" 0.2, 0 ,0.2,1") == (0.0, 0.2, 1.0)
    for bad in ("", "0.1,", "abc", "-0.1", "1.5", "nan", "inf", "0.1;0.2"):
        with pytest.raises(UsageError):
            parse_noise(bad)


def test_noise_is_added_in_pixel_space_and_clipped() -> None:
    spec = Preprocess(size=(2, 2), mean=(0.5,), std=(0.25,))
    pixels = np.array([[[[0.0, 0.5], [1.0, 0.25]]]], np.float32)
    draw = np.array([[[[-1.0, 1.0], [1.0, -1.0]]]], np.float32)
    np.testing.assert_allclose(add_noise(pixels, 0.1, draw), [[[[0.0, 0.6], [1.0, 0.15]]]], atol=1e-7)
    np.testing.assert_array_equal(add_noise(pixels, 0.0, draw), pixels)
    np.testing.assert_allclose(normalise(pixels, spec), (pixels - 0.5) / 0.25)
    np.testing.assert_allclose(to_pixels(normalise(pixels, spec), spec), pixels, atol=1e-7)
    assert pixel_spec(replace(spec, invert=True, resize="trim")) == Preprocess(
        size=(2, 2), invert=True, resize="trim", mean=(0.0,), std=(1.0,)
    )


# --- measuring --------------------------------------------------------------------------------------------------


def test_the_hook_catches_the_feature_map_before_the_head(models: dict[str, Path]) -> None:
    import torch

    encoder = Encoder.load(models["autoencoder"])
    x = normalise(pixels_of(models["images"], encoder), encoder.preprocess)
    z, features = embed_with_features(encoder, x, batch_size=7)  # several batches
    np.testing.assert_array_equal(z, encoder.embed(x, batch_size=7))  # what embed gives, batch for batch
    assert features is not None and features.shape == (len(x), *encoder.module.feature_shape)
    with torch.inference_mode():
        expected = encoder.module.features(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(features, expected, atol=1e-4)  # the BatchNorm-folded copy: equal to rounding


def test_no_noise_moves_nothing_and_keeps_every_neighbour(models: dict[str, Path]) -> None:
    encoder = Encoder.load(models["autoencoder"])
    pixels = pixels_of(models["images"], encoder)
    n = len(pixels)
    result = measure(encoder, pixels, noise=(0.0, 0.3), k=4, seed=3)
    assert (result.images, result.k, result.family, result.metric) == (n, 4, "autoencoder", "l2")
    assert result.feature_shape == tuple(encoder.module.feature_shape)
    zero, noisy = result.levels
    assert zero.sigma == 0.0 and zero.movement == 0.0 and zero.median_shift == 0.0
    assert zero.knn_overlap == 1.0
    assert zero.ranks_changed == 0.0 and zero.input_psnr is None
    assert zero.psnr == result.clean_psnr and result.clean_psnr is not None
    assert result.clean_ranks is not None and zero.ranks is not None
    for mode, clean in result.clean_ranks.items():
        assert zero.ranks[mode].counts == clean.counts and zero.ranks[mode].changed == 0.0
        assert sum(clean.counts) == sum(noisy.ranks[mode].counts) == n  # type: ignore[index]
        assert len(clean.counts) == max_ranks(result.feature_shape)[mode] + 1
    # Real noise moves every embedding a little, and the overlap is a share of k.
    assert noisy.movement > 0 and noisy.median_shift > 0
    assert 0 <= noisy.knn_overlap <= 1 and (noisy.knn_overlap * n * 4) % 1 == pytest.approx(0, abs=1e-9)
    assert noisy.input_psnr is not None and noisy.psnr is not None
    # The same seed gives the same figures; the JSON has them.
    again = measure(encoder, pixels, noise=(0.0, 0.3), k=4, seed=3)
    assert again.to_json() == result.to_json()
    json.dumps(result.to_json())
    # A coarser rank tolerance counts fewer singular values, never more; the other figures do not depend on it.
    coarse = measure(encoder, pixels, noise=(0.0, 0.3), k=4, seed=3, rtol=0.5)
    assert coarse.rank_rtol == 0.5 and coarse.clean_ranks is not None
    for mode in result.clean_ranks:
        assert coarse.clean_ranks[mode].mean <= result.clean_ranks[mode].mean
    assert [lv.movement for lv in coarse.levels] == [lv.movement for lv in result.levels]


def test_neighbours_leave_the_image_itself_out() -> None:
    z = np.array([[0.0], [1.0], [3.0], [10.0]], np.float32)
    np.testing.assert_array_equal(nearest_clean(z, z, 2, "l2"), [[1, 2], [0, 2], [1, 0], [2, 1]])
    shifted = z + np.array([[0.0], [0.0], [6.5], [0.0]], np.float32)  # image 2 lands nearer image 3
    assert knn_overlap(nearest_clean(z, z, 2, "l2"), nearest_clean(shifted, z, 2, "l2")) == pytest.approx(7 / 8)


def test_baselines_have_no_ranks_nor_reconstruction(models: dict[str, Path]) -> None:
    from simsearch.training import pixels_encoder

    encoder = pixels_encoder(Preprocess(size=(16, 16), channels=1))
    result = measure(encoder, pixels_of(models["images"], encoder), noise=(0.0, 0.1), k=3)
    assert result.feature_shape is None and result.clean_ranks is None and result.clean_psnr is None
    assert result.levels[0].movement == 0.0 and result.levels[0].knn_overlap == 1.0
    # Raw pixels: an image moves by exactly the noise that was added (after clipping).
    assert result.levels[1].ranks is None and result.levels[1].psnr is None and result.levels[1].movement > 0


def test_measure_refuses_images_that_do_not_fit(models: dict[str, Path]) -> None:
    encoder = Encoder.load(models["autoencoder"])
    with pytest.raises(DataError, match="takes"):
        measure(encoder, np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(DataError, match="at least 2"):
        measure(encoder, np.zeros((1, 1, 16, 16), np.float32))
    with pytest.raises(UsageError, match="no model"):
        stability_of_folder(models["images"], [])


# --- the command ------------------------------------------------------------------------------------------------


def test_command_compares_models_and_writes_a_report(models: dict[str, Path], tmp_path: Path) -> None:
    report = tmp_path / "report"
    args = ["stability", models["images"], "--model", models["autoencoder"], "--model", models["siamese"]]
    result = invoke(*args, "--noise", "0,0.2", "--k", "3", "--json", "--report", report)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [m["family"] for m in data["models"]] == ["autoencoder", "siamese"]
    assert data["noise"] == [0.0, 0.2] and data["k"] == 3 and data["images"] == 24
    for model in data["models"]:
        assert model["levels"][0]["movement"] == 0 and model["levels"][0]["knn_overlap"] == 1
    assert data["models"][0]["clean_psnr"] is not None and data["models"][1]["clean_psnr"] is None
    names = {p.name for p in report.iterdir()}
    assert {"report.html", "movement.png", "knn.png", "psnr.png"} <= names
    assert sum(name.startswith("ranks-") for name in names) == 2
    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(names) - 1  # self-contained: every figure inlined
    text = invoke(*args, "--noise", "0.1", "--max-images", "10")
    assert text.exit_code == 0, text.stderr
    assert "10 images measured (24 found" in text.stdout and "ranks C/H/W" in text.stdout


@pytest.mark.parametrize(
    ("extra", "code", "words"),
    [
        ([], 2, "no model to measure"),
        (["--model", "MODEL", "--noise", "0.1,big"], 2, "is not a noise level"),
        (["--model", "MODEL", "--noise", "-0.1"], 2, "is not a noise level"),
        (["--model", "nowhere"], 1, "no model folder at 'nowhere'"),
        (["--model", "MODEL", "--rank-tol", "1.5"], 2, "--rank-tol must be at least 0 and below 1"),
    ],
)
def test_command_refuses_with_one_line(models: dict[str, Path], extra: list[str], code: int, words: str) -> None:
    extra = [str(models["autoencoder"]) if a == "MODEL" else a for a in extra]
    result = invoke("stability", models["images"], *extra)
    assert result.exit_code == code
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], lines


def test_command_refuses_a_folder_it_cannot_read(models: dict[str, Path], tmp_path: Path) -> None:
    for folder, words in (
        (tmp_path / "missing", "does not exist"),
        (models["autoencoder"] / "encoder.json", "not a folder"),
    ):
        result = invoke("stability", folder, "--model", models["autoencoder"])
        assert result.exit_code == 1
        lines = error_lines(result)
        assert len(lines) == 1 and words in lines[0], lines
    (tmp_path / "empty").mkdir()
    result = invoke("stability", tmp_path / "empty", "--model", models["autoencoder"])
    assert result.exit_code == 1 and "no images found" in error_lines(result)[0]


def test_noise_is_added_to_the_intensities_and_the_model_gets_them_with_its_gamma() -> None:
    spec = Preprocess(size=(4, 4), channels=1, mean=(0.3,), std=(0.5,), gamma=0.5)
    assert pixel_spec(spec).gamma == 1.0 and pixel_spec(spec).mean == (0.0,)
    x = np.random.default_rng(0).random((2, 1, 4, 4), dtype=np.float32)
    np.testing.assert_allclose(normalise(x, spec), (np.sqrt(x) - 0.3) / 0.5, atol=1e-6)
    np.testing.assert_allclose(to_pixels(normalise(x, spec), spec), x, atol=1e-5)
