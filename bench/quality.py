"""Latent-space quality of every encoder family, on the real data in ../shared/data, in one run.

    python bench/quality.py                       # everything, on this machine's default device
    python bench/quality.py --only siamese:contrastive --device cuda --tag gpu

Fashion-MNIST subset: train on the train split, index it, query every test image: k=9 (and k=1) vote accuracy.
Omniglot background_small1: train on three alphabets (Greek, Korean, Latin), evaluate on the two unseen ones
(Balinese, Early_Aramaic): verification ROC AUC and EER over every genuine pair and four times as many random
impostor pairs; and accuracy on the 20 official 20-way one-shot runs (nearest training image).
Each neural row also records its wall time per epoch. Writes bench/results/quality[-TAG].json and .md.
"""

from __future__ import annotations

import argparse
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

from bench.datasets import SHARED_DATA, copy_omniglot, export_fashion
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


def markdown(report: dict) -> str:
    lines = [f"# Latent-space quality ({report['date']}, {report['device']})", ""]
    lines += ["## Fashion-MNIST subset (3,615 train → 4,443 test), vote of k neighbours", ""]
    lines += [
        "| encoder | k=9 accuracy | k=1 accuracy | epochs | s/epoch | train s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row, r in report["fashion"].items():
        lines.append(
            f"| {row} | {r['knn9_accuracy']:.3f} | {r['knn1_accuracy']:.3f} | {r['epochs']} | "
            f"{r['epoch_seconds_median'] or '–'} | {r['train_seconds']} |"
        )
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
            f"| {row} | {r['roc_auc']:.3f} | {r['eer']:.3f} | {r['one_shot_accuracy']:.3f} | {shape} | {r['epochs']} | "
            f"{r['epoch_seconds_median'] or '–'} | {r['train_seconds']} |"
        )
    lines += ["", "Command: `" + report["command"] + "`"]
    lines += [f"Rows updated by `{u['command']}` ({u['date']})" for u in report.get("updates", [])]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=ROWS, help=f"rows to run (default: all of {ROWS})")
    parser.add_argument("--datasets", nargs="*", default=["fashion", "omniglot"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
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
        "fashion": {},
        "omniglot": {},
    }
    with tempfile.TemporaryDirectory(prefix="simsearch-quality-") as tmp:
        work = Path(tmp)
        export_fashion(work / "fashion" / "train", "train")
        export_fashion(work / "fashion" / "test", "t10k")
        copy_omniglot(work / "omniglot" / "train", OMNIGLOT_TRAIN)
        copy_omniglot(work / "omniglot" / "unseen", OMNIGLOT_UNSEEN)
        for dataset in args.datasets:
            for row in args.only:
                started = time.perf_counter()
                record = (fashion if dataset == "fashion" else omniglot)(row, work, args)
                report[dataset][row] = record
                print(
                    f"{dataset:9s} {row:22s} {json.dumps(record)}  ({time.perf_counter() - started:.0f} s)", flush=True
                )
                save(report, base, args.out / name)  # after every row: an interrupted run keeps what it measured
    print(markdown(merged(report, base)))


def merged(report: dict, base: dict | None) -> dict:
    """``report``'s rows laid over ``base`` (an earlier result file), or ``report`` itself."""
    if base is None:
        return report
    out = json.loads(json.dumps(base))
    for dataset in ("fashion", "omniglot"):
        out[dataset] = {row: report[dataset].get(row, r) for row, r in out[dataset].items()}
        out[dataset].update({row: r for row, r in report[dataset].items() if row not in out[dataset]})
    out.setdefault("updates", []).append({"date": report["date"], "command": report["command"]})
    return out


def save(report: dict, base: dict | None, stem: Path) -> None:
    result = merged(report, base)
    Path(f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    Path(f"{stem}.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
