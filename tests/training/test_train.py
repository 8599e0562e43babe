"""Training: input-spec choice, the generic loop, PCA against scikit-learn."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from simsearch.errors import DataError, UsageError
from simsearch.io import Preprocess, find_images
from simsearch.models.encoder import Encoder
from simsearch.training import (
    TrainConfig,
    choose_size,
    fit_pca,
    parse_size,
    train_encoder,
    train_neural,
    train_on_folder,
)


def test_parse_size() -> None:
    assert parse_size("auto") is None
    assert parse_size("28x32") == (28, 32)
    assert parse_size("64") == (64, 64)
    for bad in ("0x4", "axb", "1x2x3", "5000x5000"):
        with pytest.raises(UsageError):
            parse_size(bad)


def test_choose_size_keeps_aspect_and_never_upscales() -> None:
    assert choose_size(8, 8, 64) == (8, 8)
    assert choose_size(28, 28, 64) == (28, 28)
    assert choose_size(105, 105, 64) == (64, 64)
    assert choose_size(112, 92, 64) == (64, 53)
    assert choose_size(200, 300, 64) == (43, 64)
    # More than twice as wide as tall (a signature): the long side may reach 128, so the short keeps ≥ 32.
    assert choose_size(120, 300, 64) == (51, 128)
    assert choose_size(320, 670, 64) == (61, 128)
    assert choose_size(30, 70, 64) == (30, 70)  # never upscaled


def test_auto_resize_trims_ink_on_paper_and_letterboxes_the_rest(tmp_path: Path) -> None:
    from PIL import Image

    from simsearch.io import find_images
    from simsearch.training.train import load_training_images

    for name, background, ink in (("paper", 255, 0), ("night", 0, 255)):
        folder = tmp_path / name / "a"
        folder.mkdir(parents=True)
        for i in range(3):
            image = Image.new("L", (60, 40), background)
            image.paste(ink, (10 + i, 10, 30, 14))
            image.save(folder / f"{i}.png")
        entries, _ = find_images(tmp_path / name)
        _, _, spec = load_training_images(entries, TrainConfig(family="pca"))
        assert spec.resize == ("trim" if name == "paper" else "letterbox")
        assert spec.invert == (name == "paper")
        _, _, spec = load_training_images(entries, TrainConfig(family="pca", resize="letterbox"))
        assert spec.resize == "letterbox"


def test_config_is_validated() -> None:
    with pytest.raises(UsageError, match="family"):
        TrainConfig(family="gan")
    with pytest.raises(UsageError, match=r"^dim must be at least 1"):
        TrainConfig(dim=0)


def record_validations(
    monkeypatch: pytest.MonkeyPatch, scores: list[float] | None = None
) -> list[tuple[float, dict[str, torch.Tensor]]]:
    """Make every autoencoder validation also record (score, a copy of the weights it scored): the weights of
    the model being trained (``encoder.*`` and ``decoder.*``), as validated (with ``--ema``, the average). With
    ``scores``, the validations return those scores, in turn, instead of their own."""
    from simsearch.training.objectives import Reconstruction

    seen: list[tuple[float, dict[str, torch.Tensor]]] = []
    validate = Reconstruction.validate
    scripted = iter(scores) if scores is not None else None

    def recording(self: Reconstruction) -> float:
        score = validate(self)
        if scripted is not None:
            score = next(scripted)
        seen.append((score, {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}))
        return score

    monkeypatch.setattr(Reconstruction, "validate", recording)
    return seen


def kept_weights(encoder: Encoder, folder: Path) -> dict[str, torch.Tensor]:
    """The weights an encoder's saved model folder holds, named as in the autoencoder being trained."""
    from safetensors.torch import load_file

    encoder.save(folder)
    weights = {f"encoder.{k}": v for k, v in load_file(str(folder / "weights.safetensors")).items()}
    return weights | {f"decoder.{k}": v for k, v in load_file(str(folder / "decoder.safetensors")).items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_autoencoder_learns_and_keeps_best_weights(
    fast_train: TrainConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen = record_validations(monkeypatch)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(64, 1, 16, 16)).astype(np.float32)
    images[:32] += 2.0
    config = replace(fast_train, epochs=6, patience=10, max_seconds=600)  # epochs, not the clock, must stop it
    encoder = train_neural(images, [None] * 64, Preprocess(size=(16, 16)), config)
    losses = [h["val_loss"] for h in encoder.history]
    assert len(losses) == 6
    assert min(losses) < losses[0]
    assert encoder.training["best_validation"] == pytest.approx(min(losses))
    assert encoder.threshold is None  # no labels: nothing to calibrate on
    assert encoder.embed(images).shape == (64, 8)
    # What was saved is what scored best when it was validated (recorded then, not recomputed from the history).
    assert [score for score, _ in seen] == losses
    best = min(range(len(seen)), key=lambda i: seen[i][0])
    assert_same_weights(kept_weights(encoder, tmp_path / "m"), seen[best][1])


@pytest.mark.parametrize("ema", [0.0, 0.9], ids=["raw-weights", "ema"])
def test_the_best_epoch_is_kept_not_the_last(
    fast_train: TrainConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ema: float
) -> None:
    """Validation scores that are best at epoch 2 and worse after it: the model saved (encoder and decoder) holds
    the weights validated at epoch 2, which differ from the last epoch's."""
    scores = [3.0, 1.0, 2.0, 1.5, 4.0]
    seen = record_validations(monkeypatch, scores)
    images = np.random.default_rng(5).normal(size=(40, 1, 16, 16)).astype(np.float32)
    config = replace(fast_train, epochs=5, patience=10, ema=ema)
    encoder = train_neural(images, [None] * 40, Preprocess(size=(16, 16)), config)
    assert [h["val_loss"] for h in encoder.history] == scores and encoder.training["best_validation"] == 1.0
    kept = kept_weights(encoder, tmp_path / "m")
    assert_same_weights(kept, seen[1][1])
    last = seen[-1][1]
    assert any(not torch.equal(kept[k], last[k]) for k in kept if kept[k].is_floating_point())


def test_training_is_reproducible_on_cpu(fast_train: TrainConfig) -> None:
    images = np.random.default_rng(1).normal(size=(20, 1, 8, 8)).astype(np.float32)
    a = train_neural(images, [None] * 20, Preprocess(size=(8, 8)), fast_train)
    b = train_neural(images, [None] * 20, Preprocess(size=(8, 8)), fast_train)
    assert a.fingerprint == b.fingerprint


def test_time_limit_stops_training(fast_train: TrainConfig) -> None:
    images = np.random.default_rng(2).normal(size=(40, 1, 8, 8)).astype(np.float32)
    config = replace(fast_train, epochs=1000, max_seconds=0.5)
    encoder = train_neural(images, [None] * 40, Preprocess(size=(8, 8)), config)
    assert len(encoder.history) < 1000


def test_pca_matches_scikit_learn(fast_train: TrainConfig) -> None:
    from sklearn.decomposition import PCA

    x = np.random.default_rng(3).normal(size=(50, 1, 4, 5)).astype(np.float32)
    enc = fit_pca(x, Preprocess(size=(4, 5)), replace(fast_train, family="pca", dim=5))
    ours = enc.embed(x)
    theirs = PCA(n_components=5, svd_solver="full").fit_transform(x.reshape(50, -1))
    # Components are defined up to sign.
    signs = np.sign((ours * theirs).sum(0))
    np.testing.assert_allclose(ours * signs, theirs, atol=1e-4)


def test_train_on_folder_chooses_spec_from_images(image_folder: Path, fast_train: TrainConfig) -> None:
    encoder = train_on_folder(image_folder, fast_train)
    assert encoder.preprocess.size == (16, 16) and encoder.preprocess.channels == 1
    assert encoder.preprocess.std[0] > 0
    assert encoder.training["images"] == 15
    pixels = train_encoder(find_images(image_folder)[0], TrainConfig(family="pixels"))
    assert pixels.dim == 256 and pixels.preprocess.mean == (0.0,)


def test_too_few_images_is_a_clear_error(tmp_path: Path, fast_train: TrainConfig) -> None:
    with pytest.raises(DataError, match="no images"):
        train_on_folder(tmp_path, fast_train)


@pytest.mark.gpu
def test_autoencoder_trains_on_cuda(fast_train: TrainConfig) -> None:
    images = np.random.default_rng(4).normal(size=(64, 1, 16, 16)).astype(np.float32)
    config = replace(fast_train, device="cuda")
    encoder = train_neural(images, [None] * 64, Preprocess(size=(16, 16)), config)
    assert encoder.training["device"] == "cuda"
    assert next(encoder.module.parameters()).device.type == "cpu"
    assert encoder.decoder is not None and next(encoder.decoder.parameters()).device.type == "cpu"
    assert encoder.decode(encoder.embed(images[:2])).shape == (2, 1, 16, 16)
    assert torch.isfinite(torch.tensor([h["val_loss"] for h in encoder.history])).all()


def write_strokes(root: Path, per_class: int = 6, width: int = 300, height: int = 120) -> None:
    """Dark strokes on light paper, two 'writers' drawing differently sloped lines."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    for writer, slope in (("w1", 0.2), ("w2", -0.6)):
        for i in range(per_class):
            img = Image.new("L", (width, height), 235)
            draw = ImageDraw.Draw(img)
            x0, y0 = rng.integers(10, 60), rng.integers(30, 90)
            draw.line([(x0, y0), (x0 + 200, y0 + slope * 200 * rng.uniform(0.8, 1.2))], fill=20, width=5)
            path = root / writer / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            img.save(path)


def test_auto_size_keeps_wide_aspect_and_inverts_light_paper(tmp_path: Path, fast_train: TrainConfig) -> None:
    write_strokes(tmp_path / "sigs")
    encoder = train_on_folder(tmp_path / "sigs", replace(fast_train, epochs=1))
    assert encoder.preprocess.size == (51, 128)  # 120×300, more than twice as wide: long side 128, aspect kept
    assert encoder.preprocess.invert is True and encoder.preprocess.resize == "trim"  # ink on paper


def test_small_digits_are_not_upscaled_nor_inverted(tmp_path: Path, fast_train: TrainConfig) -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    for label in ("0", "1"):
        for i in range(4):
            digit = np.zeros((28, 28), np.uint8)
            digit[6:22, 10 + int(label) * 4 : 14 + int(label) * 4] = rng.integers(150, 255)
            (tmp_path / "digits" / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(digit).save(tmp_path / "digits" / label / f"{i}.png")
    encoder = train_on_folder(tmp_path / "digits", replace(fast_train, epochs=1))
    assert encoder.preprocess.size == (28, 28) and encoder.preprocess.invert is False


@pytest.mark.parametrize(
    ("family", "loss"),
    [
        ("denoising", "contrastive"),
        ("vae", "contrastive"),
        ("siamese", "contrastive"),
        ("siamese", "triplet"),
        ("siamese", "ntxent"),
        ("siamese", "arcface"),
        ("siamese", "cosface"),
        ("siamese", "subcenter"),
    ],
)
def test_every_family_trains_saves_and_reloads(
    family: str, loss: str, image_folder: Path, tmp_path: Path, fast_train: TrainConfig
) -> None:
    from simsearch.models.encoder import Encoder

    config = replace(fast_train, family=family, loss=loss, epochs=2)
    encoder = train_on_folder(image_folder, config)
    assert encoder.family == family and len(encoder.history) == 2
    encoder.save(tmp_path / "m")
    loaded = Encoder.load(tmp_path / "m")
    x = np.random.default_rng(0).normal(size=(3, 1, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(loaded.embed(x), encoder.embed(x))
    if family == "siamese":
        np.testing.assert_allclose(np.linalg.norm(loaded.embed(x), axis=1), 1.0, rtol=1e-5)


def test_siamese_is_calibrated_on_held_out_pairs(tmp_path: Path, fast_train: TrainConfig) -> None:
    """Few, large labels are classes: images of each are held out, and the threshold holds for those labels. (With
    identities it is cross-fitted, or not calibrated on unseen identities: tests/training/test_calibrate.py.)"""
    import json

    from tests.conftest import write_folder

    write_folder(tmp_path / "imgs", per_class=100)
    config = replace(fast_train, family="siamese", epochs=2, val_fraction=0.1, batch_size=32)
    encoder = train_on_folder(tmp_path / "imgs", config)
    threshold = encoder.threshold
    assert threshold is not None and threshold["operating_point"] == "eer" and threshold["split"] == "images"
    assert threshold["pairs"]["genuine"] > 0 and threshold["pairs"]["impostor"] > 0
    assert 0 <= threshold["eer"] <= 1 and threshold["far_1%"]["far"] <= 0.01
    calibration = threshold["calibration"]
    assert calibration["method"] == "held-out images" and calibration["unseen_identities"] is False
    assert "reason" not in calibration and calibration["far_interval"][0] <= threshold["far"]
    assert encoder.history[0].keys() >= {"epoch", "loss", "val_eer", "seconds"}
    encoder.save(tmp_path / "m")
    stored = json.loads((tmp_path / "m" / "encoder.json").read_text())
    assert stored["threshold"]["value"] == pytest.approx(threshold["value"])


def test_labelled_losses_need_labels(tmp_path: Path, fast_train: TrainConfig) -> None:
    from PIL import Image

    from tests.conftest import pattern

    rng = np.random.default_rng(0)
    (tmp_path / "flat").mkdir()
    for i in range(20):  # 3 held out: NT-Xent's validation needs negatives
        Image.fromarray(pattern("blob", rng)).save(tmp_path / "flat" / f"{i}.png")
    with pytest.raises(DataError, match="loss='ntxent'"):
        train_on_folder(tmp_path / "flat", replace(fast_train, family="siamese"))
    ntxent = train_on_folder(tmp_path / "flat", replace(fast_train, family="siamese", loss="ntxent", epochs=1))
    assert ntxent.threshold is None and ntxent.history[0]["val_loss"] > 0


def test_autoencoder_with_contrastive_term(image_folder: Path, fast_train: TrainConfig) -> None:
    config = replace(fast_train, contrastive_weight=0.5, epochs=2)
    encoder = train_on_folder(image_folder, config)
    assert encoder.training["config"]["contrastive_weight"] == 0.5 and len(encoder.history) == 2


def test_class_augment_needs_a_labelled_loss_and_square_inputs(tmp_path: Path, fast_train: TrainConfig) -> None:
    with pytest.raises(UsageError, match="class_augment must be auto or one of"):
        TrainConfig(family="siamese", class_augment="rot3")
    for family, loss in (("autoencoder", "contrastive"), ("siamese", "ntxent"), ("pca", "contrastive")):
        with pytest.raises(UsageError, match="labelled loss"):
            TrainConfig(family=family, loss=loss, class_augment="rot4")
    images = np.zeros((6, 1, 8, 12), np.float32)
    config = replace(fast_train, family="siamese", class_augment="rot4")
    with pytest.raises(UsageError, match="square"):
        train_neural(images, ["a", "a", "b", "b", "c", "c"], Preprocess(size=(8, 12)), config)


def test_siamese_trains_on_turned_and_mirrored_classes(tmp_path: Path, fast_train: TrainConfig) -> None:
    from tests.conftest import write_folder

    write_folder(tmp_path / "imgs", per_class=8)
    config = replace(fast_train, family="siamese", class_augment="rot4flip", epochs=2, val_fraction=0.3)
    encoder = train_on_folder(tmp_path / "imgs", config)
    trained = 24 - encoder.training["validation"]["images"]  # 3 labels × 8 images, some held out ("images" split)
    assert encoder.training["class_augment"] == {"images": 8 * trained, "labels": 24}
    assert encoder.training["labels"] == 3
    assert encoder.threshold is not None  # calibrated on the held-out originals
    assert encoder.embed(np.zeros((2, 1, 16, 16), np.float32)).shape == (2, 8)


def test_resize_trim_is_stored_in_the_spec(image_folder: Path, tmp_path: Path, fast_train: TrainConfig) -> None:
    from simsearch.models.encoder import Encoder

    with pytest.raises(UsageError, match="resize must be auto or one of letterbox, trim"):
        TrainConfig(resize="stretch")
    encoder = train_on_folder(image_folder, replace(fast_train, resize="trim", epochs=1))
    assert encoder.preprocess.resize == "trim"
    encoder.save(tmp_path / "m")
    assert Encoder.load(tmp_path / "m").preprocess.resize == "trim"
    assert (
        train_on_folder(image_folder, replace(fast_train, family="pixels", resize="trim")).preprocess.resize == "trim"
    )


def test_weight_average_follows_the_weights_and_swaps_them_in() -> None:
    from simsearch.training import WeightAverage

    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(module, decay=0.75)
    start = {k: v.clone() for k, v in module.state_dict().items()}
    with torch.no_grad():
        module[0].weight.add_(4.0)
        module[1].num_batches_tracked.fill_(7)
    average.update(module, step=1000)  # past the warm-up: the decay as given
    np.testing.assert_allclose(average.state["0.weight"], start["0.weight"] + 1.0)  # 0.75·w + 0.25·(w + 4)
    assert int(average.state["1.num_batches_tracked"]) == 7  # integer buffers are copied
    own = module[0].weight.detach().clone()
    with average.applied(module):
        np.testing.assert_allclose(module[0].weight.detach(), start["0.weight"] + 1.0)
    np.testing.assert_array_equal(module[0].weight.detach(), own)


def test_weight_average_warms_up_over_the_first_steps() -> None:
    from simsearch.training import WeightAverage
    from simsearch.training.ema import warmed_decay

    assert warmed_decay(0.995, 1) == pytest.approx(2 / 11)
    assert warmed_decay(0.995, 90) == pytest.approx(0.91)
    assert warmed_decay(0.995, 10_000) == 0.995 and warmed_decay(0.5, 20) == 0.5
    assert warmed_decay(0.5, 3) == pytest.approx(4 / 13)
    module = torch.nn.Linear(2, 2)
    start = module.weight.detach().clone()
    average = WeightAverage(module, decay=0.995)
    with torch.no_grad():
        module.weight.add_(11.0)
    average.update(module, step=1)  # (2/11)·w + (9/11)·(w + 11): the random start mostly forgotten at once
    np.testing.assert_allclose(average.state["weight"], start + 9.0, rtol=1e-6)


def test_siamese_options_validate_and_train(tmp_path: Path, fast_train: TrainConfig) -> None:
    from simsearch.models.encoder import Encoder
    from tests.conftest import write_folder

    for bad in ({"ema": 1.0}, {"projection": -1}, {"family": "vae", "projection": 8}, {"similar_labels": 2}):
        with pytest.raises(UsageError):
            TrainConfig(**bad)
    with pytest.raises(UsageError, match="similar_labels"):
        TrainConfig(family="siamese", loss="ntxent", similar_labels=2)
    write_folder(tmp_path / "imgs", per_class=8)
    config = replace(fast_train, family="siamese", epochs=2, val_fraction=0.3, ema=0.9, projection=16, similar_labels=2)
    encoder = train_on_folder(tmp_path / "imgs", config)
    assert len(encoder.history) == 2 and encoder.threshold is not None
    assert not any(name.startswith("projector") for name in encoder.module.state_dict())  # the head is dropped
    encoder.save(tmp_path / "m")
    x = np.random.default_rng(0).normal(size=(3, 1, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(Encoder.load(tmp_path / "m").embed(x), encoder.embed(x))


def test_a_margin_loss_trains_its_label_weights_and_keeps_only_the_encoder(
    image_folder: Path, fast_train: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ArcFace's per-label weights are optimised with the encoder (they move), and are not part of the model."""
    from simsearch.training.objectives import siamese

    built: list[siamese.Siamese] = []
    initial: list[torch.Tensor] = []
    original = siamese.Siamese.__init__

    def spy(self: siamese.Siamese, *args: object, **kw: object) -> None:
        original(self, *args, **kw)
        built.append(self)
        initial.append(self.criterion.loss.W.detach().clone())

    monkeypatch.setattr(siamese.Siamese, "__init__", spy)
    config = replace(fast_train, family="siamese", loss="arcface", epochs=2, folds=1, mirror="yes")
    encoder = train_on_folder(image_folder, config)
    objective = built[-1]
    weights = objective.criterion.loss.W
    assert any(p is weights for p in objective.model.parameters())
    assert not torch.allclose(weights.detach(), initial[-1])
    assert not any(name.startswith("criterion") for name in encoder.module.state_dict())
    assert encoder.training["mirror"] is True
