"""The discriminant back-end: what it learns on a case where the answer is known, the model that ends with it
(saved, loaded, embedded the same), the cross-fitted choice of keeping it, and a Siamese training that keeps it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from simsearch import metrics, vectors
from simsearch.io import Preprocess
from simsearch.models.autoencoder import ConvEncoder
from simsearch.models.encoder import Encoder
from simsearch.training import TrainConfig, train_on_folder
from simsearch.training.calibrate import DISCRIMINANT, PLAIN, CrossFit, plan_calibration
from simsearch.training.discriminant import apply_discriminant, fit_discriminant
from simsearch.training.sampling import GENUINE, encode_labels, verification_pairs
from tests.conftest import write_folder
from tests.helpers import invoke
from tests.training.test_calibrate import write_signatures

# --- a case where the answer is known ----------------------------------------------------------------------------
#
# An identity is a point μ_g ~ N(0, I) in the first 4 of 8 dimensions; each image of it adds nuisance ~ N(0, 5² I)
# in the last 4 (pose, light). Compared as they are, the nuisance drowns the identities; the within-identity
# covariance that LDA divides by is large along exactly those 4 dimensions, so through its axes they count for little.


def nuisance_embeddings(identities: int, per: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(identities), per)
    centre = rng.normal(size=(identities, 4))
    z = np.concatenate([centre[y] + 0.2 * rng.normal(size=(len(y), 4)), 5.0 * rng.normal(size=(len(y), 4))], axis=1)
    return z.astype(np.float32), y


def eer(z: np.ndarray, y: np.ndarray) -> float:
    i, j, same = verification_pairs(y, np.random.default_rng(0), max_genuine=10**6)
    return float(metrics.equal_error_rate(vectors.distances(z[i], z[j], "l2"), same)[0])


def test_the_discriminant_discounts_what_varies_within_identities() -> None:
    z_train, y_train = nuisance_embeddings(20, 6, seed=0)
    z_new, y_new = nuisance_embeddings(10, 6, seed=1)  # identities it never saw
    axes = fit_discriminant(z_train, y_train)
    assert axes is not None and axes.shape == (8, 8) and axes.dtype == np.float32
    # Along the axes, a unit of nuisance weighs far less than a unit of identity.
    identity_weight = np.linalg.norm(axes[:4], axis=1).mean()
    nuisance_weight = np.linalg.norm(axes[4:], axis=1).mean()
    assert nuisance_weight < identity_weight / 5
    projected = apply_discriminant(z_new, axes)
    assert np.allclose(np.linalg.norm(projected, axis=1), 1.0, atol=1e-5)
    plain, through = eer(z_new, y_new), eer(projected, y_new)
    assert plain > 0.25 and through < plain / 3, (plain, through)


def test_at_most_the_axes_asked_for_the_leading_ones() -> None:
    z, y = nuisance_embeddings(20, 6, seed=0)
    full, capped = fit_discriminant(z, y), fit_discriminant(z, y, most=3)
    assert full is not None and capped is not None and capped.shape == (8, 3)
    assert np.array_equal(capped, full[:, :3])
    assert fit_discriminant(z, y, most=1) is None  # fewer than MIN_AXES


def test_the_final_back_end_keeps_the_axes_every_fold_had() -> None:
    y = np.repeat(np.arange(9), 3)  # 9 identities in 3 folds of 3: each fold model learns 6 labels
    plan = plan_calibration(y, [str(c) for c in range(9)], uses_labels=True, folds=3)
    cross = CrossFit(y, plan, seed=0)
    assert plan.folds == 3 and cross.discriminant_axes == 5


def test_too_few_labels_or_images_give_no_discriminant() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(12, 6)).astype(np.float32)
    assert fit_discriminant(z, np.repeat([0, 1], 6)) is None  # one axis: every embedding would be ±1
    assert fit_discriminant(z, np.arange(12)) is None  # no label with two images: nothing varies within one
    unlabelled = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, -1, -1, -1])
    axes = fit_discriminant(z, unlabelled)  # the unlabelled rows are left out: three labels, two axes
    assert axes is not None and axes.shape == (6, 2)


# --- the model that ends with it ---------------------------------------------------------------------------------


def test_a_model_ending_with_the_back_end_saves_loads_and_embeds_the_same(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = Preprocess(size=(16, 16), channels=1)
    plain_module = ConvEncoder(1, (16, 16), 8, normalize=True)
    assert "discriminant" not in plain_module.arch  # models without one keep their arch and fingerprint
    module = ConvEncoder(1, (16, 16), 8, normalize=True)
    module.load_state_dict(plain_module.state_dict())
    axes = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    module.set_discriminant(torch.from_numpy(axes))
    assert module.arch["discriminant"] == 3
    encoder = Encoder("siamese", module.arch, spec, module, metric="cosine")
    assert encoder.dim == 3
    images = np.random.default_rng(1).normal(size=(5, 1, 16, 16)).astype(np.float32)
    z = encoder.embed(images)
    before = Encoder("siamese", plain_module.arch, spec, plain_module, metric="cosine").embed(images)
    assert z.shape == (5, 3) and np.allclose(z, apply_discriminant(before, axes), atol=1e-5)
    encoder.save(tmp_path / "m")
    loaded = Encoder.load(tmp_path / "m")
    assert loaded.dim == 3 and loaded.fingerprint == encoder.fingerprint
    assert np.array_equal(loaded.embed(images), z)
    with pytest.raises(ValueError, match=r"\(8, m\)"):
        ConvEncoder(1, (16, 16), 8).set_discriminant(torch.zeros(4, 2))


# --- the cross-fitted choice -------------------------------------------------------------------------------------


class Folds:
    """A fold trainer whose 'models' embed as ``nuisance_embeddings`` does, and hand their training rows to the
    observer (``with_training``) or not."""

    def __init__(self, z: np.ndarray, y: np.ndarray, with_training: bool) -> None:
        self.z, self.y, self.with_training = z, y, with_training

    def __call__(self, k: int, train_rows: np.ndarray, held_rows: np.ndarray, max_epochs: int, observe) -> None:
        for _ in range(min(max_epochs, 3)):
            if self.with_training:
                observe(self.z[held_rows], self.z[train_rows], self.y[train_rows])
            else:
                observe(self.z[held_rows], None, None)


@pytest.mark.parametrize("with_training", [True, False])
def test_cross_fitting_keeps_the_back_end_only_where_it_scores_unseen_identities_better(with_training: bool) -> None:
    z, y = nuisance_embeddings(24, 5, seed=2)
    plan = plan_calibration(y, [str(c) for c in range(24)], uses_labels=True)
    cross = CrossFit(y, plan, seed=0)
    cross.run(Folds(z, y, with_training), max_epochs=3)
    variant, epoch = cross.choose()
    plain, through = cross.curve(PLAIN), cross.curve(DISCRIMINANT)
    if with_training:
        assert variant == DISCRIMINANT and max(through) < min(plain) / 2
    else:  # nothing to fit it on: both ways score alike, and the tie keeps the plain embeddings
        assert variant == PLAIN and through == plain
    record = cross.record(epoch, variant=variant)
    assert record is not None and record["calibration"]["discriminant"] is (variant == DISCRIMINANT)
    d, kind, _, _ = cross.pooled(epoch, variant)
    assert record["eer"] == pytest.approx(metrics.equal_error_rate(d, kind == GENUINE)[0])


def test_a_checkpoint_keeps_both_ways_of_scoring_a_fold() -> None:
    z, y = nuisance_embeddings(8, 4, seed=3)
    plan = plan_calibration(y, [str(c) for c in range(8)], uses_labels=True)
    cross = CrossFit(y, plan, seed=0)
    cross.run(Folds(z, y, True), max_epochs=2)
    fold = cross.folds[0]
    saved = fold.saved()
    assert all(s.shape == (3, len(fold.kind)) for s in saved)  # plain, discriminant, features (= plain here)
    plain, through = list(fold.distances), list(fold.discriminant)
    fold.restore([np.zeros_like(s) for s in saved])
    fold.restore(saved)
    assert all(np.array_equal(a, b) for a, b in zip(fold.distances + fold.discriminant, plain + through, strict=True))
    fold.restore([s[:2] for s in saved])  # a checkpoint written before the features readout: scored as plain
    assert all(np.array_equal(a, b) for a, b in zip(fold.discriminant, through, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(fold.features, plain, strict=True))
    fold.restore(plain)  # a checkpoint written before the back-end: plain distances alone, scored alike both ways
    assert all(np.array_equal(a, b) for a, b in zip(fold.distances, plain, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(fold.discriminant, plain, strict=True))


# --- a Siamese training that keeps it ----------------------------------------------------------------------------


def test_a_siamese_model_keeps_the_back_end_its_cross_fitting_chose(
    tmp_path: Path, fast_train: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_signatures(tmp_path / "sigs", writers=4, per_label=4)
    chosen: list[tuple[str, int]] = []

    def prefer_discriminant(self: CrossFit) -> tuple[str, int]:
        chosen.append((DISCRIMINANT, self.best_epoch(DISCRIMINANT)))
        return chosen[-1]

    monkeypatch.setattr(CrossFit, "choose", prefer_discriminant)
    encoder = train_on_folder(tmp_path / "sigs", replace(fast_train, family="siamese", epochs=2, discriminant="auto"))
    labels = len(set(encode_labels([p.parent.name for p in (tmp_path / "sigs").rglob("*.png")])[1]))
    # Two folds of two writers: each fold model's back-end learnt 4 labels (3 axes); the final model, fitted on
    # all 8 labels, keeps 3 axes too, so that its distances have the scale its threshold was calibrated on.
    assert labels == 8 and encoder.dim == 3
    cross_fit = encoder.training["cross_fit"]
    assert cross_fit["discriminant"] == {"axes": 3, "labels": 8}
    assert cross_fit["pooled_eer"] == cross_fit["pooled_eer_discriminant"]
    assert len(cross_fit["pooled_eer_plain"]) == len(cross_fit["pooled_eer_discriminant"]) == 2
    record = encoder.threshold
    assert record is not None and record["calibration"]["discriminant"] is True
    assert record["calibration"]["chosen_epoch"] == chosen[0][1]
    encoder.save(tmp_path / "m")
    a, b = tmp_path / "sigs" / "049" / "0.png", tmp_path / "sigs" / "049" / "1.png"
    result = invoke("verify", a, b, "-m", tmp_path / "m", "--json")
    assert result.exit_code in (0, 1), result.output
    assert json.loads(result.stdout)["distance"] >= 0


def test_by_default_no_discriminant_is_fitted(tmp_path: Path, fast_train: TrainConfig) -> None:
    write_signatures(tmp_path / "sigs", writers=4, per_label=4)
    assert TrainConfig().discriminant == "no"
    encoder = train_on_folder(tmp_path / "sigs", replace(fast_train, family="siamese", epochs=2, readout="head"))
    cross_fit = encoder.training["cross_fit"]
    assert encoder.dim == fast_train.dim and cross_fit["discriminant"] is None
    assert cross_fit["pooled_eer_plain"] == cross_fit["pooled_eer_discriminant"] == cross_fit["pooled_eer"]
    assert encoder.threshold is not None and encoder.threshold["calibration"]["discriminant"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--family", "siamese", "--discriminant", "maybe"], "--discriminant must be one of auto, no, not 'maybe'"),
        (["--family", "autoencoder", "--discriminant", "auto"], "--discriminant is a back-end of the Siamese family"),
    ],
)
def test_bad_discriminant_options_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    write_signatures(tmp_path / "sigs", writers=4, per_label=2)
    result = invoke("train", tmp_path / "sigs", "--out", tmp_path / "m", *args)
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "m").exists()


def test_train_says_what_discriminant_auto_decided(tmp_path: Path) -> None:
    write_signatures(tmp_path / "sigs", writers=4, per_label=4)
    flags = ["--family", "siamese", "--discriminant", "auto", "--epochs", "2", "--dim", "8", "--batch-size", "8"]
    result = invoke("train", tmp_path / "sigs", "--out", tmp_path / "m", *flags, "--device", "cpu")
    assert result.exit_code == 0, result.output
    cross_fit = json.loads((tmp_path / "m" / "encoder.json").read_text())["training"]["cross_fit"]
    epoch = cross_fit["chosen_epoch"]
    plain, through = cross_fit["pooled_eer_plain"][epoch - 1], cross_fit["pooled_eer_discriminant"][epoch - 1]
    verdict = "kept (" if cross_fit["discriminant"] else "not kept:"
    said = " ".join(result.output.split())  # however the terminal wrapped it
    assert f"Discriminant back-end: {verdict}" in said
    assert f"{through:.3f} with it, {plain:.3f} without (epoch {epoch})" in said
    write_folder(tmp_path / "three", per_class=8)  # three labels: no cross-fitting, so nothing to choose it on
    result = invoke("train", tmp_path / "three", "--out", tmp_path / "m3", *flags, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "Discriminant back-end: not fitted" in " ".join(result.output.split())
