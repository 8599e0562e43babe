"""Searching within a subset (``Filter``: labels and ``where`` conditions) on every index type, an indexed image as
the query (``query_ids``), the votes (majority, weighted, ties), and how many images a query can reach."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from simsearch import search, vectors
from simsearch.collection import SKIPPED_SCHEMA, Collection, meta_table
from simsearch.errors import CollectionError, UsageError
from simsearch.io import Preprocess
from simsearch.search import (
    Condition,
    Filter,
    Searcher,
    distance_weights,
    k_note,
    nearest_positions,
    nearest_rows,
    vote,
)
from simsearch.training import pixels_encoder

LABELS = ("ant", "bee", "cat", "dog", None)


def collection_of(
    path: Path, kind: str, n: int = 400, seed: int = 0, ids: np.ndarray | None = None
) -> tuple[Collection, np.ndarray, list]:
    """A collection of ``n`` clustered 16-d vectors (a pixels encoder of 4×4 grey images) with an index of type
    ``kind`` built and tuned as ``index`` builds it; labels cycle through ``LABELS`` (one in five unlabelled),
    paths through three folders, widths 10..19. Rows 0 and 1 hold the same content (a duplicate), whose sha256
    ends in zero bytes. Row r's id is 2r + 5 unless ``ids`` are given."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (12, 16)).astype(np.float32)
    x = (centres[rng.integers(0, 12, n)] + rng.normal(0, 0.3, (n, 16))).astype(np.float32)
    x[1] = x[0]
    ids = np.arange(n, dtype=np.int64) * 2 + 5 if ids is None else ids  # ids that are not row numbers
    labels = [LABELS[i % len(LABELS)] for i in range(n)]
    sha = [f"{i:064x}" for i in range(n)]
    sha[1] = sha[0]
    table = meta_table(
        {
            "id": ids, "path": [f"dir{i % 3}/{i}.png" for i in range(n)], "root": ["/r"] * n, "label": labels,
            "sha256": sha, "bytes": [100 + i for i in range(n)], "mtime": [0.0] * n,
            "width": [10 + i % 10 for i in range(n)], "height": [4] * n,
        },
        x,
        16,
    )  # fmt: skip
    index, spec, info = vectors.build_tuned(vectors.default_spec(kind, n, 16), x, ids)
    collection = Collection(path)
    with collection.lock():
        collection.commit(
            table,
            [],
            SKIPPED_SCHEMA.empty_table(),
            pixels_encoder(Preprocess(size=(4, 4), channels=1)),
            None,
            ["/r"],
            segments=None,
            index=None if kind == "flat" else index,
            index_info={**spec.to_json(), **info},
        )
    return collection, x, labels


def brute_force(x: np.ndarray, query: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    d = np.linalg.norm(x[rows] - query, axis=1)
    return rows[np.argsort(d, kind="stable")[:k]]


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> tuple[Collection, np.ndarray, list]:
    return collection_of(tmp_path_factory.mktemp("flat") / "c", "flat")


# --- filters ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("searching", [False, True], ids=["as-written", "as-searched"])
def test_conditions_test_their_column(flat: tuple[Collection, np.ndarray, list], searching: bool) -> None:
    collection, _, labels = flat
    meta = collection.load(searching=searching).meta
    n = meta.num_rows
    sha = [f"{0 if i == 1 else i:064x}" for i in range(n)]
    cases = {
        f"sha256={sha[7]}": [i == 7 for i in range(n)],
        f"sha256={sha[0]}": [i < 2 for i in range(n)],
        "sha256=nothex": [False] * n,
        "sha256~18f": ["18f" in s for s in sha],
        "sha256!~0000000a": ["0000000a" not in s for s in sha],
        "root=/r": [True] * n,
        "root~r": [True] * n,
        "root!=/r": [False] * n,
        "label=cat": [label == "cat" for label in labels],
        "label!=cat": [label != "cat" for label in labels],  # unlabelled images included
        "label=": [label is None for label in labels],
        " path ~ dir1/ ": [i % 3 == 1 for i in range(n)],
        "path!~dir1/": [i % 3 != 1 for i in range(n)],
        "width>=15": [10 + i % 10 >= 15 for i in range(n)],
        "width<12": [10 + i % 10 < 12 for i in range(n)],
        "id=9": [i * 2 + 5 == 9 for i in range(n)],
        "bytes>150": [100 + i > 150 for i in range(n)],
    }
    for text, expected in cases.items():
        np.testing.assert_array_equal(Condition.parse(text).mask(meta), expected, err_msg=text)
    both = Filter.parse(labels=["cat", "dog"], where=["width>=15"])
    assert both is not None and str(both) == "label=cat or label=dog, width>=15"
    expected = [label in ("cat", "dog") and 10 + i % 10 >= 15 for i, label in enumerate(labels)]
    np.testing.assert_array_equal(both.mask(meta), expected)
    assert Filter.parse() is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cat", "cannot read the filter 'cat'"),
        ("colour=red", "unknown column 'colour'"),
        ("width~3", "tests a number with '~'"),
        ("label>b", "orders text with '>'"),
        ("width>wide", "not a number"),
        ("height=", "not a number"),
    ],
)
def test_a_bad_condition_is_one_usage_error(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        Condition.parse(text)
    assert "\n" not in str(caught.value)


def test_a_filter_nothing_passes_names_the_labels(flat: tuple[Collection, np.ndarray, list]) -> None:
    searcher = Searcher(flat[0], use_gpu=False)
    with pytest.raises(UsageError, match=r"matches the filter label=cow — check it \(its labels: ant, bee, cat, dog\)"):
        searcher.query_embeddings(flat[1][:1], ["q"], 3, where=Filter.parse(labels=["cow"]))


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
@pytest.mark.parametrize("through_index", [False, True])
def test_filtered_search_answers_within_the_subset_on_every_index_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, through_index: bool
) -> None:
    """A small subset is searched exactly; a large one (here: every subset, EXACT_SUBSET = 0) through the index
    with an IDSelector and a widened breadth, which still finds nearly all the exact neighbours."""
    if through_index:
        monkeypatch.setattr(search, "EXACT_SUBSET", 0)
    collection, x, _ = collection_of(tmp_path / "c", kind)
    searcher = Searcher(collection, use_gpu=False)
    queries = x[:40] + np.random.default_rng(1).normal(0, 0.1, (40, 16)).astype(np.float32)
    for chosen in (Filter.parse(labels=["cat"]), Filter.parse(where=["path~dir2/", "width<13"])):
        assert chosen is not None
        rows = np.flatnonzero(chosen.mask(collection.load().meta))
        distances, found = searcher.search_embeddings(queries, 5, where=chosen)
        assert np.isin(found, rows).all()
        truth = np.array([brute_force(x, q, rows, 5) for q in queries])
        recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(found, truth, strict=True)])
        exact = kind == "flat" or not through_index
        assert recall == 1.0 if exact else recall >= 0.9, (kind, str(chosen), recall)
        assert np.all(np.diff(distances, axis=1) >= 0)
        np.testing.assert_allclose(distances, np.linalg.norm(x[found] - queries[:, None], axis=2), rtol=1e-5)


def test_a_gpu_brute_force_finds_what_the_cpu_one_does() -> None:
    """``nearest_positions`` (run on the GPU copy of the embeddings there) is device-agnostic: on CPU tensors it
    agrees with ``nearest_rows``, for both metrics."""
    import torch

    rng = np.random.default_rng(3)
    x, q = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(7, 8)).astype(np.float32)
    for metric in ("l2", "cosine"):
        xp, qp = vectors.prepare(x, metric), vectors.prepare(q, metric)
        on_torch = nearest_positions(torch, torch.from_numpy(qp), torch.from_numpy(xp), 6, metric).numpy()
        np.testing.assert_array_equal(on_torch, nearest_rows(q, x, 6, metric))
        rows = np.arange(3, 300, 2)
        subset = nearest_positions(torch, torch.from_numpy(qp), torch.from_numpy(xp), 6, metric, torch.from_numpy(rows))
        np.testing.assert_array_equal(subset.numpy(), nearest_rows(q, x, 6, metric, rows=rows))
        d = vectors.exact_distances(q, x[on_torch], metric)
        assert np.all(np.diff(d, axis=1) >= -1e-6)


def test_a_filtered_query_imports_no_pandas(flat: tuple[Collection, np.ndarray, list]) -> None:
    code = (
        "import sys, numpy as np\n"
        "from simsearch.search import Searcher, Filter\n"
        "from simsearch.store.collection import Collection\n"
        "s = Searcher(Collection(sys.argv[1]), use_gpu=False)\n"
        "r = s.query_embeddings(np.zeros((1, 16), np.float32), ['q'], 3, where=Filter.parse(['cat'], ['path~dir']))\n"
        "assert r[0].vote == 'cat', r[0]\n"
        "print('pandas' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(flat[0].path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# --- an indexed image as the query -----------------------------------------------------------------------------


def test_an_id_query_uses_the_stored_embedding_and_leaves_the_image_out(
    flat: tuple[Collection, np.ndarray, list],
) -> None:
    collection, x, _ = flat
    searcher = Searcher(collection, use_gpu=False)
    [first, third] = searcher.query_ids([5, 9], 4)  # rows 0 and 2
    assert first.query_id == 5 and first.query == "dir0/0.png" and first.left_out == 1
    ids_first = [n.id for n in first.neighbours]
    assert 5 not in ids_first and ids_first[0] == 7 and first.neighbours[0].distance == 0.0  # its duplicate stays
    truth = brute_force(x, x[2], np.setdiff1d(np.arange(len(x)), [2]), 4)
    assert [n.id for n in third.neighbours] == [int(r) * 2 + 5 for r in truth]
    assert third.to_json()["query_id"] == 9 and third.to_json()["left_out"] == 1
    # Within a filter: still never itself.
    [within] = searcher.query_ids([9], 3, where=Filter.parse(where=["path~dir2/"]))
    assert all(n.path.startswith("dir2/") for n in within.neighbours) and 9 not in [n.id for n in within.neighbours]
    with pytest.raises(UsageError, match=r"no image with id 6 \(its ids run from 5 to 803\)"):
        searcher.query_ids([6], 3)


def test_a_searcher_keeps_the_rows_lean_and_finds_them_by_content_and_by_id(tmp_path: Path) -> None:
    """What ``Collection.load(searching=True)`` keeps (no file times; each sha256 as 32 bytes; roots as a
    dictionary), content found by hash (duplicates and a hash that ends in zero bytes included), and ids in any
    order found by id (a sorted copy is made only when they are not increasing)."""
    n = 50
    for ids in (np.arange(n, dtype=np.int64) * 2 + 5, np.random.default_rng(1).permutation(n).astype(np.int64) * 3):
        collection, x, _ = collection_of(tmp_path / f"c{int(ids[0])}", "flat", n=n, ids=ids)
        written, searched = collection.load().meta, collection.load(searching=True).meta
        assert "mtime" in written.schema.names and "mtime" not in searched.schema.names
        assert searched.schema.field("sha256").type == pa.binary(32)
        assert searched.column("sha256").to_pylist() == [bytes.fromhex(s) for s in written.column("sha256").to_pylist()]
        assert pa.types.is_dictionary(searched.schema.field("root").type)
        assert searched.column("root").to_pylist() == written.column("root").to_pylist()
        g = Searcher(collection, use_gpu=False).current
        assert (g.order is None) == bool((np.diff(ids) > 0).all())
        np.testing.assert_array_equal(g.rows_with_content(f"{0:064x}"), [0, 1])  # ends in 32 zero bytes
        np.testing.assert_array_equal(g.rows_with_content(f"{7:064x}"), [7])
        assert len(g.rows_with_content(f"{n + 1:064x}")) == 0 and len(g.rows_with_content(None)) == 0
        np.testing.assert_array_equal(g.stored_embedding(f"{9:064x}"), x[9])
        assert g.stored_embedding(f"{n + 1:064x}") is None
        rows = np.random.default_rng(2).permutation(n)
        np.testing.assert_array_equal(g.rows_of(ids[rows]), rows)
        assert [g.row_of_id(int(i)) for i in ids[rows]] == list(rows)
        with pytest.raises(UsageError, match="no image with id"):
            g.row_of_id(int(ids.max()) + 1)


@pytest.mark.parametrize("sha256", ["z" * 64, "ab" * 31, "ab " * 21 + "a"])
def test_a_searcher_refuses_a_sha256_that_is_not_one(tmp_path: Path, sha256: str) -> None:
    collection, _, _ = collection_of(tmp_path / "c", "flat", n=3)
    table = collection.load().meta
    at = table.schema.get_field_index("sha256")
    table = table.set_column(at, table.schema.field("sha256"), pa.array([sha256] * 3))
    with collection.lock():
        collection.commit(
            table, [], SKIPPED_SCHEMA.empty_table(), collection.load_encoder(), None, ["/r"], segments=None
        )
    assert collection.load().meta.column("sha256")[0].as_py() == sha256  # a writer reads it as it is
    with pytest.raises(CollectionError, match=r"a collection file is unreadable .*sha256"):
        collection.load(searching=True)


def test_capacity_counts_the_images_a_query_can_reach(flat: tuple[Collection, np.ndarray, list]) -> None:
    searcher = Searcher(flat[0], use_gpu=False)
    cats = Filter.parse(labels=["cat"])
    assert searcher.capacity() == 400 and searcher.capacity(cats) == 80
    assert searcher.capacity(image_id=5) == 399
    assert searcher.capacity(cats, image_id=9) == 79 and searcher.capacity(cats, image_id=5) == 80  # 5 is an ant
    [answer] = searcher.query_ids([9], 100, where=cats)
    assert len(answer.neighbours) == 79
    assert (
        k_note(100, 79, "that can answer")
        == "⟨k⟩ 100 is more than the 79 images that can answer: each answer holds at most 79"
    )
    assert k_note(2, 1) == "⟨k⟩ 2 is more than the 1 image in the collection: each answer holds at most 1"
    assert k_note(79, 79) is None


# --- votes -----------------------------------------------------------------------------------------------------


def test_majority_vote_reports_a_tie_and_answers_with_the_nearest_tied_label() -> None:
    result = vote(["b", "a", "a", "b", None], rule="majority")
    assert (result.label, result.tie, result.counts, result.share) == ("b", ("b", "a"), {"b": 2, "a": 2}, 0.4)
    clear = vote(["a", "b", "b"], rule="majority")
    assert (clear.label, clear.tie, clear.weights) == ("b", (), None)
    assert vote([None, None], rule="majority").label is None


def test_weighted_vote_follows_the_distances() -> None:
    # Two far "a" against one near "b": majority says a, the weighted vote b.
    labels, distances = ["b", "a", "a", "c"], [1.0, 3.0, 3.1, 3.2]
    assert vote(labels, distances, "majority").label == "a"
    weighted = vote(labels, distances, "weighted")
    assert weighted.label == "b" and weighted.tie == () and weighted.weights is not None
    assert list(weighted.weights) == ["b", "a", "c"] and weighted.counts == {"a": 2, "b": 1, "c": 1}
    assert weighted.weights["c"] == 0.0 and weighted.share == pytest.approx(1 / (1 + 0.3 / 2.2))
    # Dudani's weights: the nearest 1, the k-th 0, linear between; all 1 when the k are equally far.
    np.testing.assert_allclose(distance_weights([1.0, 2.0, 3.0]), [1.0, 0.5, 0.0])
    np.testing.assert_array_equal(distance_weights([2.0, 2.0]), [1.0, 1.0])
    assert vote(["a"], [0.0], "weighted").label == "a"  # k = 1: the nearest decides, as every rule agrees
    # Equal distances tie, and the tie is said.
    tied = vote(["x", "y", "z"], [1.0, 1.0, 2.0], "weighted")
    assert tied.tie == ("x", "y") and tied.label == "x"
    with pytest.raises(UsageError, match="vote must be one of majority, weighted, not 'plurality'"):
        vote(["a"], [1.0], "plurality")


def test_the_command_line_default_vote_is_the_librarys() -> None:
    from simsearch.cli import query

    assert query.DEFAULT_VOTE == search.DEFAULT_VOTE and search.DEFAULT_VOTE in search.VOTES


def test_answers_carry_the_vote_rule_and_its_tie(flat: tuple[Collection, np.ndarray, list]) -> None:
    collection, x, _ = flat
    searcher = Searcher(collection, use_gpu=False)
    [majority] = searcher.query_embeddings(x[3:4], ["q"], 10, vote="majority")
    [weighted] = searcher.query_embeddings(x[3:4], ["q"], 10, vote="weighted")
    assert majority.neighbours == weighted.neighbours
    assert majority.to_json()["vote_rule"] == "majority" and "weights" not in majority.to_json()
    assert weighted.to_json()["vote_rule"] == "weighted" and weighted.to_json()["weights"]
    expected = vote([n.label for n in majority.neighbours], rule="majority")
    assert majority.vote == expected.label and majority.tie == list(expected.tie)


def test_brute_force_works_in_chunks_without_a_copy_of_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """``nearest_rows`` gathers a few rows and queries at a time: the answer is the one a single pass gives."""
    rng = np.random.default_rng(4)
    x, q = rng.normal(size=(500, 8)).astype(np.float32), rng.normal(size=(9, 8)).astype(np.float32)
    rows = np.sort(rng.choice(500, 230, replace=False))
    whole = nearest_rows(q, x, 7, "l2", rows=rows)
    monkeypatch.setattr(search, "BRUTE_FORCE_ROWS", 50)
    monkeypatch.setattr(search, "BRUTE_FORCE_QUERIES", 4)
    np.testing.assert_array_equal(nearest_rows(q, x, 7, "l2", rows=rows), whole)
    import torch

    on_torch = nearest_positions(torch, torch.from_numpy(q), torch.from_numpy(x), 7, "l2", torch.from_numpy(rows))
    np.testing.assert_array_equal(on_torch.numpy(), whole)
    d = np.linalg.norm(x[rows][None] - q[:, None], axis=2)
    np.testing.assert_array_equal(whole, np.argsort(d, axis=1, kind="stable")[:, :7])
