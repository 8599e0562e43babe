"""``--readout``: a Siamese model that searches with its flattened last feature map (``features``), the head trained
as a projection head, or with the head (``head``), or whichever the cross-fitted folds score better (``auto``). What
the module gives, what the loss trains, the cross-fitted choice, the model saved and loaded, train and verify
through the command line, and the options it is refused with."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from simsearch import metrics
from simsearch.models.autoencoder import ConvEncoder, output_width
from simsearch.models.encoder import Encoder, output_dim
from simsearch.training import TrainConfig, train_on_folder
from simsearch.training.calibrate import FEATURES, PLAIN, CrossFit, plan_calibration
from simsearch.training.objectives.siamese import Siamese
from simsearch.training.sampling import GENUINE
from tests.conftest import write_folder
from tests.helpers import invoke
from tests.training.test_calibrate import write_signatures
from tests.training.test_discriminant import nuisance_embeddings


def test_the_features_readout_is_the_flattened_feature_map_on_the_unit_sphere() -> None:
    torch.manual_seed(0)
    module = ConvEncoder(1, (28, 20), dim=8, widths=(4, 6), normalize=True, readout="features").eval()
    x = torch.randn(3, 1, 28, 20)
    z = module(x)
    # 28×20 → 14×10 → 7×5 with 6 channels: 210 numbers, the map under the head, scaled to unit length.
    assert z.shape == (3, 6 * 7 * 5) and output_width(module.arch) == 210
    flat = module.features(x).flatten(1)
    assert torch.allclose(z, flat / flat.norm(dim=1, keepdim=True), atol=1e-6)
    # The head still gives its dim numbers, which the loss trains on.
    head = module.head_embedding(x)
    assert head.shape == (3, 8) and torch.allclose(head.norm(dim=1), torch.ones(3), atol=1e-6)
    assert torch.allclose(head, F.normalize(module.head(flat), dim=1), atol=1e-6)
    plain = ConvEncoder(1, (28, 20), dim=8, widths=(4, 6), normalize=True)
    assert (
        "readout" not in plain.arch and output_width(plain.arch) == 8
    )  # models made before keep their arch and fingerprint
    assert module.arch["readout"] == "features"
    assert output_dim(module.arch) == 210 and output_dim({**module.arch, "size": "x"}) == -1
    with pytest.raises(ValueError, match="unknown readout 'middle'"):
        ConvEncoder(1, (28, 20), dim=8, readout="middle")


def test_a_features_model_trains_its_head_saves_loads_and_verifies(tmp_path: Path, fast_train: TrainConfig) -> None:
    write_signatures(tmp_path / "sigs", writers=4, per_label=4)
    config = replace(fast_train, family="siamese", epochs=2, readout="features")
    encoder = train_on_folder(tmp_path / "sigs", config)
    module = encoder.module
    assert isinstance(module, ConvEncoder) and module.readout == "features"
    assert encoder.dim == output_width(module.arch) > fast_train.dim
    assert encoder.threshold is not None  # calibrated on the features, as they are searched
    encoder.save(tmp_path / "m")
    loaded = Encoder.load(tmp_path / "m")
    spec = encoder.preprocess
    images = np.random.default_rng(0).random((2, spec.channels, *spec.size)).astype(np.float32)
    assert np.allclose(loaded.embed(images), encoder.embed(images), atol=1e-5)
    a, b = tmp_path / "sigs" / "049" / "0.png", tmp_path / "sigs" / "049" / "1.png"
    result = invoke("verify", a, b, "-m", tmp_path / "m", "--json")
    assert result.exit_code in (0, 1), result.output
    assert json.loads(result.stdout)["distance"] >= 0


def test_the_loss_trains_the_head_under_a_features_readout() -> None:
    torch.manual_seed(0)
    encoder = ConvEncoder(1, (16, 16), dim=4, widths=(4, 4), normalize=True, readout="features")
    images = torch.randn(12, 1, 16, 16)
    labels = torch.arange(12) % 3
    rows = np.arange(12)
    objective = Siamese(
        encoder, images, labels, rows[:9], rows[9:], loss="contrastive", margin=None, augment=0.0, batch_size=9, seed=0
    )
    objective.loss(rows[:9]).backward()
    # The gradient reaches the head (what the loss is computed on) and the convolutions under it.
    assert encoder.head.weight.grad is not None and encoder.head.weight.grad.abs().sum() > 0
    assert objective.embed_for_loss(images[:2]).shape == (2, 4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--family", "siamese", "--readout", "middle"], "--readout must be one of auto, head, features, not 'middle'"),
        (["--family", "autoencoder", "--readout", "features"], "--readout features is for the Siamese family"),
        (
            ["--family", "siamese", "--readout", "features", "--discriminant", "auto"],
            "--readout features and --discriminant auto do not go together",
        ),
    ],
)
def test_bad_readout_options_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    write_signatures(tmp_path / "sigs", writers=4, per_label=2)
    result = invoke("train", tmp_path / "sigs", "--out", tmp_path / "m", *args)
    assert result.exit_code == 2 and message in " ".join(result.output.split())
    assert not (tmp_path / "m").exists()


# --- the cross-fitted choice (readout auto) ----------------------------------------------------------------------


class Folds:
    """A fold trainer whose 'models' embed as ``nuisance_embeddings`` does, and whose feature maps (when
    ``features``) hold the identities' dimensions alone, without the nuisance."""

    def __init__(self, z: np.ndarray, features: bool) -> None:
        self.z, self.features = z, features
        self.returned: list[float | None] = []  # what the observer gave each epoch to stop on

    def __call__(self, k: int, train_rows: np.ndarray, held_rows: np.ndarray, max_epochs: int, observe) -> None:
        for _ in range(min(max_epochs, 3)):
            clean = self.z[held_rows, :4] if self.features else None
            self.returned.append(observe(self.z[held_rows], None, None, clean))


@pytest.mark.parametrize("variants", [(FEATURES,), (PLAIN,)])
def test_a_fold_stops_on_the_ways_of_scoring_the_final_model_may_take(variants: tuple[str, ...]) -> None:
    z, y = nuisance_embeddings(24, 5, seed=2)
    plan = plan_calibration(y, [str(c) for c in range(24)], uses_labels=True)
    cross = CrossFit(y, plan, seed=0, variants=variants)
    trainer = Folds(z, features=True)
    cross.run(trainer, max_epochs=1)
    assert cross.choose()[0] == variants[0]
    for fold, returned in zip(cross.folds, trainer.returned, strict=True):
        same = fold.kind == GENUINE
        assert returned == pytest.approx(metrics.equal_error_rate(fold.scored(variants[0])[0], same)[0])


@pytest.mark.parametrize("features", [True, False])
def test_cross_fitting_reads_out_the_features_only_where_they_score_unseen_identities_better(features: bool) -> None:
    z, y = nuisance_embeddings(24, 5, seed=2)
    plan = plan_calibration(y, [str(c) for c in range(24)], uses_labels=True)
    cross = CrossFit(y, plan, seed=0)
    cross.run(Folds(z, features), max_epochs=3)
    variant, _ = cross.choose()
    plain, through = cross.curve(PLAIN), cross.curve(FEATURES)
    if features:
        assert variant == FEATURES and max(through) < min(plain) / 2
    else:  # not scored: the same distances as plain, and the tie keeps the head
        assert variant == PLAIN and through == plain
    saved = cross.folds[0].saved()
    assert all(s.shape == ((3, len(cross.folds[0].kind)) if features else (len(cross.folds[0].kind),)) for s in saved)


def test_a_cross_fitted_siamese_model_reads_out_the_feature_map_by_default(
    tmp_path: Path, fast_train: TrainConfig
) -> None:
    write_signatures(tmp_path / "sigs", writers=4, per_label=4)
    assert TrainConfig().readout == "auto"
    encoder = train_on_folder(tmp_path / "sigs", replace(fast_train, family="siamese", epochs=3))
    module = encoder.module
    assert isinstance(module, ConvEncoder) and module.readout == "features" and encoder.dim == output_width(module.arch)
    cross_fit = encoder.training["cross_fit"]
    assert cross_fit["readout"] == "features" and cross_fit["pooled_eer"] == cross_fit["pooled_eer_features"]
    assert len(cross_fit["pooled_eer_features"]) == len(cross_fit["pooled_eer_plain"]) == 3
    # The head was scored too (for the record): other models, other distances, so another curve.
    assert cross_fit["pooled_eer_features"] != cross_fit["pooled_eer_plain"]
    record = encoder.threshold
    assert record is not None and record["calibration"]["readout"] == "features"
    # The features' curve chose the epochs and calibrated the threshold.
    epoch = record["calibration"]["chosen_epoch"]
    curve = cross_fit["pooled_eer_features"]  # smoothed as CrossFit.smoothed does: a mean over three epochs
    smooth = [np.mean(curve[max(0, e - 1) : e + 2]) for e in range(len(curve))]
    assert smooth[epoch - 1] == pytest.approx(min(smooth))
    assert record["eer"] == pytest.approx(cross_fit["pooled_eer_features"][epoch - 1])
    encoder.save(tmp_path / "m")
    a, b = tmp_path / "sigs" / "049" / "0.png", tmp_path / "sigs" / "049" / "1.png"
    result = invoke("verify", a, b, "-m", tmp_path / "m", "--json")
    assert result.exit_code in (0, 1), result.output
    assert json.loads(result.stdout)["distance"] >= 0


def test_readout_head_and_trainings_without_cross_fitting_read_out_the_head(
    tmp_path: Path, fast_train: TrainConfig
) -> None:
    write_signatures(tmp_path / "sigs", writers=4, per_label=4)
    encoder = train_on_folder(tmp_path / "sigs", replace(fast_train, family="siamese", epochs=2, readout="head"))
    cross_fit = encoder.training["cross_fit"]
    assert encoder.dim == fast_train.dim and cross_fit["readout"] == "head"
    assert cross_fit["pooled_eer_features"] == cross_fit["pooled_eer_plain"]  # not scored
    assert encoder.threshold is not None and encoder.threshold["calibration"]["readout"] == "head"
    write_folder(tmp_path / "three", per_class=8)  # three labels: no cross-fitting, nothing to choose it on
    encoder = train_on_folder(tmp_path / "three", replace(fast_train, family="siamese", epochs=2))
    assert encoder.dim == fast_train.dim and "cross_fit" not in encoder.training


def test_train_says_what_readout_auto_decided(tmp_path: Path) -> None:
    write_signatures(tmp_path / "sigs", writers=4, per_label=4)
    flags = ["--family", "siamese", "--epochs", "2", "--dim", "8", "--batch-size", "8", "--device", "cpu"]
    result = invoke("train", tmp_path / "sigs", "--out", tmp_path / "m", *flags)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "m" / "encoder.json").read_text())
    cross_fit = saved["training"]["cross_fit"]
    epoch = cross_fit["chosen_epoch"]
    head, features = cross_fit["pooled_eer_plain"][epoch - 1], cross_fit["pooled_eer_features"][epoch - 1]
    assert cross_fit["readout"] == "features" and saved["threshold"]["calibration"]["readout"] == "features"
    what = f"features (the feature map under the head, {saved['dim']} numbers)"
    said = " ".join(result.output.split())  # however the terminal wrapped it
    assert f"Readout: {what}: pooled EER of the unseen identities {features:.3f} by the feature map" in said
    assert f"{head:.3f} by the head (epoch {epoch})." in said
    write_folder(tmp_path / "three", per_class=8)
    result = invoke("train", tmp_path / "three", "--out", tmp_path / "m3", *flags)
    assert result.exit_code == 0, result.output
    assert "Readout: head: the feature map is read out when training is cross-fitted" in " ".join(result.output.split())
    result = invoke("train", tmp_path / "sigs", "--out", tmp_path / "md", *flags, "--discriminant", "auto")
    assert result.exit_code == 0 and "Readout:" not in result.output  # the back-end is fitted on the head's
    assert json.loads((tmp_path / "md" / "encoder.json").read_text())["training"]["cross_fit"]["readout"] == "head"


def test_ink_on_paper_keeps_the_head(tmp_path: Path) -> None:
    # Signatures and characters (ink on a light background) verified worse by the feature map: they keep the head.
    write_signatures(tmp_path / "sigs", writers=4, per_label=4)
    for path in (tmp_path / "sigs").rglob("*.png"):
        Image.fromarray(255 - np.asarray(Image.open(path))).save(path)  # dark strokes on light paper
    flags = ["--family", "siamese", "--epochs", "2", "--dim", "8", "--batch-size", "8", "--device", "cpu"]
    result = invoke("train", tmp_path / "sigs", "--out", tmp_path / "m", *flags)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "m" / "encoder.json").read_text())
    assert saved["preprocess"]["invert"] is True and saved["dim"] == 8
    cross_fit = saved["training"]["cross_fit"]
    assert cross_fit["readout"] == "head" and cross_fit["pooled_eer_features"] == cross_fit["pooled_eer_plain"]
    assert "Readout: head: the feature map is read out for images that are not ink on paper" in " ".join(
        result.output.split()
    )
    result = invoke("train", tmp_path / "sigs", "--out", tmp_path / "mf", *flags, "--readout", "features")
    assert result.exit_code == 0, result.output  # asked for, the map is read out on ink too
    assert json.loads((tmp_path / "mf" / "encoder.json").read_text())["dim"] > 8
