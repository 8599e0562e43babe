"""``eval QUERIES --name C --gallery collection``: labelled queries against an existing collection (figures against a
brute-force count, a query that is in the collection left out of its own answer, labels the collection lacks), the
options it refuses, and the vote options of the folder evaluation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from simsearch.collection import Collection
from simsearch.embedding import embed_files
from simsearch.errors import DataError, UsageError
from simsearch.evaluation import EvalConfig, evaluate, evaluate_collection
from simsearch.io import find_images
from simsearch.models.encoder import Encoder
from simsearch.search import Searcher, vote
from tests.conftest import calibrated_pixels_model, write_folder
from tests.helpers import error_lines, invoke


@pytest.fixture
def setup(image_folder: Path, quick_tmp: Path) -> tuple[Path, Path]:
    """A pixels collection of ``image_folder`` (15 images) and a folder of queries: 4 new images of each label, one
    image the collection holds (blob/0.png, as blob/copy.png), and a label it lacks (zz)."""
    home = quick_tmp / "home"
    result = invoke("index", image_folder, "--home", home, "--model", "pixels", "--device", "cpu")
    assert result.exit_code == 0, result.output
    queries = quick_tmp / "queries"
    write_folder(queries, per_class=4, seed=7)
    shutil.copy(image_folder / "blob" / "0.png", queries / "blob" / "copy.png")
    (queries / "zz").mkdir()
    shutil.copy(image_folder / "vbars" / "1.png", queries / "zz" / "0.png")
    return home, queries


def brute_force(home: Path, queries: Path, k: int, rule: str) -> tuple[list[bool], list[bool]]:
    """(vote right, nearest right) per query by numpy over every stored embedding, the query's own content left out."""
    snapshot = Collection(home / "default").load()
    stored = np.stack(snapshot.meta.column("embedding").to_pylist()).astype(np.float32)
    labels = snapshot.meta.column("label").to_pylist()
    hashes = snapshot.meta.column("sha256").to_pylist()
    encoder = Encoder.load(snapshot.encoder_dir)
    entries = find_images(queries)[0]
    z = embed_files(encoder, [e.path for e in entries]).embeddings
    import hashlib

    votes, nearest = [], []
    for entry, q in zip(entries, z, strict=True):
        sha = hashlib.sha256(entry.path.read_bytes()).hexdigest()
        d = np.linalg.norm(stored - q, axis=1)
        d[[h == sha for h in hashes]] = np.inf
        order = np.argsort(d, kind="stable")[:k]
        result = vote([labels[i] for i in order], d[order], rule)
        votes.append(result.label == entry.label)
        nearest.append(labels[order[0]] == entry.label)
    return votes, nearest


@pytest.mark.parametrize("rule", ["majority", "weighted"])
def test_figures_match_a_brute_force_count(setup: tuple[Path, Path], rule: str) -> None:
    home, queries = setup
    report = evaluate_collection(queries, Searcher(Collection(home / "default"), use_gpu=False), k=5, vote=rule)
    votes, nearest = brute_force(home, queries, 5, rule)
    assert report.queries == 14 and report.labels == 4 and report.gallery == 15 and report.vote == rule
    assert report.figures["vote_accuracy"][0] == pytest.approx(np.mean(votes))
    assert report.figures["nn1_accuracy"][0] == pytest.approx(np.mean(nearest))
    low, high = report.figures["vote_accuracy"][1:]
    assert low <= report.figures["vote_accuracy"][0] <= high
    by_label = {row.label: row for row in report.per_label}
    assert (by_label["zz"].queries, by_label["zz"].vote_accuracy, by_label["zz"].in_collection) == (1, 0.0, 0)
    assert (by_label["blob"].queries, by_label["blob"].in_collection) == (5, 5)
    assert report.left_out == 2  # blob/copy.png and zz/0.png (a copy of vbars/1.png)
    assert any("1 of 14 queries have a label the collection does not hold (zz)" in note for note in report.notes)
    assert any("2 of 14 queries are images of the collection" in note for note in report.notes)
    copy = next(r for r in report.results if r.query == "blob/copy.png")
    assert copy.neighbours[0].path != "blob/0.png" and copy.left_out == 1  # never itself


def test_eval_against_a_collection_on_the_command_line(setup: tuple[Path, Path]) -> None:
    home, queries = setup
    result = invoke("eval", queries, "--home", home, "--gallery", "collection", "-k", "5", "--vote", "majority")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith(
        f"{queries}: 14 queries, 4 labels, against collection {home / 'default'} (15 images); k=5, majority vote."
    )
    for row in ("k-NN vote accuracy", "1-NN accuracy", "precision@5", "queries whose vote tied", "Per label"):
        assert row in out
    assert "Note: 1 of 14 queries have a label the collection does not hold (zz)" in out
    data = json.loads(invoke("eval", queries, "--home", home, "--gallery", "collection", "-k", "40", "--json").stdout)
    assert data["gallery"] == "collection" and data["vote"] == "weighted" and data["queries"] == 14
    assert {"vote_accuracy", "nn1_accuracy", "precision_at_k", "vote_ties"} <= set(data["figures"])
    assert [row["label"] for row in data["per_label"]] == ["blob", "hbars", "vbars", "zz"]
    assert "-k 40 is more than the 15 images in the collection: each answer holds at most 15" in data["notes"]


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--split", "0.2"], "--split"),
        (["--open-set"], "--open-set"),
        (["--far", "0.1"], "--far"),
        (["--threshold", "0.4"], "--threshold"),
        (["--report", "out"], "--report"),
    ],
)
def test_options_a_collection_gallery_cannot_use_are_refused(
    setup: tuple[Path, Path], args: list[str], flag: str
) -> None:
    home, queries = setup
    result = invoke("eval", queries, "--home", home, "--gallery", "collection", *args)
    assert result.exit_code == 2
    assert error_lines(result) == [
        f"Error: {flag} does not apply with --gallery collection — leave it out (the collection answers with its own "
        "encoder and images), or use --gallery folder"
    ]


def test_a_bad_gallery_and_unreadable_queries_are_one_error_line(setup: tuple[Path, Path], tmp_path: Path) -> None:
    home, _ = setup
    result = invoke("eval", tmp_path, "--home", home, "--gallery", "shelf")
    assert result.exit_code == 2 and error_lines(result) == [
        "Error: --gallery must be folder or collection, not 'shelf'"
    ]
    broken = tmp_path / "broken" / "a"
    broken.mkdir(parents=True)
    (broken / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    searcher = Searcher(Collection(home / "default"), use_gpu=False)
    with pytest.raises(DataError, match="none of the labelled images could be read"):
        evaluate_collection(tmp_path / "broken", searcher)
    with pytest.raises(DataError, match="no labelled images"):
        evaluate_collection(tmp_path / "broken" / "a", searcher)
    with pytest.raises(UsageError, match="vote must be one of"):
        evaluate_collection(tmp_path / "broken", searcher, vote="best")


def test_folder_eval_votes_as_asked_and_counts_ties(tmp_path: Path) -> None:
    """The folder evaluation takes the vote rule too; 1-NN accuracy (precision@1) stands beside the vote accuracy,
    ties are counted, and a k larger than the gallery is said."""
    folder = tmp_path / "images"
    write_folder(folder, per_class=4)
    model = Encoder.load(calibrated_pixels_model(folder, tmp_path / "model"))
    majority = evaluate(folder, model, EvalConfig(k=6, baselines=False, vote="majority", bootstrap=10))
    weighted = evaluate(folder, model, EvalConfig(k=6, baselines=False, vote="weighted", bootstrap=10))
    assert majority.vote == "majority" and weighted.to_json()["vote"] == "weighted"
    # Ties are counted; weighing the neighbours by distance leaves no more of them.
    assert isinstance(majority.results[0].figures["vote_ties"], int)
    assert weighted.results[0].figures["vote_ties"] <= majority.results[0].figures["vote_ties"]
    capped = evaluate(folder, model, EvalConfig(k=40, baselines=False, bootstrap=10))
    assert (
        capped.notes[0]
        == "k = 40 is more than the 11 gallery images a query can see: votes and the figures at k use 11."
    )
    with pytest.raises(UsageError, match="vote must be one of majority, weighted"):
        EvalConfig(vote="soft")
    result = invoke("eval", folder, "--model", tmp_path / "model", "--no-baselines", "--bootstrap", "10")
    assert result.exit_code == 0, result.output
    assert "1-NN accuracy (precision@1)" in result.stdout and "Votes: weighted." in result.stdout
