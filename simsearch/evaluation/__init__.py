"""``simsearch eval``: every figure of an encoder on a labelled folder (``evaluate``), the protocols
(``protocols``), the scoring of one encoder (``scoring``), a folder of labelled queries against an existing
collection (``collection``: ``evaluate_collection``) and the HTML report with its figures (``report``, imported on
its own: it needs matplotlib)."""

from simsearch.evaluation.collection import CollectionEvalReport, LabelScore, evaluate_collection
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
    "CollectionEvalReport",
    "EncoderResult",
    "ErrorCase",
    "EvalConfig",
    "EvalReport",
    "LabelScore",
    "Protocol",
    "baseline_spec",
    "choose_protocol",
    "evaluate",
    "evaluate_collection",
    "neighbours",
    "pair_distances",
    "score_encoder",
    "worst_errors",
]
