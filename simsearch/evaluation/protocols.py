"""How an evaluation is run: its configuration, and the protocol (leave-one-out, split, open set) that says which
images are queries and which the gallery.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simsearch.errors import DataError, UsageError, option
from simsearch.search import DEFAULT_VOTE, check_vote

#: MAP@R and R-precision look at the R nearest neighbours; beyond this many they are computed over the
#: first ``MAX_NEIGHBOURS`` only (and the report says so).
MAX_NEIGHBOURS = 1000


UNKNOWN = "unknown"


#: Most bootstrap resamples: ample for a 95% interval; more would only take longer (the CLI's --bootstrap max).
MAX_BOOTSTRAP = 10_000


@dataclass(frozen=True)
class EvalConfig:
    k: int = 9
    split: float | None = None  # None: leave-one-out; else the share of each label's images used as queries
    baselines: bool = True
    open_set: bool = False
    unknown_fraction: float = 0.2  # open set: share of the labels kept out of the gallery
    threshold: str = "auto"
    far: float | None = None
    bootstrap: int = 200
    seed: int = 0
    max_genuine_pairs: int = 20_000
    workers: int = 0
    vote: str = DEFAULT_VOTE  # how the k nearest vote (``search.VOTES``)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise UsageError(f"{option('k')} must be at least 1, not {self.k}")
        check_vote(self.vote)
        if self.split is not None and not 0 < self.split < 1:
            raise UsageError(
                f"{option('split')} must be between 0 and 1 (the share of images used as queries), not {self.split}"
            )
        if not 0 < self.unknown_fraction < 1:
            raise UsageError(f"{option('unknown_fraction')} must be between 0 and 1, not {self.unknown_fraction}")
        if not 10 <= self.bootstrap <= MAX_BOOTSTRAP:
            raise UsageError(
                f"{option('bootstrap')} must be between 10 and {MAX_BOOTSTRAP:,} resamples, not {self.bootstrap:,}"
            )


@dataclass(frozen=True)
class Protocol:
    """Which rows are queries, which are the gallery, and whether a query must skip itself."""

    queries: np.ndarray
    gallery: np.ndarray
    leave_one_out: bool
    unknown_codes: np.ndarray
    mode: str


def choose_protocol(y: np.ndarray, classes: list[str], config: EvalConfig) -> Protocol:
    rng = np.random.default_rng(config.seed)
    rows = np.arange(len(y))
    unknown_codes = np.zeros(0, np.int64)
    if config.open_set:
        n_unknown = max(1, round(len(classes) * config.unknown_fraction))
        if len(classes) - n_unknown < 2:
            raise DataError(
                f"{option('open_set')} needs at least 3 labels (one kept out of the gallery); found {len(classes)}"
            )
        unknown_codes = np.sort(rng.choice(len(classes), n_unknown, replace=False))
    is_unknown = np.isin(y, unknown_codes)
    known = rows[~is_unknown]
    if config.split is None:
        gallery, queries, loo = known, rows, True
        mode = "leave-one-out"
    else:
        held = []
        for c in np.unique(y[known]):
            members = rng.permutation(known[y[known] == c])
            if len(members) >= 2:
                held.append(members[: min(len(members) - 1, max(1, round(len(members) * config.split)))])
        queried = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
        gallery = np.setdiff1d(known, queried)
        queries = np.sort(np.concatenate([queried, rows[is_unknown]]))
        loo = False
        mode = f"split: {config.split:.0%} of each label's images as queries"
    if config.open_set:
        mode += f", open set ({len(unknown_codes)} of {len(classes)} labels unknown)"
    return Protocol(queries, gallery, loo, unknown_codes, mode)
