"""Latent-space quality of every encoder family, on the real data in ../shared/data, in one run.

    python bench/quality.py                       # every family on fashion and omniglot (the default data sets)
    python bench/quality.py --only siamese:contrastive --device cuda --tag gpu
    python bench/quality.py --datasets faces signatures --only pixels pca fisherfaces lbp hog --tag verification

Fashion-MNIST subset: train on the train split, index it, query every test image: k=9 (and k=1) vote accuracy.
Omniglot background_small1: train on three alphabets (Greek, Korean, Latin), evaluate on the two unseen ones
(Balinese, Early_Aramaic): verification ROC AUC and EER over every genuine pair and four times as many random
impostor pairs; and accuracy on the 20 official 20-way one-shot runs (nearest training image).
Each neural row also records its wall time per epoch.

Faces (AT&T, 28 people) and signatures (SigComp2011 Dutch, 14 writers), run only when named in ``--datasets``:
verification on identities never seen in training, in identity folds (``bench/identity.py``): faces in 4 folds
of 7 people, signatures in 3 folds of writers (a writer's genuine ``WWW`` and forged ``WWW_forg`` folders
together). For each fold a row is fitted on a folder holding the other folds' identity folders (labels: folder
names, so ``WWW`` and ``WWW_forg`` are two labels) and scored on the held-out identities: faces, every genuine
pair of each held-out person and 4× as many random impostor pairs against the other held-out people;
signatures, each held-out writer's genuine–genuine pairs (66) against its genuine–skilled-forgery pairs (144).
EER and ROC AUC are each fold model's on its held-out identities, averaged over folds, with 95% intervals from a
bootstrap over identities (the EER of all folds' pairs pooled is kept too).
Rows there: the hand-crafted rivals of ``bench/classics.py`` (``pixels``, ``pca``, ``fisherfaces``, ``lda``,
``lbp``, ``hog``, ``hog:plain``: on these data sets ``pixels`` and ``pca`` name those, not simsearch's families) and
simsearch's neural families, trained per fold through ``train_encoder`` on the fold's training folder. For a
model that stores a threshold, the FAR and FRR that threshold gives on the held-out pairs (pooled) stand beside
the ones its calibration promised (mean over folds), with how it was calibrated.

Writes bench/results/quality[-TAG].json and .md; ``--merge`` lays the rows run now over that file's rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.classics import CLASSIC_ROWS, Classic, load_images
from bench.datasets import (
    FACES,
    FORGERY_SUFFIX,
    SHARED_DATA,
    SIGNATURES,
    copy_identities,
    copy_omniglot,
    export_fashion,
    identity_folders,
    image_files,
)
from bench.identity import Pairs, assign_folds, errors_at, forgery_pairs, identity_bootstrap, impostor_pairs
from simsearch import metrics, vectors
from simsearch.embedding import embed_files
from simsearch.indexing import IndexConfig, index_folder
from simsearch.io import find_images
from simsearch.models.encoder import Encoder
from simsearch.search import Searcher, vote_accuracy
from simsearch.store.collection import Collection
from simsearch.training import TrainConfig, train_encoder
from simsearch.training.sampling import encode_labels, verification_pairs

ROWS = [
    "pixels",
    "pca",
    "autoencoder",
    "denoising",
    "vae",
    "siamese:contrastive",
    "siamese:triplet",
    "siamese:ntxent",
]
OMNIGLOT_TRAIN = ["Greek", "Korean", "Latin"]
OMNIGLOT_UNSEEN = ["Balinese", "Early_Aramaic"]
#: The verification data sets: their folder in ../shared/data and how many identity folds.
VERIFICATION = {"faces": (FACES, 4), "signatures": (SIGNATURES, 3)}
DATASETS = ["fashion", "omniglot", *VERIFICATION]
#: On faces and signatures ``pixels`` and ``pca`` are the hand-crafted rows; the neural families follow them.
VERIFICATION_ROWS = CLASSIC_ROWS + [r for r in ROWS if r not in CLASSIC_ROWS]
BOOTSTRAP_RESAMPLES = 1000


def rows_of(dataset: str) -> list[str]:
    return VERIFICATION_ROWS if dataset in VERIFICATION else ROWS


def config_for(row: str, args: argparse.Namespace) -> TrainConfig:
    family, _, loss = row.partition(":")
    overrides = {k: v for k, v in json.loads(args.config).items()} if args.config else {}
    return TrainConfig(
        **{
            "family": family,
            "loss": loss or "contrastive",
            "epochs": args.epochs,
            "max_seconds": args.max_seconds,
            "device": args.device,
            "seed": args.seed,
            **overrides,
        }
    )


def train_row(row: str, folder: Path, args: argparse.Namespace) -> tuple[Encoder, dict]:
    entries, _ = find_images(folder)
    started = time.perf_counter()
    encoder = train_encoder(entries, config_for(row, args))
    seconds = time.perf_counter() - started
    epochs = [h["seconds"] for h in encoder.history]
    return encoder, {
        "train_seconds": round(seconds, 1),
        "epochs": len(epochs),
        "epoch_seconds_median": round(statistics.median(epochs), 3) if epochs else None,
        "input": [encoder.preprocess.channels, *encoder.preprocess.size],
        "invert": encoder.preprocess.invert,
        "dim": encoder.dim,
        "device": encoder.training.get("device", "cpu"),
        "recipe": encoder.training.get("recipe", {}).get("name"),  # what the options left on auto took
    }


def embed(encoder: Encoder, paths: list[Path]) -> np.ndarray:
    """The embeddings query, verify and eval make of these files (``simsearch.embedding.embed_files``)."""
    return embed_files(encoder, paths, convert=True, strict=True).embeddings


def fashion(row: str, work: Path, args: argparse.Namespace) -> dict:
    train_dir, test_dir = work / "fashion" / "train", work / "fashion" / "test"
    encoder, record = train_row(row, train_dir, args)
    model = work / "models" / f"fashion-{row.replace(':', '-')}"
    encoder.save(model)
    collection = Collection(work / "indexes" / model.name)
    index_folder(train_dir, collection, IndexConfig(model=str(model), device=args.device))
    queries = sorted(test_dir.rglob("*.png"))
    truth = [q.parent.name for q in queries]
    searcher = Searcher(collection, device=args.device)
    results = searcher.query_files(queries, 9)
    record["knn9_accuracy"] = round(vote_accuracy(results, truth), 4)
    nearest = [r.neighbours[0].label for r in results]
    record["knn1_accuracy"] = round(float(np.mean([a == b for a, b in zip(nearest, truth, strict=True)])), 4)
    if encoder.threshold:
        record["heldout_eer"] = round(encoder.threshold["eer"], 4)
    return record


def omniglot(row: str, work: Path, args: argparse.Namespace) -> dict:
    encoder, record = train_row(row, work / "omniglot" / "train", args)
    unseen = work / "omniglot" / "unseen"
    entries, _ = find_images(unseen)
    z = embed(encoder, [e.path for e in entries])
    y, classes = encode_labels([e.label for e in entries])
    i, j, same = verification_pairs(y, np.random.default_rng(0), max_genuine=10**9)
    distances = vectors.distances(z[i], z[j], encoder.metric)  # as verify and eval measure them
    eer = metrics.equal_error_rate(distances, same)[0]
    record.update(
        unseen_characters=len(classes),
        pairs={"genuine": int(same.sum()), "impostor": int((~same).sum())},
        roc_auc=round(metrics.roc_auc(distances, same), 4),
        eer=round(eer, 4),
    )
    if encoder.threshold:
        # The threshold calibrated on held-out *training-alphabet* characters, applied to unseen alphabets.
        t = encoder.threshold["value"]
        record["calibrated_threshold"] = {
            "value": round(t, 4),
            "far_on_unseen": round(float((distances[~same] <= t).mean()), 4),
            "frr_on_unseen": round(float((distances[same] > t).mean()), 4),
        }
    record["one_shot_accuracy"] = round(one_shot(encoder), 4)
    if encoder.threshold:
        record["heldout_eer"] = round(encoder.threshold["eer"], 4)  # held-out characters of the training alphabets
    return record


def one_shot(encoder: Encoder) -> float:
    """Mean accuracy over the 20 official 20-way one-shot runs: each test image takes the class of its
    nearest training image (in the encoder's metric, as every other distance here)."""
    root = SHARED_DATA / "omniglot" / "one-shot-runs"
    correct = total = 0
    for run in sorted(p for p in root.iterdir() if p.is_dir()):
        pairs = [line.split() for line in (run / "class_labels.txt").read_text().splitlines() if line.strip()]
        tests = [root / a for a, _ in pairs]
        answers = [root / b for _, b in pairs]
        train = sorted((run / "training").glob("*.png"))
        zt, zq = embed(encoder, train), embed(encoder, tests)
        nearest = vectors.exact_distances(zq, np.broadcast_to(zt, (len(zq), *zt.shape)), encoder.metric).argmin(1)
        correct += sum(train[n].name == a.name for n, a in zip(nearest, answers, strict=True))
        total += len(tests)
    return correct / total


@dataclasses.dataclass(frozen=True)
class Fold:
    """One identity fold: the training folder (the other folds' identities) and the held-out pairs."""

    train: Path
    heldout: list[str]
    pairs: Pairs


def prepare_folds(dataset: str, work: Path) -> list[Fold]:
    """The folds of a verification data set, their training folders copied under ``work``. The pairs depend on
    the fold alone (rng seeded by its index), so every row is scored on the same pairs."""
    folder, count = VERIFICATION[dataset]
    root = SHARED_DATA / folder
    identities = identity_folders(root)
    folds = []
    for k, heldout in enumerate(assign_folds(list(identities), count)):
        train = copy_identities(
            work / dataset / f"fold{k}" / "train", identities, [n for n in identities if n not in heldout]
        )
        if dataset == "faces":
            pairs = impostor_pairs({n: image_files(root / n) for n in heldout}, np.random.default_rng(k))
        else:
            genuine = {n: image_files(root / n) for n in heldout}
            pairs = forgery_pairs(genuine, {n: image_files(root / f"{n}{FORGERY_SUFFIX}") for n in heldout})
        folds.append(Fold(train, heldout, pairs))
    return folds


def fold_distances(row: str, dataset: str, fold: Fold, args: argparse.Namespace) -> tuple[np.ndarray, dict]:
    """The held-out pairs' distances under ``row`` fitted on the fold's training folder, and the fold's record."""
    pairs = fold.pairs
    entries, _ = find_images(fold.train)
    if row in CLASSIC_ROWS:
        started = time.perf_counter()
        model = Classic(row, dataset).fit(
            load_images([e.path for e in entries], dataset), [str(e.label) for e in entries]
        )
        record: dict = {"train_seconds": round(time.perf_counter() - started, 2)}
        z = model.features(load_images(pairs.files, dataset))
        return model.distance(z[pairs.i], z[pairs.j]), record
    encoder, trained = train_row(row, fold.train, args)
    record = {k: trained[k] for k in ("train_seconds", "epochs", "epoch_seconds_median", "input", "dim", "device")}
    z = embed(encoder, pairs.files)
    distances = vectors.distances(z[pairs.i], z[pairs.j], encoder.metric)  # as verify and eval measure them
    if encoder.threshold:
        t = encoder.threshold
        record["threshold"] = {
            "value": t["value"],
            "promised": {"far": t["far"], "frr": t["frr"]},
            "measured": errors_at(distances, pairs.same, t["value"]),
            **{k: t[k] for k in ("split", "identities", "pairs", "calibration") if k in t},
        }
    return distances, record


def verification(row: str, dataset: str, folds: list[Fold], args: argparse.Namespace) -> dict:
    """A row fitted per fold and scored on the pooled held-out pairs of all folds."""
    distances, records = [], []
    for fold in folds:
        d, record = fold_distances(row, dataset, fold, args)
        record["heldout"] = fold.heldout
        record["eer"] = round(metrics.equal_error_rate(d, fold.pairs.same)[0], 4)
        distances.append(d)
        records.append(record)
    same = np.concatenate([f.pairs.same for f in folds])
    owner = np.concatenate([f.pairs.owner for f in folds])
    out: dict = {
        **identity_bootstrap(
            [(d, f.pairs.same, f.pairs.owner) for d, f in zip(distances, folds, strict=True)],
            BOOTSTRAP_RESAMPLES,
            seed=0,
        ),
        "identities": len(set(owner)),
        "pairs": {"genuine": int(same.sum()), "impostor": int((~same).sum())},
        "train_seconds": round(sum(r["train_seconds"] for r in records), 1),
    }
    if "epochs" in records[0]:
        out["epochs"] = [r["epochs"] for r in records]
    thresholds = [r["threshold"] for r in records if "threshold" in r]
    if thresholds:
        if len(thresholds) != len(records):
            raise RuntimeError(f"{row}: only {len(thresholds)} of {len(records)} folds stored a threshold")
        counts = {k: sum(t["measured"][k] for t in thresholds) for k in thresholds[0]["measured"]}
        out["threshold"] = {
            "promised_far": round(float(np.mean([t["promised"]["far"] for t in thresholds])), 4),
            "measured_far": round(counts["false_accepts"] / counts["impostor"], 4),
            "promised_frr": round(float(np.mean([t["promised"]["frr"] for t in thresholds])), 4),
            "measured_frr": round(counts["false_rejects"] / counts["genuine"], 4),
        }
    out["folds"] = records
    return out


def calibration_note(r: dict) -> str:
    """How the stored thresholds were calibrated, in a few words (from the first fold, ranges over folds)."""
    folds = [f["threshold"] for f in r["folds"] if "threshold" in f]
    if not folds:
        return "–"

    def spread(values: list) -> str:
        return str(min(values)) if min(values) == max(values) else f"{min(values)}–{max(values)}"

    parts = [", ".join(sorted({str(t.get("split", "?")) for t in folds}))]
    if all("identities" in t for t in folds):
        parts.append(f"{spread([t['identities'] for t in folds])} identities")
    if all("pairs" in t for t in folds):
        genuine = spread([t["pairs"]["genuine"] for t in folds])
        impostor = spread([t["pairs"]["impostor"] for t in folds])
        parts.append(f"{genuine}/{impostor} pairs")
    calibration = folds[0].get("calibration")  # the first fold's; the JSON keeps every fold's
    if isinstance(calibration, dict):
        shown = {"identities", "labels", "epochs", "chosen_epoch"} | ({"method"} if "split" in folds[0] else set())
        parts += [
            f"{k}={v}" for k, v in calibration.items() if k not in shown and isinstance(v, str | int | float | bool)
        ]
        forgeries = (
            calibration.get("pairs", {}).get("skilled_forgery") if isinstance(calibration.get("pairs"), dict) else 0
        )
        if forgeries:
            parts.append(f"{forgeries} skilled-forgery pairs")
    elif calibration is not None:
        parts.append(str(calibration))
    return "; ".join(parts)


def interval(values: list[float]) -> str:
    return f"{values[0]:.3f} [{values[1]:.3f}, {values[2]:.3f}]"


VERIFICATION_TITLES = {
    "faces": "Faces (AT&T, 28 people): 4 identity folds of 7; every genuine pair of a held-out person vs 4× random "
    "impostor pairs against the other held-out people",
    "signatures": "Signatures (SigComp2011 Dutch, 14 writers): 3 identity folds; each held-out writer's "
    "genuine–genuine pairs vs its genuine–skilled-forgery pairs",
}


def verification_markdown(dataset: str, rows: dict) -> list[str]:
    first = next(iter(rows.values()))
    lines = [
        "",
        f"## {VERIFICATION_TITLES[dataset]}",
        "",
        f"{first['identities']} identities, {first['pairs']['genuine']} genuine and {first['pairs']['impostor']} "
        "impostor pairs over all folds. EER and ROC AUC: each fold's model on its own held-out identities, the mean "
        "over folds, 95% intervals from a bootstrap over identities; pooled EER: all folds' pairs at once (one "
        "threshold across the fold models). Measured FAR/FRR: each fold model's stored threshold on its held-out "
        "pairs, counts pooled over folds.",
        "",
        "| row | EER [95%] | ROC AUC [95%] | pooled EER | promised FAR / measured FAR | promised FRR / measured FRR "
        "| calibration | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row, r in rows.items():
        t = r.get("threshold")
        far = f"{t['promised_far']:.3f} / {t['measured_far']:.3f}" if t else "–"
        frr = f"{t['promised_frr']:.3f} / {t['measured_frr']:.3f}" if t else "–"
        train = f"{r['train_seconds']}" + (f" ({'/'.join(map(str, r['epochs']))} epochs)" if "epochs" in r else "")
        pooled = f"{r['pooled_eer'][0]:.3f}" if "pooled_eer" in r else "–"
        lines.append(
            f"| {row} | {interval(r['eer'])} | {interval(r['roc_auc'])} | {pooled} | {far} | {frr} | {calibration_note(r)} "
            f"| {train} |"
        )
    return lines


def markdown(report: dict) -> str:
    lines = [f"# Latent-space quality ({report['date']}, {report['device']})"]
    if report.get("fashion"):
        lines += ["", "## Fashion-MNIST subset (3,615 train → 4,443 test), vote of k neighbours", ""]
        lines += [
            "| encoder | k=9 accuracy | k=1 accuracy | epochs | s/epoch | train s |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for row, r in report["fashion"].items():
            lines.append(
                f"| {row} | {r['knn9_accuracy']:.3f} | {r['knn1_accuracy']:.3f} | {r['epochs']} | "
                f"{r['epoch_seconds_median'] or '–'} | {r['train_seconds']} |"
            )
    if report.get("omniglot"):
        lines += [
            "",
            f"## Omniglot: trained on {', '.join(OMNIGLOT_TRAIN)}; evaluated on unseen {', '.join(OMNIGLOT_UNSEEN)}",
            "",
        ]
        lines += [
            "| encoder | ROC AUC | EER | 20-way one-shot | input | epochs | s/epoch | train s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row, r in report["omniglot"].items():
            shape = "×".join(map(str, r["input"])) + (" inv" if r["invert"] else "")
            lines.append(
                f"| {row} | {r['roc_auc']:.3f} | {r['eer']:.3f} | {r['one_shot_accuracy']:.3f} | {shape} | "
                f"{r['epochs']} | {r['epoch_seconds_median'] or '–'} | {r['train_seconds']} |"
            )
    for dataset in VERIFICATION:
        if report.get(dataset):
            lines += verification_markdown(dataset, report[dataset])
    lines += [""] + [f"Note: {note}" for note in report.get("notes", [])]  # hand-written in the JSON, kept by --merge
    lines += ["Command: `" + report["command"] + "`"]
    lines += [f"Rows updated by `{u['command']}` ({u['date']})" for u in report.get("updates", [])]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help=f"rows to run (default: all of each data set's: {ROWS} on fashion and omniglot, {VERIFICATION_ROWS} "
        "on faces and signatures)",
    )
    parser.add_argument("--datasets", nargs="*", default=["fashion", "omniglot"], choices=DATASETS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's (training.recipe)")
    parser.add_argument("--max-seconds", type=float, default=TrainConfig.max_seconds)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--config", default="", help="JSON of TrainConfig fields to override, e.g. '{\"augment\": 1.0}'"
    )
    parser.add_argument("--tag", default="", help="suffix of the result files (quality-TAG.json)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--merge", action="store_true", help="update the rows run now in an existing result file, keep the others"
    )
    args = parser.parse_args()
    if args.only is not None:
        known = {r for d in args.datasets for r in rows_of(d)}
        unknown = [r for r in args.only if r not in known]
        if unknown:
            parser.error(f"no row {', '.join(unknown)} on {', '.join(args.datasets)}; rows: {sorted(known)}")
    if not SHARED_DATA.is_dir():
        sys.exit(f"no benchmark data at {SHARED_DATA} — see the README's Benchmarks section")
    args.out.mkdir(parents=True, exist_ok=True)
    name = "quality" + (f"-{args.tag}" if args.tag else "")
    existing = args.out / f"{name}.json"
    base = json.loads(existing.read_text()) if args.merge and existing.is_file() else None
    report: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(0)
        if args.device != "cpu" and torch.cuda.is_available()
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "command": "python " + " ".join(sys.argv),
        **{dataset: {} for dataset in args.datasets},
    }
    with tempfile.TemporaryDirectory(prefix="simsearch-quality-") as tmp:
        work = Path(tmp)
        for dataset in args.datasets:
            started_dataset = time.perf_counter()
            rows = [r for r in (args.only if args.only is not None else rows_of(dataset)) if r in rows_of(dataset)]
            if dataset == "fashion":
                export_fashion(work / "fashion" / "train", "train")
                export_fashion(work / "fashion" / "test", "t10k")
            elif dataset == "omniglot":
                copy_omniglot(work / "omniglot" / "train", OMNIGLOT_TRAIN)
                copy_omniglot(work / "omniglot" / "unseen", OMNIGLOT_UNSEEN)
            folds = prepare_folds(dataset, work) if dataset in VERIFICATION else []
            for row in rows:
                started = time.perf_counter()
                if dataset in VERIFICATION:
                    record = verification(row, dataset, folds, args)
                else:
                    record = (fashion if dataset == "fashion" else omniglot)(row, work, args)
                record["wall_seconds"] = round(time.perf_counter() - started, 1)
                report[dataset][row] = record
                summary = {k: v for k, v in record.items() if k != "folds"}
                print(f"{dataset:10s} {row:22s} {json.dumps(summary)}", flush=True)
                save(report, base, args.out / name)  # after every row: an interrupted run keeps what it measured
            print(f"{dataset}: {time.perf_counter() - started_dataset:.0f} s", flush=True)
    print(markdown(merged(report, base)))


def merged(report: dict, base: dict | None) -> dict:
    """``report``'s rows laid over ``base`` (an earlier result file), or ``report`` itself: every data set of
    either, rows of ``base`` in their order with the ones run now replacing them, new rows after."""
    if base is None:
        return report
    out = json.loads(json.dumps(base))
    for dataset in DATASETS:
        if dataset not in report and dataset not in out:
            continue
        now, before = report.get(dataset, {}), out.get(dataset, {})
        out[dataset] = {row: now.get(row, r) for row, r in before.items()}
        out[dataset].update({row: r for row, r in now.items() if row not in out[dataset]})
    out.setdefault("updates", []).append({"date": report["date"], "command": report["command"]})
    return out


def save(report: dict, base: dict | None, stem: Path) -> None:
    result = merged(report, base)
    Path(f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    Path(f"{stem}.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
