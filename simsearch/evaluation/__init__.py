"""``simsearch eval``: every figure of an encoder on a labelled folder (``evaluate``), the protocols
(``protocols``), the scoring of one encoder (``scoring``) and the HTML report with its figures (``report``,
imported on its own: it needs matplotlib)."""

from simsearch.evaluation.protocols import MAX_BOOTSTRAP, MAX_NEIGHBOURS, UNKNOWN, EvalConfig, Protocol, choose_protocol
from simsearch.evaluation.run import EvalReport, baseline_spec, evaluate
from simsearch.evaluation.scoring import (
    EncoderResult,
    ErrorCase,
    neighbours,
    pair_distances,
    score_encoder,
    worst_errors,
)

__all__ = [
    "MAX_BOOTSTRAP",
    "MAX_NEIGHBOURS",
    "UNKNOWN",
    "EncoderResult",
    "ErrorCase",
    "EvalConfig",
    "EvalReport",
    "Protocol",
    "baseline_spec",
    "choose_protocol",
    "evaluate",
    "neighbours",
    "pair_distances",
    "score_encoder",
    "worst_errors",
]
