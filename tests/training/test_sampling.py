"""Labels, validation splits, P×K batches, verification pairs and augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from simsearch.training.augment import add_transformed_classes, augment, class_symmetries
from simsearch.training.sampling import (
    FORGERY,
    GENUINE,
    IMPOSTOR,
    MIN_IDENTITIES_TO_HOLD_OUT,
    encode_labels,
    forged_labels,
    identity_groups,
    identity_of,
    identity_pairs,
    labels_are_identities,
    pk_batches,
    similar_pk_batches,
    split_for_validation,
    verification_pairs,
)


def test_encode_labels() -> None:
    y, classes = encode_labels(["b", None, "a", "b"])
    assert classes == ["a", "b"] and y.tolist() == [1, -1, 0, 1]


def test_many_identities_hold_out_whole_labels() -> None:
    y = np.repeat(np.arange(40), 5)
    split = split_for_validation(y, 0.15, seed=0)
    assert split.mode == "identities"
    assert set(y[split.train]).isdisjoint(set(y[split.val]))
    assert len(set(y[split.val])) == 6 and len(split.train) + len(split.val) == 200


def test_few_labels_hold_out_images_of_every_label() -> None:
    y = np.repeat(np.arange(MIN_IDENTITIES_TO_HOLD_OUT - 10), 30)
    split = split_for_validation(y, 0.1, seed=0)
    assert split.mode == "images" and len(split.val) == 30
    assert set(y[split.train]) == set(y)
    assert np.intersect1d(split.train, split.val).size == 0


def test_unlabelled_split() -> None:
    split = split_for_validation(np.full(50, -1), 0.2, seed=1)
    assert split.mode == "unlabelled" and len(split.val) == 10


def test_pk_batches_hold_p_labels_times_k_images() -> None:
    y = np.concatenate([np.repeat(np.arange(8), 6), [3, 3]])  # label 3 has 8 images
    batches = pk_batches(y, p=4, k=3, rng=np.random.default_rng(0))
    assert len(batches) == 5  # ceil(50 / 12)
    for batch in batches:
        labels, counts = np.unique(y[batch], return_counts=True)
        assert len(labels) == 4 and (counts == 3).all()


def test_pk_batches_sample_with_replacement_when_a_label_is_small() -> None:
    y = np.array([0, 0, 1, 1, 1, 1])
    for batch in pk_batches(y, p=2, k=4, rng=np.random.default_rng(0)):
        assert (np.unique(y[batch], return_counts=True)[1] == 4).all()


def test_verification_pairs() -> None:
    y = np.array([0, 0, 0, 1, 1, 2, -1])
    i, j, same = verification_pairs(y, np.random.default_rng(0), impostor_ratio=2)
    genuine = {(int(a), int(b)) for a, b, s in zip(i, j, same, strict=True) if s}
    assert genuine == {(0, 1), (0, 2), (1, 2), (3, 4)}
    assert (~same).sum() == 8
    assert (y[i[~same]] != y[j[~same]]).all() and (y[i] >= 0).all() and (y[j] >= 0).all()


def test_augment_keeps_shape_is_seeded_and_vanishes_at_strength_zero() -> None:
    x = torch.randn(6, 1, 12, 20)
    a = augment(x, torch.Generator().manual_seed(3))
    b = augment(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.allclose(a, x, atol=1e-2)
    identity = augment(x, torch.Generator().manual_seed(3), strength=0.0)
    torch.testing.assert_close(identity, x, atol=1e-5, rtol=0)


def test_class_augment_makes_new_labels_of_exact_turns_and_mirrors() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 1, 5, 5)).astype(np.float32)
    y = np.array([0, 0, 1, 1, 2, -1])
    train = np.array([0, 1, 2, 5])  # rows 3 and 4 held out; row 5 has no label
    assert class_symmetries("none") == [(0, False)]
    assert len(class_symmetries("rot4")) == 4 and len(set(class_symmetries("rot4flip"))) == 8
    for mode, n in (("rot4", 4), ("rot4flip", 8)):
        xa, ya, rows = add_transformed_classes(x, y, train, mode)
        labelled = np.array([0, 1, 2])
        assert len(xa) == len(x) + (n - 1) * 3 and len(ya) == len(xa)
        np.testing.assert_array_equal(xa[: len(x)], x)  # originals first, row numbers unchanged
        np.testing.assert_array_equal(ya[: len(x)], y)
        assert rows[:4].tolist() == train.tolist() and len(rows) == 4 + (n - 1) * 3
        for t, (turns, mirrored) in enumerate(class_symmetries(mode)[1:], start=1):
            copies = rows[4 + (t - 1) * 3 : 4 + t * 3]
            expected = np.rot90(x[labelled], turns, axes=(2, 3))
            np.testing.assert_array_equal(xa[copies], expected[..., ::-1] if mirrored else expected)
            assert ya[copies].tolist() == (y[labelled] + 3 * t).tolist()  # a new label per symmetry
        assert len(np.unique(ya[rows][ya[rows] >= 0])) == 2 * n  # labels 0 and 1, times n symmetries
    xa, ya, rows = add_transformed_classes(x, y, train, "none")
    assert xa is x and ya is y and rows is train


def test_class_augment_of_the_turns_is_exact_rot90() -> None:
    x = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 1, 3, 3)
    xa, ya, _ = add_transformed_classes(x, np.array([0, 1]), np.array([0, 1]), "rot4")
    np.testing.assert_array_equal(xa[2, 0], np.rot90(x[0, 0]))  # one quarter turn, anticlockwise
    np.testing.assert_array_equal(xa[4, 0], x[0, 0, ::-1, ::-1])  # half a turn
    assert ya.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    with pytest.raises(ValueError, match="square"):
        add_transformed_classes(np.zeros((2, 1, 3, 4), np.float32), np.array([0, 1]), np.array([0, 1]), "rot4")
    with pytest.raises(ValueError, match="rot4flip"):
        class_symmetries("rot3")


def test_similar_pk_batches_group_nearest_labels() -> None:
    y = np.repeat(np.arange(8), 5)
    # labels 0-3 are alike, and so are labels 4-7: each label's neighbours are its own half first
    neighbours = np.array([sorted(range(8), key=lambda j, i=i: (j // 4 != i // 4, abs(j - i))) for i in range(8)])
    batches = similar_pk_batches(y, 4, 3, 4, neighbours, np.random.default_rng(0))
    assert len(batches) == math.ceil(40 / 12)
    for batch in batches:
        labels = y[batch].reshape(4, 3)
        assert (labels == labels[:, :1]).all()  # k images of each label, in order
        assert len(set(labels[:, 0])) == 4 and len({int(c) // 4 for c in labels[:, 0]}) == 1  # one half only
    pairs = similar_pk_batches(y, 4, 2, 2, neighbours, np.random.default_rng(1))
    for batch in pairs:
        firsts = y[batch][::2]
        assert len(set(firsts)) == 4 and firsts[0] // 4 == firsts[1] // 4 and firsts[2] // 4 == firsts[3] // 4


def test_identity_of_finds_the_writer_a_forgery_label_forges() -> None:
    assert identity_of("049_forg") == ("049", True)
    assert identity_of("049_FORGED") == ("049", True)
    assert identity_of("w7-forgeries") == ("w7", True)
    assert identity_of("001/forged") == ("001", True)
    assert identity_of("forgeries/001") == ("001", True)
    assert identity_of("001/genuine") == ("001", False)
    assert identity_of("s12") == ("s12", False)
    assert identity_of("forged") == ("forged", False)  # nothing but the word: an ordinary label
    assert identity_of("_forg") == ("_forg", False)
    assert identity_of("Greek/character01") == ("Greek/character01", False)


def test_identity_groups_put_siblings_together() -> None:
    classes = ["001/forged", "001/genuine", "049", "049_forg", "050", "s1"]
    groups = identity_groups(classes)
    assert groups[0] == groups[1] and groups[2] == groups[3]
    assert len(set(groups.tolist())) == 4
    assert forged_labels(classes).tolist() == [True, False, False, True, False, False]


def test_labels_are_identities_unless_few_and_large() -> None:
    def rule(n_labels: int, per_label: int) -> bool:
        return labels_are_identities(np.repeat(np.arange(n_labels), per_label), np.arange(n_labels))

    assert rule(28, 10) and rule(4, 24) and rule(964, 20) and rule(25, 500)  # people, signers, characters
    assert not rule(10, 300)  # ten clothing classes
    assert not labels_are_identities(np.full(5, -1), np.zeros(0, np.int64))
    # A writer and their forgeries are one group: 20 labels, 10 groups, large labels → classes.
    y = np.repeat(np.arange(20), 150)
    assert labels_are_identities(y, np.arange(20)) and not labels_are_identities(y, np.arange(20) // 2)


def test_an_identity_split_holds_out_siblings_together() -> None:
    classes = [f"{w:03d}{suffix}" for w in range(30) for suffix in ("", "_forg")]
    y = np.repeat(np.arange(60), 3)
    split = split_for_validation(y, 0.2, seed=0, groups=identity_groups(classes))
    writer = np.array([classes[c][:3] for c in y])
    assert split.mode == "identities" and len(set(writer[split.val])) == 6
    assert set(writer[split.val]).isdisjoint(writer[split.train])
    # Fewer than 20 identities: images unless told to hold out identities (two at least, two kept to train on).
    few = np.repeat(np.arange(4), 5)
    assert split_for_validation(few, 0.15, seed=0).mode == "images"
    forced = split_for_validation(few, 0.15, seed=0, by_identity=True)
    assert forced.mode == "identities" and len(set(few[forced.val])) == 2 and len(set(few[forced.train])) == 2


def test_identity_pairs_of_writers_and_forgeries() -> None:
    classes = ["a", "a_forg", "b", "b_forg", "c"]
    y = np.array([0, 0, 0, 1, 1, 2, 2, 3, 4, 4, -1])
    i, j, kind = identity_pairs(y, identity_groups(classes), forged_labels(classes), np.random.default_rng(0))
    pairs = {kind_: {(int(a), int(b)) for a, b, k in zip(i, j, kind, strict=True) if k == kind_} for kind_ in (0, 1, 2)}
    assert pairs[GENUINE] == {(0, 1), (0, 2), (1, 2), (5, 6), (8, 9)}  # never (3, 4): two forgeries of a
    assert pairs[FORGERY] == {(r, f) for r in (0, 1, 2) for f in (3, 4)} | {(5, 7), (6, 7)}
    impostors = np.flatnonzero(kind == IMPOSTOR)
    assert len(impostors) == 4 * 5
    group = identity_groups(classes)[y]
    assert (group[i[impostors]] != group[j[impostors]]).all()
    assert not np.isin(np.r_[i[impostors], j[impostors]], [3, 4, 7, 10]).any()  # genuine images only
