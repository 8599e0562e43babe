"""Query a collection: nearest neighbours of images, and the label their votes give (unsupervised classification).

This is the public API the CLI calls::

    searcher = Searcher(Collection(Path("indexes/default")))
    results = searcher.query_files([Path("img.png")], k=9)
    results = searcher.query_ids([12], k=9)                        # an indexed image: its stored embedding
    results = searcher.query_files([Path("img.png")], k=9, where=Filter.parse(labels=["cat"], where=["path~2024/"]))
    searcher.reload_if_newer()  # a server: pick up what `index` has committed since

**Votes.** The k neighbours vote for a label (``vote``): ``majority`` (each neighbour one vote) or ``weighted``
(``distance_weights``: the nearest weighs 1, the k-th 0, the others linearly between). A tie is reported as one
(``Vote.tie`` names the tied labels); the label given as the answer is then the tied label met first, nearest
first. ``DEFAULT_VOTE`` was chosen by measurement (``bench/votes.py``).

**Filters.** ``Filter`` restricts a search to the images whose metadata match (``--label``, ``--where``). A subset
of at most ``EXACT_SUBSET`` images (or any subset of a flat index, or of an index held on a GPU) is searched
exactly, over its stored embeddings; a larger subset of an approximate CPU index is searched through the index
with a FAISS ``IDSelector`` and a search breadth widened by the inverse of the subset's share of the collection
(``bench/filters.py`` measured both ways on every index type). Either way answers are re-ranked by exact
distance, as every answer is.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from simsearch import vectors
from simsearch.embedding import check_metric, embed_files
from simsearch.errors import CollectionError, ImageError, ModelError, UsageError, option
from simsearch.io import find_images, source_names
from simsearch.models.encoder import Encoder
from simsearch.models.novelty import REMEDY, unfamiliar, unfamiliar_text
from simsearch.store.collection import Collection, embeddings_of, int64_column
from simsearch.store.formats import sha256_array, sha256_texts
from simsearch.votes import (  # noqa: F401 - re-exported: search is where callers find them
    DEFAULT_VOTE,
    VOTES,
    Vote,
    check_vote,
    distance_weights,
    tally,
    vote,
)


@dataclass(frozen=True)
class Neighbour:
    rank: int
    id: int
    distance: float
    path: str
    root: str
    label: str | None


def vote_label(labels: Sequence[str | None]) -> tuple[str | None, float, dict[str, int]]:
    """Majority label among ``labels`` (nearest first), its share of all of them, and the tally.

    A tie goes to the label whose first vote is nearest (``vote`` says which labels tied). Unlabelled neighbours
    count in the denominator.
    """
    result = vote(labels)
    return result.label, result.share, result.counts


@dataclass
class QueryResult:
    """The neighbours of one query, nearest first, and the label they vote for (None if none is labelled)."""

    query: str
    neighbours: list[Neighbour]
    vote: str | None = None
    vote_share: float = 0.0
    votes: dict[str, int] = field(default_factory=dict)
    #: Open set: the threshold the nearest neighbour was held to, and whether it was beyond it ("unknown").
    threshold: float | None = None
    unknown: bool = False
    #: Whether the query image is unlike the images the encoder was trained on (``models.novelty``); None when
    #: the encoder cannot tell (no novelty reference), or for a query given as an embedding.
    unfamiliar: bool | None = None
    #: The labels tied for first place (empty when one label leads); ``vote`` is then the first of them.
    tie: list[str] = field(default_factory=list)
    #: How the neighbours voted (``VOTES``), and for a weighted vote each label's summed weight.
    vote_rule: str = "majority"
    weights: dict[str, float] | None = None
    #: The query's id when it is an indexed image asked for by id (``Searcher.query_ids``), else None.
    query_id: int | None = None
    #: How many indexed images were left out of this answer as being the query itself (``query_ids``; and
    #: ``query_files`` with ``leave_out_indexed``: the images of the query's content).
    left_out: int = 0

    @property
    def reason(self) -> str | None:
        """Why an open-set query is "unknown": an unfamiliar input, or a nearest neighbour beyond the threshold."""
        if not self.unknown or self.threshold is None:
            return None
        if self.unfamiliar:
            return f"{unfamiliar_text(self.query)} — {REMEDY}"
        if not self.neighbours:
            return "no neighbours"
        return f"nearest {self.neighbours[0].distance:.4f} > threshold {self.threshold:.4f}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"query": self.query}
        if self.query_id is not None:
            out["query_id"] = self.query_id
        out |= {
            "vote": self.vote,
            "vote_share": self.vote_share,
            "votes": self.votes,
            "tie": self.tie,
            "vote_rule": self.vote_rule,
        }
        if self.weights is not None:
            out["weights"] = self.weights
        if self.left_out:
            out["left_out"] = self.left_out
        out |= {"neighbours": [n.__dict__ for n in self.neighbours], "unfamiliar": self.unfamiliar}
        if self.threshold is not None:
            out |= {"threshold": self.threshold, "unknown": self.unknown, "reason": self.reason}
        return out

    def hold_to(self, threshold: float) -> None:
        """Open-set answer: the query is "unknown" (no vote) when the nearest neighbour is beyond ``threshold``, or
        when the query is unlike the images the encoder was trained on (``unfamiliar``)."""
        self.threshold = threshold
        self.unknown = bool(self.unfamiliar) or not self.neighbours or self.neighbours[0].distance > threshold
        if self.unknown:
            self.vote, self.vote_share, self.tie = None, 0.0, []


#: The metadata columns a filter can test, and whether each holds numbers (compared with < <= > >=) or text
#: (tested with ~ "contains"). ``=`` and ``!=`` test either.
FILTER_COLUMNS = {
    "label": "text",
    "path": "text",
    "root": "text",
    "sha256": "text",
    "id": "number",
    "bytes": "number",
    "width": "number",
    "height": "number",
}
OPERATORS = ("!=", "<=", ">=", "!~", "=", "~", "<", ">")
_CONDITION = re.compile(r"^\s*([A-Za-z0-9_]+)\s*(!=|<=|>=|!~|=|~|<|>)\s*(.*?)\s*$", re.DOTALL)
FILTER_SYNTAX = (
    "write COLUMN=VALUE, COLUMN!=VALUE, COLUMN~TEXT (contains), COLUMN!~TEXT, or COLUMN<NUMBER (also <=, >, >=) "
    f"on {', '.join(FILTER_COLUMNS)}"
)

#: A filtered search over at most this many images is exact, over their stored embeddings: it then costs no more
#: than exact search over a collection of this size, which ``index --type auto`` keeps exact (``bench/filters.py``).
EXACT_SUBSET = vectors.EXACT_LIMIT


@dataclass(frozen=True)
class Condition:
    """One test on a metadata column: ``label=cat``, ``path~holiday/``, ``width>=100``. ``label=`` (nothing after
    the operator) matches images without a label."""

    column: str
    operator: str
    value: str

    def __str__(self) -> str:
        return f"{self.column}{self.operator}{self.value}"

    @classmethod
    def parse(cls, text: str) -> Condition:
        """``COLUMN OPERATOR VALUE``; spaces around the operator are ignored. ``UsageError`` when it is not one."""
        match = _CONDITION.match(text)
        if not match:
            raise UsageError(f"cannot read the filter {text!r}", remedy=FILTER_SYNTAX)
        column, operator, value = match.group(1).lower(), match.group(2), match.group(3)
        kind = FILTER_COLUMNS.get(column)
        if kind is None:
            raise UsageError(f"the filter {text!r} tests an unknown column {column!r}", remedy=FILTER_SYNTAX)
        if kind == "number":
            if operator in ("~", "!~"):
                raise UsageError(
                    f"the filter {text!r} tests a number with {operator!r}", remedy="use =, !=, <, <=, > or >="
                )
            try:
                float(value)
            except ValueError:
                raise UsageError(f"the filter {text!r} compares {column} with {value!r}, not a number") from None
        elif operator in ("<", "<=", ">", ">="):
            raise UsageError(
                f"the filter {text!r} orders text with {operator!r}", remedy="use =, !=, ~ (contains) or !~ on text"
            )
        return cls(column, operator, value)

    def mask(self, meta: pa.Table) -> np.ndarray:
        """Whether each row of ``meta`` passes (n,) bool. A missing label is the empty text."""
        import pyarrow.compute as pc

        column = meta.column(self.column)
        if pa.types.is_fixed_size_binary(column.type):  # a searcher's sha256 (Collection.load(searching=True))
            column = sha256_texts(column)
        elif pa.types.is_dictionary(column.type):  # a searcher's roots
            column = column.cast(column.type.value_type)
        if FILTER_COLUMNS[self.column] == "number":
            number = _scalar(pa.float64(), np.array([float(self.value)]).tobytes())
            test = {"=": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal, ">": pc.greater}
            test[">="] = pc.greater_equal
            return _bool_array(test[self.operator](column, number))
        if self.column == "label":
            column = pc.fill_null(column, _text(""))
        if self.operator in ("=", "!="):
            passed = pc.equal(column, _text(self.value))
        else:
            passed = pc.match_substring(column, self.value)
        result = _bool_array(passed)
        return ~result if self.operator.startswith("!") else result


def _scalar(kind: pa.DataType, data: bytes, offsets: bytes | None = None) -> Any:
    """An Arrow scalar made from its buffers: pyarrow converts a Python value only after importing pandas (a
    second on a cold query)."""
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(data)] if offsets is not None else [None, pa.py_buffer(data)]
    return pa.Array.from_buffers(kind, 1, buffers)[0]


def _text(value: str) -> Any:
    data = value.encode("utf-8", "surrogateescape")
    return _scalar(pa.string(), data, np.array([0, len(data)], np.int32).tobytes())


def _bool_array(values: Any) -> np.ndarray:
    """An Arrow boolean (chunked) array as numpy bools, nulls as False, without ``to_numpy`` (which imports
    pandas: a second on a cold query)."""
    import pyarrow.compute as pc

    array = pc.fill_null(values, _scalar(pa.bool_(), b"\x00"))
    array = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
    if len(array) == 0:
        return np.zeros(0, bool)
    bits = np.frombuffer(array.buffers()[1], np.uint8)
    return np.unpackbits(bits, bitorder="little")[array.offset : array.offset + len(array)].astype(bool)


@dataclass(frozen=True)
class Filter:
    """Which images a search may answer with: those with one of ``labels`` (when any is given) that pass every
    condition of ``where``. ``Filter.parse(labels=["cat"], where=["path~2024/"])``."""

    labels: tuple[str, ...] = ()
    where: tuple[Condition, ...] = ()

    @classmethod
    def parse(cls, labels: Iterable[str] = (), where: Iterable[str] = ()) -> Filter | None:
        """A filter from labels and condition texts (``Condition.parse``), or None when both are empty."""
        f = cls(tuple(labels), tuple(Condition.parse(text) for text in where))
        return f if f.labels or f.where else None

    def __str__(self) -> str:
        parts = [" or ".join(f"label={label}" for label in self.labels)] if self.labels else []
        return ", ".join(parts + [str(c) for c in self.where])

    def mask(self, meta: pa.Table) -> np.ndarray:
        """Whether each row of ``meta`` passes (n,) bool."""
        passed = np.ones(meta.num_rows, bool)
        if self.labels:
            passed = np.zeros(meta.num_rows, bool)
            for label in self.labels:
                passed |= Condition("label", "=", label).mask(meta)
        for condition in self.where:
            passed &= condition.mask(meta)
        return passed


def _listing(values: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def k_note(k: int, available: int, what: str = "in the collection") -> str | None:
    """The note for a ``k`` larger than the ``available`` images a query can be answered with (None when it is
    not): answers then hold ``available`` neighbours at most."""
    if k <= available:
        return None
    images = "image" if available == 1 else "images"
    return f"{option('k')} {k} is more than the {available} {images} {what}: each answer holds at most {available}"


@dataclass(eq=False)
class Generation:
    """One loaded generation of a collection and everything a query reads from it, computed once: a reload swaps
    it whole, and a query reads the one it started with to the end, so its answer is from one generation.

    Two things are made on first use (a GPU copy of the embeddings for re-ranking, and the row of each content
    hash for queries by file), each under ``lock``: a searcher can be shared by threads."""

    manifest: dict[str, Any]
    encoder: Encoder
    index: Any
    spec: vectors.IndexSpec
    params: Any
    float16: bool
    meta: pa.Table  # paths, roots and labels stay Arrow columns: a row is read when it is an answer
    ids: np.ndarray
    embeddings: np.ndarray
    rerank_on_gpu: bool
    lock: threading.Lock = field(default_factory=threading.Lock)
    _content: tuple[np.ndarray, np.ndarray] | None = None
    _rerank: GpuRerank | None = None
    _subsets: dict[Filter, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Ids in increasing order (the usual case: segments kept in the order they were written) need no sorted
        # copy and no order: 160 MB less at 10M rows.
        increasing = self.count < 2 or bool((self.ids[1:] > self.ids[:-1]).all())
        self.order: np.ndarray | None = None if increasing else np.argsort(self.ids, kind="stable")
        self.sorted_ids = self.ids if self.order is None else self.ids[self.order]
        # Ids 0..n-1 in some order (a collection never re-indexed): a row is found by one gather.
        self.dense_ids = bool(self.count) and int(self.sorted_ids[-1]) - int(self.sorted_ids[0]) == self.count - 1
        # FAISS GPU indexes are not safe to search from two threads at once: searches on the GPU take turns.
        self.search_lock: threading.Lock | contextlib.nullcontext[None] = (
            threading.Lock() if self.on_gpu else contextlib.nullcontext()
        )

    @property
    def on_gpu(self) -> bool:
        return self.index is not None and vectors.is_on_gpu(self.index)

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def generation(self) -> int:
        return int(self.manifest["generation"])

    @property
    def metric(self) -> str:
        return str(self.manifest["metric"])

    def content(self) -> tuple[np.ndarray, np.ndarray]:
        """Each row's content hash (numpy ``S32``) and the rows in hash order: made on the first query by file,
        not for embedding queries (at 10M rows 0.4 GB, where a dict of hex texts took several)."""
        if self._content is None:
            with self.lock:
                if self._content is None:
                    hashes = sha256_array(self.meta.column("sha256"))
                    self._content = (hashes, np.argsort(hashes, kind="stable"))
        return self._content

    def rows_with_content(self, sha256: str | None) -> np.ndarray:
        """The rows (increasing) of every indexed image whose content hash is ``sha256`` (none for None)."""
        if sha256 is None:
            return np.zeros(0, np.int64)
        hashes, order = self.content()
        key = np.bytes_(bytes.fromhex(sha256))
        start, stop = (int(np.searchsorted(hashes, key, side, sorter=order)) for side in ("left", "right"))
        return np.sort(order[start:stop]).astype(np.int64)

    def stored_embedding(self, sha256: str) -> np.ndarray | None:
        rows = self.rows_with_content(sha256)
        return self.embeddings[rows[0]] if len(rows) else None

    def rerank(self) -> GpuRerank:
        """The GPU re-ranker, its copy of the embeddings made on the first search."""
        if self._rerank is None:
            with self.lock:
                if self._rerank is None:
                    self._rerank = GpuRerank(self.embeddings, self.metric)
        return self._rerank

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Metadata row numbers of FAISS ids (any shape)."""
        at = ids - self.sorted_ids[0] if self.dense_ids else np.searchsorted(self.sorted_ids, ids)
        return at if self.order is None else self.order[at]

    def row_of_id(self, image_id: int) -> int:
        """The metadata row of an indexed image's id; ``UsageError`` for an id the collection does not hold."""
        at = int(np.searchsorted(self.sorted_ids, image_id))
        if at >= self.count or int(self.sorted_ids[at]) != image_id:
            span = f" (its ids run from {self.sorted_ids[0]} to {self.sorted_ids[-1]})" if self.count else ""
            raise UsageError(
                f"the collection has no image with id {image_id}{span}",
                remedy="use an id that a query answered with (its neighbours' id)",
            )
        return at if self.order is None else int(self.order[at])

    def subset(self, where: Filter) -> np.ndarray:
        """The rows (sorted) of the images that pass ``where``; ``UsageError`` when none does, naming the labels
        there are. Kept for the generation's life (a few filters at most)."""
        rows = self._subsets.get(where)
        if rows is None:
            rows = np.flatnonzero(where.mask(self.meta))
            if not len(rows):
                raise self._no_match(where)
            with self.lock:
                if len(self._subsets) >= 8:
                    self._subsets.pop(next(iter(self._subsets)))
                self._subsets[where] = rows
        return rows

    def _no_match(self, where: Filter) -> UsageError:
        import pyarrow.compute as pc

        labels = sorted(str(v) for v in pc.unique(self.meta.column("label")).to_pylist() if v is not None)
        known = f"its labels: {_listing(labels)}" if labels else "it has no labels"
        return UsageError(f"no image of the collection matches the filter {where}", remedy=f"check it ({known})")


class Searcher:
    """A loaded collection (one consistent generation) ready to answer queries.

    A server can hold one: ``reload_if_newer`` switches to a newer generation once one is committed, and queries
    may run on several threads meanwhile (each is answered from the generation it started with)."""

    def __init__(
        self,
        collection: Collection,
        use_gpu: bool = True,
        device: str = "auto",
        nprobe: int | None = None,
        ef: int | None = None,
        float16: bool | None = None,
    ) -> None:
        """``use_gpu``: search on the GPU when FAISS sees one. ``float16``: a flat or IVF-Flat index is held there
        in float16 (half the memory; 2·k candidates re-ranked by exact float32 distances); None: in float32, or
        in float16 when float32 does not fit (then on the CPU when neither does)."""
        for name, value in ((option("nprobe"), nprobe), (option("ef"), ef)):
            if value is not None and value < 1:
                raise UsageError(f"{name} must be at least 1, not {value}")
        self.collection = collection
        self.use_gpu, self.device, self.nprobe, self.ef, self.want_float16 = use_gpu, device, nprobe, ef, float16
        self._reload_lock = threading.Lock()
        self._stamp = self._manifest_stamp()
        self._current = self._load(None)

    # --- the generation queries read (each property reads the current one) ---------------------------------------

    @property
    def current(self) -> Generation:
        return self._current

    @property
    def generation(self) -> int:
        return self._current.generation

    @property
    def manifest(self) -> dict[str, Any]:
        return self._current.manifest

    @property
    def metric(self) -> str:
        return self._current.metric

    @property
    def encoder(self) -> Encoder:
        return self._current.encoder

    @property
    def index(self) -> Any:
        """The FAISS index searched; None for an exact L2 collection searched on the CPU, whose stored embeddings
        FAISS searches as they are (no second copy of them is made)."""
        return self._current.index

    @property
    def float16(self) -> bool:
        return self._current.float16

    @property
    def meta(self) -> pa.Table:
        return self._current.meta

    @property
    def embeddings(self) -> np.ndarray:
        return self._current.embeddings

    @property
    def dense_ids(self) -> bool:
        return self._current.dense_ids

    @property
    def count(self) -> int:
        return self._current.count

    @property
    def on_gpu(self) -> bool:
        return self._current.on_gpu

    # --- loading and reloading ---------------------------------------------------------------------------------

    def _manifest_stamp(self) -> tuple[int, ...] | None:
        """What changes whenever a commit replaces the manifest (a rename: a new file), read without opening it."""
        try:
            st = os.stat(self.collection.manifest_path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self, previous: Generation | None) -> Generation:
        """Load the collection's current generation; its encoder is ``previous``'s when the fingerprint is equal."""
        snapshot = self.collection.load(searching=True)
        manifest = snapshot.manifest
        fingerprint = manifest["encoder"]["fingerprint"]
        if previous is not None and previous.encoder.fingerprint == fingerprint:
            encoder = previous.encoder
        else:
            encoder = self.collection.load_encoder(manifest, device=self.device)
            encoder.inference_module()  # built now, not by the first of several threads
        check_metric(snapshot.metric, self.collection.path)
        if encoder.metric != snapshot.metric:
            raise CollectionError(
                f"the collection's metric ({snapshot.metric}) is not its encoder's ({encoder.metric})",
                file=self.collection.path,
                remedy=f"rebuild it with {option('rebuild', 'true')}",
            )
        info = manifest.get("index") or {}
        float16 = self.want_float16
        gpu = self.use_gpu and vectors.gpu_count() > 0 and vectors.gpu_ready(info, snapshot.meta.num_rows)
        spec = vectors.IndexSpec.from_json(info) if info.get("type") else vectors.IndexSpec("flat")
        spec = replace(spec, nprobe=self.nprobe or spec.nprobe, ef=self.ef or spec.ef, ef_cpu=self.ef or spec.ef_cpu)
        index: Any = None  # exact L2 on the CPU: FAISS's brute force over the stored embeddings, no second copy
        if gpu:
            index = vectors.to_gpu(snapshot.index, float16=bool(float16))
            if float16 is None and not vectors.is_on_gpu(index):  # float32 did not fit
                index = vectors.to_gpu(snapshot.index, float16=True)
                float16 = True
        elif not (spec.exact and snapshot.metric == "l2"):
            index = snapshot.index
        on_gpu = index is not None and vectors.is_on_gpu(index)
        if index is not None:
            vectors.set_search_params(index, spec)
        return Generation(
            manifest=manifest,
            encoder=encoder,
            index=index,
            spec=spec,
            params=vectors.search_params(index, spec) if index is not None else None,
            float16=bool(float16) and on_gpu,
            meta=snapshot.meta,
            ids=int64_column(snapshot.meta, "id"),
            embeddings=embeddings_of(snapshot.meta),
            # A GPU search is re-ranked on the GPU too (the embeddings are copied there on the first search).
            rerank_on_gpu=on_gpu and GpuRerank.available(),
        )

    def reload_if_newer(self) -> bool:
        """Switch to the collection's newest generation if one was committed since this searcher loaded; returns
        whether it did. Cheap when nothing changed: one ``stat`` of the manifest (a commit replaces it), nothing
        read. Queries running meanwhile finish on the generation they started with; the encoder is loaded again
        only when the collection's has changed (``index --rebuild``). A collection that can no longer be loaded
        raises (and the next call tries again), and the searcher keeps answering from the generation it holds."""
        if self._manifest_stamp() == self._stamp:
            return False
        with self._reload_lock:
            stamp = self._manifest_stamp()  # before reading: a commit landing after it is seen by the next call
            if stamp == self._stamp:
                return False
            current = self._current
            if self.collection.read_manifest() == current.manifest:  # rewritten, but the same generation
                self._stamp = stamp
                return False
            self._current = self._load(current)
            self._stamp = stamp
            return True

    # --- queries -----------------------------------------------------------------------------------------------

    def search_embeddings(
        self, queries: np.ndarray, k: int, where: Filter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest rows for each query embedding: (distances (q, k'), rows (q, k')), k' = min(k, n), n the
        images of the collection (or those that pass ``where``).

        Distances are recomputed exactly from the stored embeddings, so an indexed image queried by itself
        is at distance 0 whatever rounding the index's fast path introduced. An approximate index may find
        fewer than k' neighbours for a query: the missing places have distance ``inf``.
        """
        g = self._current
        return self._search(g, queries, k, None if where is None else g.subset(where))

    def capacity(self, where: Filter | None = None, image_id: int | None = None) -> int:
        """How many images a query can be answered with: the collection's, or those that pass ``where``; for the
        indexed image ``image_id`` (``query_ids``), those less itself."""
        g = self._current
        rows = None if where is None else g.subset(where)
        available = g.count if rows is None else len(rows)
        if image_id is not None:
            row = g.row_of_id(image_id)
            inside = rows is None or bool(np.isin(row, rows))
            available -= 1 if inside else 0
        return available

    def _search(
        self,
        g: Generation,
        queries: np.ndarray,
        k: int,
        subset: np.ndarray | None = None,
        exclude: Sequence[np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(distances, rows) as ``search_embeddings``, among the rows ``subset`` (sorted; None: all of them),
        leaving out each query's rows ``exclude[n]``."""
        if k < 1:
            raise UsageError(f"{option('k')} must be at least 1, not {k}")
        dim = g.embeddings.shape[1]
        if queries.ndim != 2 or queries.shape[1] != dim:
            raise UsageError(f"query embeddings must have shape (q, {dim}), not {queries.shape}")
        if not np.isfinite(queries).all():  # FAISS would answer with made-up neighbours
            raise ModelError(
                "the encoder gave a NaN or infinite embedding",
                file=self.collection.path,
                remedy="check the query images, or rebuild the collection with another model",
            )
        extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        if subset is None:
            rows, found = self._candidates(g, queries, k + extra)
            k = min(k, g.count)
        else:
            rows, found = self._subset_candidates(g, queries, k + extra, subset)
            k = min(k, len(subset))
        if exclude is not None:
            for n, left_out in enumerate(exclude):
                if len(left_out):
                    found[n] &= ~np.isin(rows[n], left_out)
        if g.rerank_on_gpu:
            distances, order = g.rerank()(queries, rows, found, k)
        else:
            with np.errstate(over="ignore"):
                distances = vectors.exact_distances(queries, g.embeddings[rows], g.metric)
            distances[~found] = np.inf
            order = np.argsort(distances, axis=1, kind="stable")[:, :k]
            distances = np.take_along_axis(distances, order, 1)
        if np.isnan(distances).any() or (np.isinf(distances) & np.take_along_axis(found, order, 1)).any():
            raise ModelError(  # float32 overflow: the order would be meaningless
                "a query embedding is too large to compare with the collection's (its distances overflow)",
                file=self.collection.path,
                remedy="check the query images, or rebuild the collection with another model",
            )
        return distances, np.take_along_axis(rows, order, 1)

    def _candidates(self, g: Generation, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The index's candidates for the k nearest: (rows (q, c), found (q, c)), to be re-ranked exactly."""
        # Coarse codes (IVF-PQ) fetch refine·k candidates for the exact re-ranking; float16 vectors twice k.
        wider = g.spec.refine or (2 if g.float16 else 1)
        if g.index is None:  # exact L2 on the CPU, over the stored embeddings
            rows = vectors.knn_l2(queries, g.embeddings, min(k, g.count))
            return np.maximum(rows, 0), rows >= 0
        with g.search_lock:
            _, ids = vectors.search(g.index, queries, k * wider, g.metric, g.params)
        found = ids >= 0  # an approximate index may return fewer than asked for
        return g.rows_of(np.where(found, ids, g.sorted_ids[0] if g.count else 0)), found

    def _subset_candidates(
        self, g: Generation, queries: np.ndarray, k: int, subset: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidates among the rows ``subset``: all of its k nearest (exact search over its stored embeddings)
        when it is small, the index flat or on a GPU; else the index's, searched with an ``IDSelector`` and its
        breadth widened by the inverse of the subset's share, and exact for any query it answered short."""
        if len(subset) <= EXACT_SUBSET or g.spec.exact or g.on_gpu:
            return self._exact_candidates(g, queries, k, subset)
        selected = _selector_search(g, queries, k, subset)
        if selected is None:  # an index FAISS cannot filter (a CAGRA graph searched on a CPU)
            return self._exact_candidates(g, queries, k, subset)
        rows, found = selected
        short = np.flatnonzero(found.sum(1) < min(k, len(subset)))
        if len(short):
            exact_rows, exact_found = self._exact_candidates(g, queries[short], k, subset)
            width = max(rows.shape[1], exact_rows.shape[1])
            rows, found = _pad(rows, width), _pad(found, width)
            rows[short], found[short] = _pad(exact_rows, width), _pad(exact_found, width)
        return rows, found

    def _exact_candidates(
        self, g: Generation, queries: np.ndarray, k: int, subset: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest rows of ``subset`` by brute force over their stored embeddings (on the GPU when the
        re-ranking runs there)."""
        k = min(k, len(subset))
        if g.rerank_on_gpu:
            positions = g.rerank().nearest(queries, subset, k)
        else:
            positions = nearest_rows(queries, g.embeddings, k, g.metric, rows=subset)
        return subset[positions], np.ones(positions.shape, bool)

    def query_arrays(
        self,
        images: np.ndarray,
        names: Sequence[str],
        k: int,
        where: Filter | None = None,
        vote: str = DEFAULT_VOTE,
    ) -> list[QueryResult]:
        """Neighbours and votes for preprocessed ``images`` (q, C, H, W)."""
        g = self._current
        results = self._answers(g, g.encoder.embed(images), names, k, where=where, rule=vote)
        flags = unfamiliar(g.encoder, images)
        for n, result in enumerate(results):
            result.unfamiliar = None if flags is None else bool(flags[n])
        return results

    def query_embeddings(
        self,
        queries: np.ndarray,
        names: Sequence[str],
        k: int,
        where: Filter | None = None,
        vote: str = DEFAULT_VOTE,
    ) -> list[QueryResult]:
        """Neighbours and votes for query embeddings (q, d)."""
        return self._answers(self._current, queries, names, k, where=where, rule=vote)

    def query_ids(
        self, ids: Sequence[int], k: int, where: Filter | None = None, vote: str = DEFAULT_VOTE
    ) -> list[QueryResult]:
        """Neighbours and votes for indexed images, by id: each is searched with its stored embedding, and is left
        out of its own answer (its k nearest *other* images, and a leave-one-out vote, as ``eval`` votes);
        exact duplicates of it stay, at distance 0. ``UsageError`` for an id the collection does not hold."""
        g = self._current
        rows = np.array([g.row_of_id(int(i)) for i in ids], np.int64)
        paths = g.meta.column("path")
        names = [str(paths[int(r)].as_py()) for r in rows]
        results = self._answers(
            g, g.embeddings[rows], names, k, where=where, rule=vote, exclude=[rows[n : n + 1] for n in range(len(rows))]
        )
        for result, image_id in zip(results, ids, strict=True):
            result.query_id = int(image_id)
        return results

    def _answers(
        self,
        g: Generation,
        queries: np.ndarray,
        names: Sequence[str],
        k: int,
        where: Filter | None = None,
        rule: str = DEFAULT_VOTE,
        exclude: Sequence[np.ndarray] | None = None,
    ) -> list[QueryResult]:
        check_vote(rule)
        distances, rows = self._search(g, queries, k, None if where is None else g.subset(where), exclude)
        # Cell by cell: Arrow's take would import pandas (a second on a cold query).
        columns = [g.meta.column(c) for c in ("path", "root", "label")]
        results = []
        for n, (name, dist_row, row_row) in enumerate(zip(names, distances, rows, strict=True)):
            neighbours = [
                Neighbour(rank + 1, int(g.ids[r]), float(d), *(c[int(r)].as_py() for c in columns))
                for rank, (d, r) in enumerate(zip(dist_row, row_row, strict=True))
                if np.isfinite(d)
            ]
            v = vote([n.label for n in neighbours], [n.distance for n in neighbours], rule)
            results.append(
                QueryResult(
                    name,
                    neighbours,
                    v.label,
                    v.share,
                    v.counts,
                    tie=list(v.tie),
                    vote_rule=rule,
                    weights=v.weights,
                    left_out=0 if exclude is None else len(exclude[n]),
                )
            )
        return results

    def query_files(
        self,
        paths: Sequence[Path | bytes],
        k: int,
        batch_size: int = 256,
        on_error: Callable[[ImageError], None] | None = None,
        names: Sequence[str] | None = None,
        where: Filter | None = None,
        vote: str = DEFAULT_VOTE,
        leave_out_indexed: bool = False,
    ) -> list[QueryResult]:
        """Neighbours and votes for image files, embedded in batches (``embedding.embed_files``, as ``verify``
        and ``eval`` embed them) with one FAISS search per batch.

        An unreadable file raises ``ImageError``, or, with ``on_error``, is passed to it and left out.
        A file whose content (sha256) is already in the collection is not embedded again: its stored
        embedding is used, so an indexed image queried by itself is at distance exactly 0 (a convolution
        run on a batch of another size can differ in the last bits); with ``leave_out_indexed`` the indexed
        images of the same content are left out of its answer instead (``eval`` against a collection: a query
        never finds itself). Images are converted to the encoder's channels, as ``index`` converts them. A file
        may also be given as its bytes (an upload). ``names``: how results and errors name the files (default:
        their paths). ``where``: answer only with the images that pass it. ``vote``: ``VOTES``.
        """
        check_vote(vote)
        g = self._current
        if where is not None:
            g.subset(where)  # a filter nothing passes fails before anything is read
        names = source_names(paths) if names is None else list(names)
        results: list[QueryResult] = []
        for start in range(0, len(paths), batch_size):
            batch = list(paths[start : start + batch_size])
            batch_names = names[start : start + batch_size]
            asked: list[str] = []

            def stored(sha256: str, asked: list[str] = asked) -> np.ndarray | None:
                asked.append(sha256)
                return g.stored_embedding(sha256)

            embedded = embed_files(
                g.encoder,
                batch,
                names=batch_names,
                convert=True,
                strict=on_error is None,
                stored=stored,
                batch_size=batch_size,
            )
            for _, error in embedded.errors:
                assert on_error is not None
                on_error(error)
            if embedded.kept:
                exclude = None
                if leave_out_indexed:
                    exclude = [g.rows_with_content(sha) for sha in _kept_hashes(embedded, asked)]
                answers = self._answers(
                    g,
                    embedded.embeddings,
                    [batch_names[n] for n in embedded.kept],
                    k,
                    where=where,
                    rule=vote,
                    exclude=exclude,
                )
                flags = embedded.unfamiliar
                for n, answer in enumerate(answers):
                    answer.unfamiliar = None if flags is None else bool(flags[n])
                results += answers
        return results


def _kept_hashes(embedded: Any, asked: list[str]) -> list[str | None]:
    """The content hash of each kept row of ``embed_files``'s result, from the hashes its ``stored`` look-up was
    asked for (one per decoded file, in order): a file whose embedding came out NaN was asked for but not kept,
    and only freshly embedded files can be NaN, so when some were dropped the rows that came from the store are
    still known; the others are None (no indexed image has their content, or they would have come from it)."""
    if len(asked) == len(embedded.kept):
        return list(asked)
    return [None] * len(embedded.kept)


def _pad(array: np.ndarray, width: int) -> np.ndarray:
    """``array`` (q, c) widened to (q, width) with zeros (False for a mask)."""
    if array.shape[1] >= width:
        return array
    return np.concatenate([array, np.zeros((len(array), width - array.shape[1]), array.dtype)], axis=1)


#: Stored embeddings a brute-force search gathers at a time: a filter that keeps most of a large collection is
#: searched without a copy of all its embeddings.
BRUTE_FORCE_ROWS = 65_536
BRUTE_FORCE_QUERIES = 256


def nearest_rows(
    queries: np.ndarray, vectors_: np.ndarray, k: int, metric: str, rows: np.ndarray | None = None
) -> np.ndarray:
    """Positions (q, k) in ``rows`` (default: every row of ``vectors_``) of each query's k nearest of those rows of
    ``vectors_`` (n, d), nearest first, by brute force: BLAS matrix products over ``BRUTE_FORCE_ROWS`` rows at a
    time. The candidates of an exact filtered search, which are then re-ranked by exact distance."""
    if len(queries) > BRUTE_FORCE_QUERIES:  # at most 64 MB of scores at a time
        blocks = range(0, len(queries), BRUTE_FORCE_QUERIES)
        return np.concatenate(
            [nearest_rows(queries[b : b + BRUTE_FORCE_QUERIES], vectors_, k, metric, rows) for b in blocks]
        )
    q = vectors.prepare(queries, metric)
    m = len(vectors_) if rows is None else len(rows)
    k = min(k, m)
    best = np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    for start in range(0, m, BRUTE_FORCE_ROWS):
        chunk = (
            vectors_[start : start + BRUTE_FORCE_ROWS]
            if rows is None
            else vectors_[rows[start : start + BRUTE_FORCE_ROWS]]
        )
        x = vectors.prepare(chunk, metric)
        scores = -(q @ x.T) if metric == "cosine" else np.einsum("md,md->m", x, x) - 2.0 * (q @ x.T)
        scores = np.concatenate([best[0], scores], axis=1)
        positions = np.concatenate(
            [best[1], np.broadcast_to(np.arange(start, start + len(x)), (len(q), len(x)))], axis=1
        )
        if scores.shape[1] > k:
            keep = np.argpartition(scores, k - 1, axis=1)[:, :k]
            scores, positions = np.take_along_axis(scores, keep, 1), np.take_along_axis(positions, keep, 1)
        best = scores, positions
    order = np.argsort(best[0], axis=1, kind="stable")
    return np.take_along_axis(best[1], order, 1)


def _selector_search(
    g: Generation, queries: np.ndarray, k: int, subset: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """Candidates among ``subset`` from an approximate CPU index, searched with a FAISS ``IDSelector`` and its
    search breadth (IVF ``nprobe``, HNSW ``ef``) divided by the subset's share of the collection (capped): about
    as many subset vectors are visited as an unfiltered search visits vectors. None when FAISS cannot filter
    this index."""
    import faiss as faiss_module

    faiss: Any = faiss_module  # its SearchParameters take keyword arguments that its type stubs do not declare
    share = len(subset) / max(1, g.count)
    ids = np.ascontiguousarray(g.ids[subset], dtype=np.int64)
    selector = faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids))
    spec = g.spec
    params: Any
    if spec.type in ("ivf", "ivfpq"):
        nlist = spec.nlist or 1
        params = faiss.SearchParametersIVF(sel=selector, nprobe=min(nlist, math.ceil((spec.nprobe or 1) / share)))
    elif spec.type in ("hnsw", "cagra"):
        ef = (spec.ef_cpu or spec.ef) if spec.type == "cagra" else spec.ef
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=min(MAX_EF, math.ceil((ef or 16) / share)))
    else:
        return None
    wider = spec.refine or 1
    try:
        with g.search_lock:
            _, found_ids = vectors.search(g.index, queries, k * wider, g.metric, params)
    except RuntimeError:
        return None
    found = found_ids >= 0
    rows = g.rows_of(np.where(found, found_ids, g.sorted_ids[0]))
    # Only the subset, whatever the index made of the selector (a graph variant that ignored it).
    at = np.minimum(np.searchsorted(subset, rows), len(subset) - 1)
    return rows, found & (subset[at] == rows)


#: The widest HNSW search a filtered query widens to.
MAX_EF = 4096


class GpuRerank:
    """Exact re-ranking on the GPU: the collection's float32 embeddings held there (as torch tensors), and each
    query's candidates gathered, measured and sorted there, so that a GPU search is not left waiting on the
    CPU. The same float32 arithmetic as ``vectors.exact_distances``: a stored vector is at distance 0 from
    itself."""

    def __init__(self, embeddings: np.ndarray, metric: str) -> None:
        import torch

        self.torch, self.metric = torch, metric
        self.device = torch.device("cuda")
        x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)).to(self.device)
        if metric == "cosine":
            x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.embeddings = x

    @staticmethod
    def available() -> bool:
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency
            return False
        return torch.cuda.is_available()

    def __call__(
        self, queries: np.ndarray, rows: np.ndarray, found: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(distances (q, k), order (q, k)): the k nearest of each query's candidate ``rows``."""
        torch = self.torch
        q = torch.from_numpy(vectors.prepare(queries, self.metric)).to(self.device)
        r = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)).to(self.device)
        v = self.embeddings[r]  # (q, k', d)
        if self.metric == "cosine":
            distances = 1.0 - torch.einsum("qd,qkd->qk", q, v)
        else:
            diff = v - q[:, None, :]
            distances = torch.einsum("qkd,qkd->qk", diff, diff).sqrt()
        distances = distances.masked_fill(~torch.from_numpy(found).to(self.device), float("inf"))
        distances, order = torch.sort(distances, dim=1, stable=True)
        return distances[:, :k].cpu().numpy(), order[:, :k].cpu().numpy()

    def nearest(self, queries: np.ndarray, subset: np.ndarray, k: int) -> np.ndarray:
        """Positions (q, k) in ``subset`` of each query's k nearest rows among them, by brute force on the GPU
        (a filtered search; ``nearest_positions``)."""
        torch = self.torch
        q = torch.from_numpy(vectors.prepare(queries, self.metric)).to(self.device)
        rows = torch.from_numpy(np.ascontiguousarray(subset, dtype=np.int64)).to(self.device)
        return nearest_positions(torch, q, self.embeddings, k, self.metric, rows).cpu().numpy()


def nearest_positions(torch: Any, q: Any, x: Any, k: int, metric: str, rows: Any = None) -> Any:
    """``nearest_rows`` on torch tensors, on any device: positions (q, k) in ``rows`` (default: every row of ``x``)
    of the k nearest rows of ``x`` (n, d) to each query of ``q`` (q, d), nearest first (unit vectors for cosine),
    ``BRUTE_FORCE_ROWS`` rows gathered at a time."""
    m = x.shape[0] if rows is None else rows.shape[0]
    k = min(k, m)
    parts = []
    for start in range(0, q.shape[0], BRUTE_FORCE_QUERIES):
        block = q[start : start + BRUTE_FORCE_QUERIES]
        best_scores = torch.zeros((block.shape[0], 0), dtype=block.dtype, device=block.device)
        best_positions = torch.zeros((block.shape[0], 0), dtype=torch.int64, device=block.device)
        for first in range(0, m, BRUTE_FORCE_ROWS):
            chunk = x[first : first + BRUTE_FORCE_ROWS] if rows is None else x[rows[first : first + BRUTE_FORCE_ROWS]]
            scores = -(block @ chunk.T) if metric == "cosine" else (chunk * chunk).sum(1) - 2.0 * (block @ chunk.T)
            positions = torch.arange(first, first + chunk.shape[0], device=block.device).expand(block.shape[0], -1)
            scores = torch.cat([best_scores, scores], dim=1)
            positions = torch.cat([best_positions, positions], dim=1)
            best_scores, keep = torch.topk(scores, min(k, scores.shape[1]), dim=1, largest=False, sorted=True)
            best_positions = torch.gather(positions, 1, keep)
        parts.append(best_positions)
    return torch.cat(parts) if parts else torch.zeros((0, k), dtype=torch.int64, device=q.device)


def expand_query_paths(paths: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """Query arguments → image files: a folder stands for every image under it (recognised by content, in
    path order). Returns the files, and "path: reason" for files under folders that look like images but
    are not, or cannot be read."""
    files: list[Path] = []
    problems: list[str] = []
    for path in paths:
        if Path(path).is_dir():
            entries, skipped = find_images(Path(path))
            files += [e.path for e in entries]
            problems += [f"{Path(path) / s.rel}: {s.reason}" for s in skipped]
        elif Path(path).is_file():
            files.append(Path(path))
        else:
            raise ImageError("no such image file or folder", file=path, remedy="check the path")
    return files, problems


def vote_accuracy(results: Sequence[QueryResult], truth: Sequence[str | None]) -> float:
    """Share of queries whose voted label equals the true one."""
    if not results:
        return float("nan")
    return sum(r.vote == t for r, t in zip(results, truth, strict=True)) / len(results)
