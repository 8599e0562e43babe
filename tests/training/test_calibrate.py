"""Cross-fitted threshold calibration: which method, fold models that never see their identities, a FAR that holds
on new identities (a synthetic encoder whose true FAR is known), siblings of forgeries, and what train records."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chi2

from simsearch import metrics
from simsearch.training import TrainConfig, train_on_folder
from simsearch.training.calibrate import (
    METHOD_CROSS_FITTED,
    METHOD_IDENTITIES,
    METHOD_IMAGES,
    CrossFit,
    fold_count,
    plan_calibration,
)
from simsearch.training.sampling import FORGERY, GENUINE, IMPOSTOR, encode_labels
from tests.conftest import write_folder
from tests.helpers import invoke

# --- a synthetic encoder whose FAR on new identities is known ------------------------------------------------------
#
# Identity g has a true centre μ_g ~ N(0, I_d); image r of it has its own noise ε_r ~ N(0, I_d). A model embeds
# an image of an identity it was trained on as 3·μ_g + σ·ε_r (it learnt to tell those people apart), and one of an
# identity it never saw as 0.5·μ_g + σ·ε_r (new people look alike to it), where σ depends on the epoch. Between
# images of two new identities z_a − z_b ~ N(0, 2(0.25 + σ²) I_d), so the FAR at threshold t on new identities is
# chi2.cdf(t² / (2(0.25 + σ²)), d) exactly.

DIM = 8
SIGMA_BY_EPOCH = [1.0, 0.75, 0.5, 0.7, 0.9]  # the best epoch is the third


def true_far(threshold: float, epoch: int) -> float:
    sigma = SIGMA_BY_EPOCH[epoch - 1]
    return float(chi2.cdf(threshold**2 / (2 * (0.25 + sigma**2)), DIM))


class Synthetic:
    def __init__(self, n_identities: int, per_identity: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.y = np.repeat(np.arange(n_identities), per_identity)
        self.centre = rng.normal(size=(n_identities, DIM))
        self.noise = rng.normal(size=(len(self.y), DIM))
        self.seen_by_folds: list[tuple[set[int], set[int]]] = []

    def embed(self, rows: np.ndarray, trained_on: set[int], epoch: int) -> np.ndarray:
        seen = np.isin(self.y[rows], list(trained_on))
        scale = np.where(seen, 3.0, 0.5)[:, None]
        return scale * self.centre[self.y[rows]] + SIGMA_BY_EPOCH[epoch - 1] * self.noise[rows]

    def train_fold(self, k: int, train_rows: np.ndarray, held_rows: np.ndarray, max_epochs: int, observe) -> None:
        trained_on = set(self.y[train_rows].tolist())
        self.seen_by_folds.append((trained_on, set(self.y[held_rows].tolist())))
        for epoch in range(1, min(max_epochs, len(SIGMA_BY_EPOCH)) + 1):
            observe(self.embed(held_rows, trained_on, epoch))


def test_cross_fitted_far_holds_on_new_identities_where_held_out_images_do_not() -> None:
    data = Synthetic(n_identities=24, per_identity=8, seed=0)
    classes = [f"p{i:02d}" for i in range(24)]
    plan = plan_calibration(data.y, classes, uses_labels=True)
    assert plan.method == METHOD_CROSS_FITTED and plan.folds == 5
    cross = CrossFit(data.y, plan, seed=0)
    cross.run(data.train_fold, max_epochs=60)
    for trained_on, held in data.seen_by_folds:  # no fold model saw an identity it scores
        assert held and trained_on.isdisjoint(held)
    assert set().union(*(held for _, held in data.seen_by_folds)) == set(range(24))  # every identity held out once
    assert cross.epochs == 5 and cross.best_epoch() == 3
    record = cross.record(3)
    assert record is not None
    calibration = record["calibration"]
    assert calibration["method"] == "cross-fitted" and calibration["unseen_identities"] is True
    assert calibration["folds"] == 5 and calibration["identities"] == 24
    promised, truth = record["far"], true_far(record["value"], 3)
    low, high = calibration["far_interval"]
    assert abs(promised - truth) < 0.06, (promised, truth)
    assert low <= truth <= high and low <= promised <= high
    for name in ("far_1%", "far_0.1%"):  # the stricter points hold too (within what 24 identities can tell)
        assert true_far(record[name]["value"], 3) < 0.03

    # The old way: one model trained on every identity, calibrated on held-out images of those identities. It
    # promises (nearly) no false accepts, and on new identities accepts most impostors.
    everyone = set(range(24))
    held_images = np.flatnonzero(np.arange(len(data.y)) % 8 >= 6)  # two images of every identity
    z = data.embed(held_images, everyone, 3)
    y_val = data.y[held_images]
    i, j = np.triu_indices(len(held_images), k=1)
    old = metrics.calibrate(np.linalg.norm(z[i] - z[j], axis=1), y_val[i] == y_val[j], identities=24)
    assert old["far"] < 0.01 and true_far(old["value"], 3) > 0.5


def test_the_identity_bootstrap_narrows_with_more_identities() -> None:
    widths = []
    for n in (8, 60):
        data = Synthetic(n_identities=n, per_identity=6, seed=1)
        cross = CrossFit(data.y, plan_calibration(data.y, [f"p{i:02d}" for i in range(n)], True), seed=0)
        cross.run(data.train_fold, max_epochs=3)
        record = cross.record(3)
        assert record is not None
        low, high = record["calibration"]["far_interval"]
        assert low <= record["far"] <= high
        widths.append(high - low)
    assert widths[1] < widths[0]


def test_which_calibration_method() -> None:
    faces = np.repeat(np.arange(28), 10)
    clothing = np.repeat(np.arange(10), 300)
    signers = np.repeat(np.arange(4), 24)
    names = [f"s{i}" for i in range(28)]
    assert plan_calibration(faces, names, uses_labels=True).method == METHOD_CROSS_FITTED
    assert plan_calibration(faces, names, uses_labels=True, folds=3).folds == 3
    assert plan_calibration(faces, names, uses_labels=False).method == METHOD_IDENTITIES  # training ignores labels
    cut = plan_calibration(faces, names, uses_labels=True, folds=1)  # cross-fitting off: one split of identities
    assert cut.method == METHOD_IDENTITIES and cut.unseen
    classes = plan_calibration(clothing, names[:10], uses_labels=True)
    assert classes.method == METHOD_IMAGES and not classes.identities and not classes.reason
    four = plan_calibration(signers, names[:4], uses_labels=True)
    assert four.method == METHOD_CROSS_FITTED and four.folds == 2
    assert plan_calibration(signers, names[:4], uses_labels=False).method == METHOD_IDENTITIES
    assert plan_calibration(signers, names[:4], uses_labels=True, folds=1).method == METHOD_IDENTITIES
    three = plan_calibration(signers[signers < 3], names[:3], uses_labels=True)
    assert three.method == METHOD_IMAGES and three.identities and "only 3 identities" in three.reason
    # Fold counts: two identity groups a fold at least, at most 5, fewer when the images are many.
    assert [fold_count(g, n) for g, n in ((4, 96), (9, 90), (21, 210), (28, 300), (964, 19280))] == [2, 4, 4, 3, 2]
    assert fold_count(5, 50, requested=4) == 2


def write_signatures(root: Path, writers: int = 6, per_label: int = 4) -> None:
    """``WWW`` and ``WWW_forg`` folders of tiny patterned images (the SigComp layout)."""
    from PIL import Image

    from tests.conftest import pattern

    rng = np.random.default_rng(0)
    kinds = ["hbars", "vbars", "dots", "blob"]
    for w in range(writers):
        for label, kind in ((f"{49 + w:03d}", kinds[w % 4]), (f"{49 + w:03d}_forg", kinds[(w + 1) % 4])):
            (root / label).mkdir(parents=True, exist_ok=True)
            for i in range(per_label):
                Image.fromarray(pattern(kind, rng, size=12)).save(root / label / f"{i}.png")


def test_a_writer_and_their_forgeries_are_one_identity(tmp_path: Path) -> None:
    from simsearch.io import find_images

    write_signatures(tmp_path / "sigs")
    entries, _ = find_images(tmp_path / "sigs")
    y, classes = encode_labels([e.label for e in entries])
    plan = plan_calibration(y, classes, uses_labels=True)
    assert plan.method == METHOD_CROSS_FITTED and plan.n_groups == 6 and plan.folds == 3
    cross = CrossFit(y, plan, seed=0)
    writer = np.array([classes[c][:3] for c in y])
    forged = np.array([classes[c].endswith("_forg") for c in y])
    for k, fold in enumerate(cross.folds):
        held = set(writer[fold.held])
        assert len(held) == 2
        assert set(np.flatnonzero(np.isin(writer, list(held)))) == set(fold.held)  # forgeries go with the writer
        assert held.isdisjoint(writer[cross.train_rows(k)])
        genuine = fold.kind == GENUINE
        assert (y[fold.i[genuine]] == y[fold.j[genuine]]).all() and not forged[fold.i[genuine]].any()
        skilled = fold.kind == FORGERY
        assert skilled.sum() == 2 * 4 * 4  # every genuine × forgery pair of each of the two writers
        assert (writer[fold.i[skilled]] == writer[fold.j[skilled]]).all()
        assert (~forged[fold.i[skilled]] & forged[fold.j[skilled]]).all()
        random = fold.kind == IMPOSTOR
        assert (writer[fold.i[random]] != writer[fold.j[random]]).all()
        # Two forgeries of one writer make no pair at all.
        assert not (forged[fold.i] & forged[fold.j]).any()


def fast(fast_train: TrainConfig, **kw: object) -> TrainConfig:
    return replace(fast_train, family="siamese", **kw)  # type: ignore[arg-type]


def test_train_cross_fits_then_trains_the_final_model_on_every_identity(
    tmp_path: Path, fast_train: TrainConfig
) -> None:
    write_signatures(tmp_path / "sigs", writers=4, per_label=4)
    tasks: list[str] = []
    encoder = train_on_folder(tmp_path / "sigs", fast(fast_train, epochs=3), lambda task, *_: tasks.append(task))
    assert any(t.startswith("fold 1/2:") for t in tasks) and any(t.startswith("fold 2/2:") for t in tasks)
    assert any(t.startswith("final model") for t in tasks)
    record = encoder.threshold
    assert record is not None and record["split"] == "cross-fitted"
    calibration = record["calibration"]
    assert calibration["method"] == "cross-fitted" and calibration["folds"] == 2 and calibration["identities"] == 4
    assert calibration["pairs"]["skilled_forgery"] == 4 * 4 * 4 and calibration["pairs"]["genuine"] == 4 * 6
    cross_fit = encoder.training["cross_fit"]
    chosen = cross_fit["chosen_epoch"]
    assert 1 <= chosen <= 3 and len(encoder.history) == chosen == calibration["epochs"]
    assert len(cross_fit["pooled_eer"]) == 3 and [len(c) for c in cross_fit["fold_eer"]] == [3, 3]
    assert [h["val_eer"] for h in encoder.history] == cross_fit["pooled_eer"][:chosen]
    assert encoder.training["validation"]["split"] == "cross-fitted"
    p = metrics.match_probability(np.array([0.0, record["value"], 2.0]), record["probability"], record["value"])
    assert 0.5 < p[0] < 1 and p[1] == 0.5 and 0 < p[2] < 0.5


def test_the_time_limit_bounds_folds_and_final_model_together(tmp_path: Path, fast_train: TrainConfig) -> None:
    write_signatures(tmp_path / "sigs", writers=4, per_label=4)
    encoder = train_on_folder(tmp_path / "sigs", fast(fast_train, epochs=10_000, max_seconds=3))
    assert encoder.training["seconds"] < 3 + 10  # each model may finish its batch and score its epoch
    assert encoder.threshold is not None and len(encoder.history) < 10_000


def test_few_identities_are_not_calibrated_on_unseen_identities(tmp_path: Path, fast_train: TrainConfig) -> None:
    write_folder(tmp_path / "imgs", per_class=8)  # three labels: too few to hold any out
    encoder = train_on_folder(tmp_path / "imgs", fast(fast_train, epochs=2, val_fraction=0.3))
    record = encoder.threshold
    assert record is not None and record["split"] == "images"
    calibration = record["calibration"]
    assert calibration["unseen_identities"] is False and "only 3 identities" in calibration["reason"]
    assert record["eer"] is None and record["far"] is None
    assert "curve" not in record and "probability" not in record and "far_1%" not in record
    model = tmp_path / "m"
    encoder.save(model)
    a, b = tmp_path / "imgs" / "hbars" / "0.png", tmp_path / "imgs" / "hbars" / "1.png"
    text = invoke("verify", a, b, "-m", model)
    assert text.exit_code in (0, 1), text.output
    assert "NOT calibrated on unseen identities" in text.output and "only 3 identities" in text.output
    data = json.loads(invoke("verify", a, b, "-m", model, "--json").stdout)
    assert data["calibration"]["unseen_identities"] is False and data["far"] is None and data["probability"] is None
    refused = invoke("verify", a, b, "-m", model, "--far", "0.01")
    assert refused.exit_code == 2 and "not calibrated on unseen identities" in refused.output


@pytest.mark.parametrize("folds", ["0", "x"])
def test_bad_folds_are_refused(tmp_path: Path, folds: str) -> None:
    write_folder(tmp_path / "imgs", per_class=2)
    result = invoke("train", tmp_path / "imgs", "--family", "siamese", "--folds", folds, "--out", tmp_path / "m")
    assert result.exit_code == 2 and "folds" in result.output
