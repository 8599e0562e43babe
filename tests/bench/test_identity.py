"""The identity protocol of bench/quality.py's verification rows (faces, signatures), on synthetic files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.classics import Classic, chi_squared, lbp_histograms, load_face, load_images, load_signature
from bench.datasets import copy_identities, identity_folders
from bench.identity import assign_folds, errors_at, forgery_pairs, identity_bootstrap, impostor_pairs

WRITERS = [f"{n:03d}" for n in range(49, 63)]


def signature_tree(root: Path, per_folder: int = 1) -> Path:
    for writer in WRITERS:
        for folder in (writer, f"{writer}_forg"):
            (root / folder).mkdir(parents=True)
            for k in range(per_folder):
                Image.new("L", (8, 4), 255).save(root / folder / f"{k:02d}_{writer}.png")
    return root


def test_folds_keep_a_writer_and_its_forgeries_together(tmp_path: Path) -> None:
    identities = identity_folders(signature_tree(tmp_path / "data"))
    assert sorted(identities) == WRITERS
    assert all([f.name for f in identities[w]] == [w, f"{w}_forg"] for w in WRITERS)
    folds = assign_folds(list(identities), 3)
    held = [name for fold in folds for name in fold]
    assert sorted(held) == WRITERS and len(held) == len(set(held))  # every writer in exactly one fold
    assert sorted(len(f) for f in folds) == [4, 5, 5]
    assert folds == assign_folds(list(reversed(WRITERS)), 3)  # deterministic, whatever the input order
    shuffled = [WRITERS[k] for k in np.random.default_rng(0).permutation(len(WRITERS))]
    assert folds == [sorted(shuffled[k::3]) for k in range(3)]
    for k, heldout in enumerate(folds):
        train = copy_identities(tmp_path / f"fold{k}", identities, [w for w in WRITERS if w not in heldout])
        copied = {p.name for p in train.iterdir()}
        expected = {f for w in WRITERS if w not in heldout for f in (w, f"{w}_forg")}
        assert copied == expected  # both folders of each training writer, neither of a held-out one


def test_faces_folds_are_seven_people_each() -> None:
    folds = assign_folds([f"s{n}" for n in range(1, 29)], 4)
    assert [len(f) for f in folds] == [7, 7, 7, 7]
    assert sorted(n for f in folds for n in f) == sorted(f"s{n}" for n in range(1, 29))


def test_signature_pairs_are_genuine_pairs_against_own_forgeries() -> None:
    genuine = {w: [Path(w, f"g{k}.png") for k in range(12)] for w in ("049", "050")}
    forged = {w: [Path(f"{w}_forg", f"f{k}.png") for k in range(12)] for w in ("049", "050")}
    pairs = forgery_pairs(genuine, forged)
    for writer in ("049", "050"):
        mine = pairs.owner == writer
        assert int((pairs.same & mine).sum()) == 66
        assert int((~pairs.same & mine).sum()) == 144
    first = [pairs.files[i] for i in pairs.i]
    second = [pairs.files[j] for j in pairs.j]
    for a, b, same, owner in zip(first, second, pairs.same, pairs.owner, strict=True):
        assert a in genuine[owner]  # every pair starts from a genuine signature of its owner
        assert (b in genuine[owner]) if same else (b in forged[owner])
        assert a != b
    assert len({(a, b) for a, b in zip(pairs.i, pairs.j, strict=True)}) == len(pairs.i)  # no pair twice


def test_face_pairs_are_genuine_and_four_times_as_many_impostors() -> None:
    people = {p: [Path(p, f"{k}.pgm") for k in range(10)] for p in ("s1", "s2", "s3")}
    pairs = impostor_pairs(people, np.random.default_rng(0))
    who = np.array([f.parent.name for f in pairs.files])
    assert pairs.counts() == {"genuine": 3 * 45, "impostor": 4 * 3 * 45}
    assert np.all((who[pairs.i] == who[pairs.j]) == pairs.same)
    assert np.all(who[pairs.i] == pairs.owner)


def test_identity_bootstrap_interval_contains_the_estimate() -> None:
    rng = np.random.default_rng(1)
    owner = np.repeat([f"w{k}" for k in range(10)], 50)
    same = np.tile(np.r_[np.ones(10, bool), np.zeros(40, bool)], 10)
    distances = rng.normal(size=len(same)) + np.where(same, 0.0, 1.5)
    out = identity_bootstrap([(distances, same, owner)], resamples=300)
    for key in ("eer", "roc_auc"):
        value, low, high = out[key]
        assert low <= value <= high and low < high
    assert 0.1 < out["eer"][0] < 0.4


def test_identity_bootstrap_resamples_identities_not_pairs() -> None:
    # One identity: every resample draws it, with all its pairs, so the interval is the point (a bootstrap over
    # pairs would spread).
    rng = np.random.default_rng(2)
    same = np.r_[np.ones(30, bool), np.zeros(60, bool)]
    distances = rng.normal(size=90) + np.where(same, 0.0, 1.0)
    out = identity_bootstrap([(distances, same, np.full(90, "s1"))], resamples=100)
    assert out["eer"][0] == out["eer"][1] == out["eer"][2]


def test_folds_are_scored_each_on_its_own_scale() -> None:
    # Two fold models that each separate their pairs perfectly, on different scales: fold A's genuine pairs lie
    # in [0, 0.4] and its impostors in [0.6, 1]; fold B's in [1.2, 1.6] and [1.8, 2.2]. Each fold's EER is 0, so
    # the mean is 0; pooled, A's impostors fall below B's genuine pairs and no one threshold separates them.
    rng = np.random.default_rng(3)
    owner = np.repeat([f"p{k}" for k in range(4)], 25)
    same = np.tile(np.r_[np.ones(5, bool), np.zeros(20, bool)], 4)
    fold_a = np.where(same, rng.uniform(0, 0.4, len(same)), rng.uniform(0.6, 1.0, len(same)))
    out = identity_bootstrap([(fold_a, same, owner), (fold_a + 1.2, same, owner)], resamples=50)
    assert out["eer"] == [0.0, 0.0, 0.0]
    assert out["pooled_eer"][0] > 0.1


def test_errors_at_a_threshold() -> None:
    counts = errors_at(np.array([0.1, 0.5, 0.2, 0.9]), np.array([True, True, False, False]), 0.3)
    assert counts == {"false_accepts": 1, "impostor": 2, "false_rejects": 1, "genuine": 2}


def test_lbp_chi_squared_is_zero_for_identical_images_and_symmetric(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    paths = []
    for k in range(3):
        paths.append(tmp_path / f"{k}.pgm")
        Image.fromarray(rng.integers(0, 256, (24, 20), dtype=np.uint8)).save(paths[-1])
    images = np.stack([load_face(paths[0]), load_face(paths[0]), load_face(paths[1]), load_face(paths[2])])
    h = lbp_histograms(images)
    assert h.shape == (4, 16 * 10)
    assert np.allclose(h.reshape(4, 16, 10).sum(2), 1.0)
    assert chi_squared(h[:1], h[1:2])[0] == 0.0
    d_ab, d_ba = chi_squared(h[2:3], h[3:4])[0], chi_squared(h[3:4], h[2:3])[0]
    assert d_ab == d_ba > 0
    model = Classic("lbp", "faces").fit(images, ["a", "a", "b", "c"])
    z = model.features(images)
    assert model.distance(z[:1], z[1:2])[0] == 0.0 and model.distance(z[2:3], z[3:4])[0] == d_ab


def test_signature_is_cropped_to_its_ink_and_inverted(tmp_path: Path) -> None:
    page = np.full((80, 200), 250, np.uint8)
    page[10:30, 120:160] = 20  # ink in a corner, twice as wide as high
    Image.fromarray(page).save(tmp_path / "sig.png")
    out = load_signature(tmp_path / "sig.png", (16, 32))
    assert out.shape == (16, 32)
    assert out.min() >= 0 and out.mean() > 0.8  # the ink fills the frame, high where ink is
    assert load_images([tmp_path / "sig.png"], "signatures").shape == (1, 128, 256)


def test_unknown_classic_row_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown classic row"):
        Classic("sift", "faces")


def test_merge_keeps_earlier_rows_of_every_data_set() -> None:
    from bench.quality import merged

    base = {"date": "d0", "command": "c0", "faces": {"pixels": 1, "pca": 2}, "fashion": {"vae": 3}}
    report = {"date": "d1", "command": "c1", "faces": {"pca": 20, "siamese:contrastive": 4}, "signatures": {"lbp": 5}}
    out = merged(report, base)
    assert out["faces"] == {"pixels": 1, "pca": 20, "siamese:contrastive": 4}
    assert out["fashion"] == {"vae": 3}
    assert out["signatures"] == {"lbp": 5}
    assert out["updates"] == [{"date": "d1", "command": "c1"}]
