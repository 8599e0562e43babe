"""Verification: is this pair of images the same identity? A distance, a threshold calibrated on held-out
identities (stored in ``encoder.json`` at training time), the verdict and a calibrated match probability.

    verifier = Verifier(Encoder.load(Path("models/sig")))
    point = operating_point(verifier.encoder, "auto", far=0.01)
    result = verifier.verify(Path("a.png"), Path("b.png"), point)
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from simsearch import metrics, vectors
from simsearch.embedding import Embedded, check_metric, embed_files
from simsearch.errors import DataError, ImageError, ModelError, UsageError, option
from simsearch.io import MISSING
from simsearch.models.encoder import TRAINED_FOLDER, Encoder
from simsearch.models.novelty import REMEDY, unfamiliar_text


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold and what it was chosen for: ``eer``, ``far=1%`` …, or ``manual``. ``far``/``frr`` are
    the rates measured on the held-out calibration pairs (None for a manual threshold, and for a threshold not
    calibrated on unseen identities). ``calibration``: how the model's stored threshold was obtained
    (``calibration_of``; not in ``to_json``, as it is the model's, not the point's); ``prior``: the prior
    probability of a match at which this threshold is the break-even point, the one the match probability assumes
    (``metrics.implied_prior``; None without a probability model)."""

    threshold: float
    name: str
    far: float | None = None
    frr: float | None = None
    calibration: dict[str, Any] | None = None
    prior: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "operating_point": self.name,
            "far": self.far,
            "frr": self.frr,
            "prior": self.prior,
        }


def parse_threshold(text: str) -> float | None:
    """``auto`` → None; a number → that number; anything else is a usage error."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{option('threshold')} must be 'auto' or a number, not {text!r}") from None
    if not np.isfinite(value) or value < 0:
        raise UsageError(f"{option('threshold')} must be a finite distance ≥ 0, not {text!r}")
    return value


def operating_point(
    encoder: Encoder, threshold: str | float | None = "auto", far: float | None = None
) -> OperatingPoint:
    """The threshold to decide with: a number given by the user, or the stored calibration's EER point, or
    (with ``far``) the most accepting stored threshold whose held-out FAR is at most ``far``; with how the
    stored threshold was obtained and the prior the match probability assumes at this threshold."""
    point = _chosen_point(encoder, threshold, far)
    record = encoder.threshold or {}
    model = record.get("probability")
    prior = metrics.implied_prior(model, point.threshold) if model else None
    return replace(point, calibration=calibration_of(record), prior=prior)


def calibration_of(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """How a stored threshold was obtained: its record's ``calibration`` (``training.calibrate``), or, for a model
    trained before that was recorded, what its ``split`` says (``recorded``: False). None without a record."""
    if not record:
        return None
    if isinstance(record.get("calibration"), dict):
        return dict(record["calibration"])
    split = str(record.get("split") or "")
    return {
        "method": {"identities": "held-out identities", "images": "held-out images"}.get(split, "held-out pairs"),
        "unseen_identities": split == "identities" if split else None,
        "identities": record.get("identities"),
        "pairs": record.get("pairs"),
        "recorded": False,
    }


def describe_calibration(record: dict[str, Any] | None) -> str:
    """One sentence on how far a stored threshold can be trusted: how it was obtained, on how many identities
    and pairs, and its FAR interval."""
    c = calibration_of(record)
    if c is None:
        return "The model has no calibrated threshold."
    pairs = c.get("pairs") or {}
    counts = f"{pairs.get('genuine', 0):,} genuine and {pairs.get('impostor', 0):,} impostor pairs"
    if pairs.get("skilled_forgery"):
        counts += f", {pairs['skilled_forgery']:,} of them skilled forgeries"
    ids, method = c.get("identities"), c.get("method")
    if c.get("reason"):
        return (
            f"The threshold is NOT calibrated on unseen identities ({c['reason']}): it comes from held-out images "
            f"of the {ids} training identities, so its false-accept rate on new identities is unknown."
        )
    interval = c.get("far_interval")
    far = ""
    if interval and all(isinstance(v, (int, float)) and np.isfinite(v) for v in interval):
        far = f"; 95% interval of its FAR: {interval[0]:.1%} to {interval[1]:.1%}"
    if not c.get("recorded", True):
        return (
            f"Threshold calibrated on {method} ({counts}, {ids} labels); how far it holds for new identities was "
            "not recorded (a model trained by an older simsearch)."
        )
    if method == "cross-fitted":
        return (
            f"Threshold cross-fitted over {ids} identities in {c.get('folds')} folds ({counts}, each pair scored by "
            f"a model that never saw its identities){far}."
        )
    if method == "held-out identities":
        return f"Threshold calibrated on held-out identities ({ids}; {counts}){far}."
    return (
        f"Threshold calibrated on held-out images of the {c.get('labels', ids)} training labels ({counts}): it "
        f"holds for those labels, not for new identities{far}."
    )


#: Why a baseline has no threshold: it is not trained at all, so neither with nor without labels.
_BASELINES_UNCALIBRATED = {
    "pixels": "raw pixels are not trained: nothing calibrated one",
    "pca": "PCA is fitted without labels: nothing calibrated one",
}


def _why_uncalibrated(family: str) -> str:
    return _BASELINES_UNCALIBRATED.get(family, "it was trained without labelled identities")


def _chosen_point(encoder: Encoder, threshold: str | float | None, far: float | None) -> OperatingPoint:
    value = parse_threshold(threshold) if isinstance(threshold, str) else threshold
    if value is not None:
        if far is not None:
            raise UsageError(f"give either {option('threshold', 'NUMBER')} or {option('far')}, not both")
        return OperatingPoint(float(value), "manual")
    record = encoder.threshold
    if not record:
        raise ModelError(
            f"this {encoder.family} model has no calibrated threshold ({_why_uncalibrated(encoder.family)})",
            remedy=f"pass {option('threshold', 'NUMBER')}, or train one with {option('family', 'siamese')} on "
            "labelled sub-folders",
        )
    if far is None:
        return OperatingPoint(float(record["value"]), "eer", record.get("far"), record.get("frr"))
    if not 0 < far < 1:
        raise UsageError(f"{option('far')} must be between 0 and 1 (e.g. 0.01 for 1%), not {far}")
    if (calibration_of(record) or {}).get("reason"):
        raise ModelError(
            "this model's threshold is not calibrated on unseen identities, so it promises no false-accept rate",
            remedy=f"pass {option('threshold', 'NUMBER')}, or train on at least 4 identities (sub-folders)",
        )
    impostors = int(record.get("pairs", {}).get("impostor", 0))
    if impostors and far < 1 / impostors:
        raise UsageError(
            f"{option('far', f'{far:g}')} is finer than the calibration can resolve ({impostors} impostor pairs: "
            f"at least {1 / impostors:.2g})",
            remedy=f"use a larger {option('far')}, or calibrate on more held-out identities",
        )
    curve = record.get("curve")
    if not curve:
        for name, target in metrics.FAR_TARGETS:
            if abs(far - target) < 1e-12 and name in record:
                point = record[name]
                return OperatingPoint(float(point["value"]), f"far={far:.4g}", point["far"], point["frr"])
        raise ModelError(
            "this model stores thresholds for FAR 1% and 0.1% only", remedy="use one of those, or retrain it"
        )
    rows = np.asarray(curve, np.float64)
    ok = np.flatnonzero(rows[:, 1] <= far)
    if not len(ok):
        raise UsageError(f"no stored threshold reaches FAR ≤ {far:g}", remedy=f"use a larger {option('far')}")
    t, f, r = rows[ok[-1]]
    return OperatingPoint(float(t), f"far={far:.4g}", float(f), float(r))


@dataclass(frozen=True)
class Verdict:
    a: str
    b: str
    distance: float
    match: bool
    point: OperatingPoint
    probability: float | None
    label: bool | None = None
    #: The files of the pair that are unlike the images the model was trained on (such a pair is never a match);
    #: None when the model cannot tell (no novelty reference).
    unfamiliar: tuple[str, ...] | None = None

    @property
    def reason(self) -> str | None:
        """Why the pair was not compared (an unfamiliar input, and the remedy), or None."""
        if not self.unfamiliar:
            return None
        return "; ".join(unfamiliar_text(name) for name in self.unfamiliar) + f" — {REMEDY}"

    def to_json(self) -> dict[str, Any]:
        out = {
            "a": self.a,
            "b": self.b,
            "distance": self.distance,
            "match": self.match,
            "probability": self.probability,
            **self.point.to_json(),
            "unfamiliar": None if self.unfamiliar is None else list(self.unfamiliar),
        }
        if self.reason is not None:
            out["reason"] = self.reason
        if self.label is not None:
            out["label"] = self.label
        return out


class Verifier:
    """Embeds image files with one encoder (``embedding.embed_files``) and decides pairs at an operating point.
    Distances are the encoder's metric's (``vectors.distances``), as its threshold was calibrated with."""

    def __init__(self, encoder: Encoder, convert: bool | None = None, channels: str | None = None) -> None:
        check_metric(encoder.metric, f"this {encoder.family} model")
        self.encoder = encoder
        #: The channel rule (``io.channels``): None follows the caller's ``channel_rule`` block (else ``convert``);
        #: ``convert=False`` is the older spelling of ``strict``.
        self.channels = channels if channels is not None else "strict" if convert is False else None
        record = encoder.threshold or {}
        self.probability_model: dict[str, float] | None = record.get("probability")

    def embed_files(self, paths: Sequence[Path | bytes], batch_size: int = 256) -> np.ndarray:
        """Embeddings (n, d) of image files; the first one that cannot be used raises ``ImageError``. A colour
        image for a grey model (or the reverse) follows the channel rule: converted, or refused with ``strict``."""
        return self.embedded(paths, batch_size).embeddings

    def embedded(
        self, paths: Sequence[Path | bytes], batch_size: int = 256, names: Sequence[str] | None = None
    ) -> Embedded:
        """``embed_files``'s result for ``paths`` (every file kept, in order), with each one's novelty; ``names``:
        how errors name the files (default: their paths)."""
        return embed_files(self.encoder, paths, channels=self.channels, strict=True, batch_size=batch_size, names=names)

    def distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The distances between matching rows of two embedding arrays, in the encoder's metric."""
        return vectors.distances(a, b, self.encoder.metric)

    def decide(
        self,
        a: str,
        b: str,
        distance: float,
        point: OperatingPoint,
        label: bool | None = None,
        unfamiliar: Sequence[str] | None = None,
    ) -> Verdict:
        """The verdict on a pair at ``point``; a pair with an ``unfamiliar`` input is no match, of no probability."""
        probability = (  # P = 0.5 exactly at the threshold in use (the prior it implies: ``OperatingPoint.prior``)
            float(metrics.match_probability(distance, self.probability_model, point.threshold))
            if self.probability_model
            else None
        )
        flagged = None if unfamiliar is None else tuple(dict.fromkeys(unfamiliar))
        if flagged:
            return Verdict(a, b, float(distance), False, point, None, label, flagged)
        return Verdict(a, b, float(distance), bool(distance <= point.threshold), point, probability, label, flagged)

    def verify(
        self, a: Path | bytes, b: Path | bytes, point: OperatingPoint, names: tuple[str, str] | None = None
    ) -> Verdict:
        """The verdict on the image files ``a`` and ``b`` (or their bytes, e.g. uploads); ``names``: how the
        verdict and errors name them (default: their paths)."""
        shown = names or (str(a), str(b))
        for path, name in zip((a, b), shown, strict=True):
            if not isinstance(path, bytes) and not Path(path).exists():
                raise ImageError(MISSING, file=name, remedy="check the path")
        embedded = self.embedded([a, b], names=shown)
        z, flags = embedded.embeddings, embedded.unfamiliar
        unfamiliar = None if flags is None else [name for name, flag in zip(shown, flags, strict=True) if flag]
        return self.decide(*shown, float(self.distances(z[:1], z[1:])[0]), point, unfamiliar=unfamiliar)

    def verify_pairs(self, pairs: Sequence[tuple[Path, Path, bool | None]], point: OperatingPoint) -> list[Verdict]:
        """Many pairs at once: every distinct file is embedded once, in batches."""
        files = list(dict.fromkeys(p for a, b, _ in pairs for p in (a, b)))
        for path in files:
            if not path.exists():
                raise ImageError(MISSING, file=path, remedy="check the path in the pairs file")
        embedded = self.embedded(files)
        z, flags = embedded.embeddings, embedded.unfamiliar
        row = {path: i for i, path in enumerate(files)}
        distances = self.distances(z[[row[a] for a, _, _ in pairs]], z[[row[b] for _, b, _ in pairs]])
        return [
            self.decide(
                str(a), str(b), d, point, label, None if flags is None else [str(p) for p in (a, b) if flags[row[p]]]
            )
            for (a, b, label), d in zip(pairs, distances, strict=True)
        ]


TRUE_WORDS = {"1", "true", "yes", "same", "match", "genuine"}
FALSE_WORDS = {"0", "false", "no", "different", "nomatch", "no match", "impostor"}


def verdict_json(verdict: Verdict, point: OperatingPoint, source: str) -> dict[str, Any]:
    """What ``verify --json`` prints for one pair (and a service answers): the verdict, how the threshold in
    use was obtained, and where the model came from."""
    return {**verdict.to_json(), "calibration": point.calibration, "source": source}


def read_pairs(csv_path: Path) -> list[tuple[Path, Path, bool | None]]:
    """Rows of a pairs CSV: columns ``a``, ``b`` and optionally ``label`` (1/0, true/false, same/different).

    Relative image paths are taken relative to the CSV file's folder.
    """
    csv_path = Path(csv_path)
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError("no such pairs file", file=csv_path, remedy="check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the pairs file ({exc})", file=csv_path) from None
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip().lower() for c in (reader.fieldnames or [])]
    if "a" not in columns or "b" not in columns:
        raise DataError("the pairs file needs a header with columns a,b (and optionally label)", file=csv_path)
    base = csv_path.parent
    pairs: list[tuple[Path, Path, bool | None]] = []
    for line, raw in enumerate(reader, start=2):
        row = {str(k).strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not row.get("a") or not row.get("b"):
            raise DataError("both a and b must name an image", file=f"{csv_path}:{line}")
        label: bool | None = None
        text_label = row.get("label", "").lower()
        if text_label in TRUE_WORDS:
            label = True
        elif text_label in FALSE_WORDS:
            label = False
        elif text_label:
            raise DataError(
                f"label {row['label']!r} is not 1/0, true/false or same/different", file=f"{csv_path}:{line}"
            )
        pairs.append((base / row["a"], base / row["b"], label))
    if not pairs:
        raise DataError("no pairs in the file", file=csv_path)
    labelled = [p[2] is not None for p in pairs]
    if any(labelled) and not all(labelled):
        raise DataError("some rows have a label and some do not", file=csv_path, remedy="label every row or none")
    return pairs


def pair_metrics(verdicts: Sequence[Verdict], resamples: int = 200, seed: int = 0) -> dict[str, Any] | None:
    """With labelled pairs: accuracy, FAR and FRR at the operating point, ROC AUC and EER (95% bootstrap)."""
    if not verdicts or verdicts[0].label is None:
        return None
    d = np.array([v.distance for v in verdicts])
    same = np.array([bool(v.label) for v in verdicts])
    match = np.array([v.match for v in verdicts])
    result: dict[str, Any] = {
        "pairs": len(verdicts),
        "genuine": int(same.sum()),
        "impostor": int((~same).sum()),
        "accuracy": float((match == same).mean()),
        "far": float(match[~same].mean()) if (~same).any() else None,
        "frr": float((~match[same]).mean()) if same.any() else None,
    }
    if same.any() and not same.all():
        rng = np.random.default_rng(seed)
        pairs = metrics.SortedPairs(d, same)
        result["roc_auc"] = metrics.bootstrap_pairs(pairs, metrics.auc_of, resamples, rng)
        result["eer"] = metrics.bootstrap_pairs(pairs, lambda roc: metrics.eer_of(roc)[0], resamples, rng)
    return result


def load_encoder(model: str | None, name: str | None, home: Path, device: str = "cpu") -> tuple[Encoder, str]:
    """The encoder of a model folder (``model``) or of a collection (``name``, default ``default``),
    and a short description of where it came from."""
    from simsearch.models.encoder import is_model_folder
    from simsearch.store.collection import Collection, resolve_path

    if model is not None and name is not None:
        raise UsageError(f"give either {option('model')} (a model folder) or {option('name')} (a collection), not both")
    if model is not None:
        path = Path(model)
        if not path.exists():
            raise ModelError(f"no model folder at '{model}'", remedy=TRAINED_FOLDER)
        if Collection(path).exists():
            raise ModelError(
                f"'{model}' is a collection, not a model folder",
                remedy=f"pass it as {option('name', model)} to use its encoder",
            )
        if not is_model_folder(path):
            raise ModelError(f"'{model}' holds no encoder.json", remedy=TRAINED_FOLDER)
        return Encoder.load(path, device=device), f"model {path}"
    collection = Collection(resolve_path(name or "default", home))
    return collection.load_encoder(device=device), f"collection {collection.path}"
