"""The latent space, seen and used: one-class anomaly detection, stability under input noise, and the map's cost.

    python bench/latent.py                                        # everything: 41 minutes on this 2-core CPU
    python bench/latent.py --classes 0 --max-seconds 5 --test 200 --map-sizes 1000 --tag quick   # end to end, quickly
    python bench/latent.py --sections anomaly --datasets mnist --only vae:recon vae:knn --merge

**Anomaly** (one class is normal): for each class c of MNIST and of the Fashion-MNIST subset, each row's model is
trained on class c's training images only (at most ``--train``, 600, a seeded sample) through simsearch's own
training (``simsearch.training.train_neural``, bounded by ``--max-seconds`` per model, its learning-rate schedule
planned for the epochs that fit in that time: ``--epochs auto``), then scores one fixed
sample of the test images of every class (at most ``--test``, 2,000); the AUROC (scikit-learn's
``roc_auc_score``, the other classes as anomalies, higher score = more anomalous) is reported per class with its
mean over the classes. Scores are ``simsearch.latent.anomaly``'s: ``reconstruction_errors`` (MSE in the model's
input space) and ``knn_scores`` (mean distance to the k = 5 nearest training embeddings, in the encoder's metric).
Rows: the autoencoder, denoising and VAE families by reconstruction error and by k-NN distance (one model scores
both), the self-supervised Siamese family (``--loss ntxent``, no labels) by k-NN distance, and two baselines: PCA
reconstruction error (64 components, fitted on the class's [0, 1] pixels) and raw-pixel k-NN distance; and
simsearch's pixels encoder with ``gamma`` 0.5 (``pixels-sqrt:knn``: the k-NN distance between the square roots of
the intensities, ``train --family pixels --gamma 0.5``).
MNIST here is ``../shared/data/mnist``, which holds only the official test file (10,000 images): it is split at
random (seed 0) into 5,000 training and 5,000 test images. Fashion-MNIST is the subset in ``../shared/data`` (train
3,615, test 4,443). Both are far smaller than the published protocols' (6,000 training images of the class, all
10,000 test images); published figures are shown beside ours as anchors, not as our results.

**Stability**: the autoencoder, denoising, VAE and Siamese (contrastive, trained with the labels) families, trained
on at most ``--stability-train`` training images of every class (``--max-seconds`` each), measured by
``simsearch.latent.stability.measure`` (what ``simsearch stability`` runs) on ``--stability-images`` test images
at noise σ = 0.05, 0.1, 0.2. The rank histograms are written to ``bench/results/latent/`` and linked from
``latent.md``, with a line on whether "Latent Space Characterization of Autoencoder Variants" (Shrivastava,
Rameshan, Agnihotri)'s finding — plain and denoising autoencoders' latent ranks change under noise (a stratified
manifold), a VAE's do not (a smooth one) — shows in simsearch's encoders, decided from the measured shares.

**Map**: ``simsearch map`` on a collection of generated 28×28 images indexed with ``--model pixels``, at each of
``--map-sizes`` (10,000 and 100,000) points, through the command line in a subprocess: wall time, peak RSS (the
child's, from ``getrusage(RUSAGE_CHILDREN)`` in a wrapper process of its own) and the size of ``map.html``. Skipped,
with the reason printed, when ``python -m simsearch map --help`` fails.

Writes bench/results/latent[-TAG].json and .md after every model; ``--merge`` lays what runs now over that file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# As the command line does (cli.core.main): torch's OpenMP threads wait passively instead of spinning, which on
# this shared 2-core machine made training 2–3× faster. Read when torch is imported, just below.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.datasets import SHARED_DATA, read_idx
from simsearch.io import Preprocess
from simsearch.latent.stability import (
    MODES,
    embed_with_features,
    latent_ranks,
    measure,
    normalise,
    plot_curves,
    plot_ranks,
)
from simsearch.models.encoder import Encoder
from simsearch.training import TrainConfig, pixels_encoder, train_neural
from simsearch.training.recipe import PLAIN, RECIPES

DATASETS = ["mnist", "fashion"]
#: Anomaly rows: ``model:score``; the model is a family (``siamese:ntxent`` with its loss) or a baseline.
ANOMALY_ROWS = [
    "autoencoder:recon",
    "autoencoder:knn",
    "denoising:recon",
    "denoising:knn",
    "vae:recon",
    "vae:knn",
    "siamese:ntxent:knn",
    "pca:recon",
    "pixels:knn",
    "pixels-sqrt:knn",
]
BASELINES = ("pca", "pixels", "pixels-sqrt")
#: ``pixels-sqrt``: simsearch's pixels encoder with ``Preprocess.gamma`` 0.5 (``train --family pixels --gamma 0.5``),
#: the square root of the intensities. Picked among eight pixel transforms tried on the Fashion test images (so
#: there a chosen figure); MNIST was looked at only afterwards. ``--gamma-sweep`` shows the plateau around it.
SQRT_GAMMA = 0.5
STABILITY_MODELS = ["autoencoder", "denoising", "vae", "siamese:contrastive"]
NOISE = (0.05, 0.1, 0.2)
#: A second count of the latent ranks: singular values above 1% of the largest (an effective rank).
EFFECTIVE_RTOL = 0.01
PCA_COMPONENTS = 64
SPLIT_SEED = 0
#: Published one-class AUROC means on the full data sets: anchors to read ours against, never our figures.
ANCHORS = {
    "mnist": ("Deep SVDD (Ruff et al. 2018, Table 1)", 0.948),
    "fashion": ("GEOM (Golan & El-Yaniv 2018)", 0.935),
}
TITLES = {"mnist": "MNIST", "fashion": "Fashion-MNIST subset"}


@dataclass
class Data:
    """One data set: [0, 1] pixels (n, 1, 28, 28) float32 and labels, split into a training and a test pool."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    split: str


def load_data(name: str) -> Data:
    if name == "mnist":
        folder = SHARED_DATA / "mnist"
        images = read_idx(folder / "t10k-images-idx3-ubyte.gz")
        labels = read_idx(folder / "t10k-labels-idx1-ubyte.gz")
        order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
        half = len(images) // 2
        train, test = np.sort(order[:half]), np.sort(order[half:])
        x = pixels(images)
        split = (
            f"the official MNIST test file ({len(images):,} images; the only MNIST file in ../shared/data), split at "
            f"random (seed {SPLIT_SEED}) into {len(train):,} training and {len(test):,} test images"
        )
        return Data(x[train], labels[train], x[test], labels[test], split)
    folder = SHARED_DATA / "fashion-mnist"
    train_x = read_idx(folder / "train-images-idx3-ubyte.gz")
    test_x = read_idx(folder / "t10k-images-idx3-ubyte.gz")
    split = (
        f"the Fashion-MNIST subset of ../shared/data: {len(train_x):,} training and {len(test_x):,} test images "
        "(the first of the official files)"
    )
    return Data(
        pixels(train_x),
        read_idx(folder / "train-labels-idx1-ubyte.gz"),
        pixels(test_x),
        read_idx(folder / "t10k-labels-idx1-ubyte.gz"),
        split,
    )


def pixels(images: np.ndarray) -> np.ndarray:
    """uint8 (n, 28, 28) → [0, 1] float32 (n, 1, 28, 28): what simsearch's preprocessing makes of these images at
    their own size (grey, dark background: no inversion, nothing to letterbox), before normalisation."""
    return (images.astype(np.float32) / 255.0)[:, None]


def sample(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most ``n`` of ``rows``, drawn at random with ``seed``, in order."""
    if len(rows) <= n:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))


def spec_for(x: np.ndarray) -> Preprocess:
    """The input spec ``train`` chooses for 28×28 grey images on a dark background (``load_training_images``):
    28×28, grey, not inverted, letterboxed, with mean and std fitted on the training images."""
    return Preprocess(size=(28, 28), channels=1, mean=(float(x.mean()),), std=(max(float(x.std()), 1e-3),))


#: Seconds per epoch per training image, last measured for each model key (``planned_epochs``).
EPOCH_COST: dict[str, float] = {}


def planned_epochs(key: str, x: np.ndarray, labels: list[str | None], args: argparse.Namespace) -> int:
    """``--epochs``, or with ``--epochs auto`` as many epochs as fit in 90% of ``--max-seconds`` at the speed last
    measured for ``key`` (a one-epoch probe the first time), between 3 and the plain recipe's epochs.

    The one-cycle learning-rate schedule spans ``epochs`` and warms up over its first 15%: a run cut short by the
    clock long before ``epochs`` stops while the rate is still rising (with 60 epochs planned and five run in 25 s,
    an autoencoder reached one-class AUROC 0.66 on MNIST's zeros). Planning the epochs that fit runs the schedule
    whole."""
    if args.epochs != "auto":
        return int(args.epochs)
    if key not in EPOCH_COST:
        probe, _ = train_model(key, x, labels, args, epochs=1)
        EPOCH_COST[key] = probe.history[0]["seconds"] / len(x)
    fits = int(0.9 * args.max_seconds / max(EPOCH_COST[key] * len(x), 1e-6))
    return max(3, min(RECIPES[PLAIN]["epochs"], fits))


def train_model(
    key: str, x: np.ndarray, labels: list[str | None], args: argparse.Namespace, epochs: int | None = None
) -> tuple[Encoder, dict]:
    """Train ``key`` (a family, or ``siamese:LOSS``) on [0, 1] pixels ``x`` through ``train_neural``, for
    ``epochs`` (default: ``planned_epochs``) and at most ``--max-seconds``."""
    family, _, loss = key.partition(":")
    planned = epochs if epochs is not None else planned_epochs(key, x, labels, args)
    spec = spec_for(x)
    config = TrainConfig(
        family=family,
        loss=loss or "contrastive",
        epochs=planned,
        max_seconds=args.max_seconds,
        device=args.device,
        seed=args.seed,
    )
    started = time.perf_counter()
    encoder = train_neural(normalise(x, spec), labels, spec, config)
    seconds = [h["seconds"] for h in encoder.history]
    if epochs is None and len(seconds) > 1:  # the first epoch carries the start-up: the others say the speed
        EPOCH_COST[key] = float(np.median(seconds[1:])) / len(x)
    return encoder, {
        "train_images": len(x),
        "train_seconds": round(time.perf_counter() - started, 1),
        "epochs_planned": planned,
        "epochs": len(encoder.history),
    }


def auroc(anomalous: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(anomalous, scores))


def pca_errors(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Each test image's mean squared PCA reconstruction error, PCA (``PCA_COMPONENTS``) fitted on ``train``."""
    from sklearn.decomposition import PCA

    flat_train, flat_test = train.reshape(len(train), -1), test.reshape(len(test), -1)
    pca = PCA(n_components=min(PCA_COMPONENTS, len(train) - 1), random_state=0).fit(flat_train)
    rebuilt = pca.inverse_transform(pca.transform(flat_test))
    return np.asarray(((flat_test - rebuilt) ** 2).mean(axis=1))


class Clock:
    """Progress with an ETA: each step has a weight (its expected seconds), the ETA scales the time spent so far by
    the weight left."""

    def __init__(self, total: float) -> None:
        self.total, self.done, self.steps, self.started = max(total, 1e-9), 0.0, 0, time.perf_counter()

    def step(self, what: str, weight: float = 1.0) -> None:
        self.done += weight
        self.steps += 1
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(self.done, 1e-9) * max(self.total - self.done, 0.0)
        print(f"[{self.steps}, {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min] {what}", flush=True)


#: The weight of a baseline's step against a trained model's (1): a PCA or a k-NN over pixels takes seconds.
BASELINE_WEIGHT = 0.05


# --- anomaly ----------------------------------------------------------------------------------------------------


def anomaly_class(
    dataset: str,
    data: Data,
    test_rows: np.ndarray,
    c: int,
    rows: list[str],
    args: argparse.Namespace,
    report: dict,
    save: Any,
    clock: Clock,
) -> None:
    from simsearch.latent.anomaly import knn_scores, reconstruction_errors

    section = report["anomaly"][dataset]
    train_rows = sample(np.flatnonzero(data.train_y == c), args.train, args.seed + c)
    x_train, x_test = data.train_x[train_rows], data.test_x[test_rows]
    anomalous = data.test_y[test_rows] != c

    def record(row: str, scores: np.ndarray, extra: dict) -> None:
        entry = section["rows"].setdefault(row, {"per_class": {}, "models": {}})
        entry["per_class"][str(c)] = round(auroc(anomalous, scores), 4)
        entry["models"][str(c)] = extra

    section["train_images"][str(c)] = len(x_train)
    for model in dict.fromkeys(r.rpartition(":")[0] for r in rows):
        wanted = [r for r in rows if r.rpartition(":")[0] == model]
        if model == "pca":
            record("pca:recon", pca_errors(x_train, x_test), {"components": min(PCA_COMPONENTS, len(x_train) - 1)})
        elif model == "pixels":
            flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
            record("pixels:knn", knn_scores(flat(x_train), flat(x_test), args.k, "l2"), {})
        elif model == "pixels-sqrt":
            record("pixels-sqrt:knn", gamma_knn_scores(x_train, x_test, SQRT_GAMMA, args.k), {"gamma": SQRT_GAMMA})
        else:
            encoder, info = train_model(model, x_train, [None] * len(x_train), args)
            queries = normalise(x_test, encoder.preprocess)
            if f"{model}:recon" in wanted:
                record(f"{model}:recon", reconstruction_errors(encoder, queries), info)
            if f"{model}:knn" in wanted:
                reference = encoder.embed(normalise(x_train, encoder.preprocess))
                record(f"{model}:knn", knn_scores(reference, encoder.embed(queries), args.k, encoder.metric), info)
        figures = ", ".join(f"{r} {section['rows'][r]['per_class'][str(c)]:.3f}" for r in wanted)
        save()
        clock.step(f"{dataset} class {c}: {figures}", BASELINE_WEIGHT if model in BASELINES else 1.0)


def gamma_knn_scores(x_train: np.ndarray, x_test: np.ndarray, gamma: float, k: int) -> np.ndarray:
    """The k-NN scores of simsearch's pixels encoder with ``Preprocess.gamma`` ``gamma`` (28×28 grey)."""
    from simsearch.latent.anomaly import knn_scores

    encoder = pixels_encoder(Preprocess(size=(28, 28), channels=1, gamma=gamma))
    reference = encoder.embed(normalise(x_train, encoder.preprocess))
    return knn_scores(reference, encoder.embed(normalise(x_test, encoder.preprocess)), k, "l2")


def gamma_sweep(data: Data, test_rows: np.ndarray, args: argparse.Namespace) -> dict[str, dict]:
    """``--gamma-sweep``: the mean AUROC of the pixels encoder's k-NN score at each gamma, on the same classes and
    test images as the rows (so a sensitivity, after the fact: not how ``pixels-sqrt`` got its gamma)."""
    out: dict[str, dict] = {}
    for gamma in args.gamma_sweep:
        per_class = {}
        for c in args.classes:
            train_rows = sample(np.flatnonzero(data.train_y == c), args.train, args.seed + c)
            anomalous = data.test_y[test_rows] != c
            scores = gamma_knn_scores(data.train_x[train_rows], data.test_x[test_rows], gamma, args.k)
            per_class[str(c)] = round(auroc(anomalous, scores), 4)
        out[f"{gamma:g}"] = {"per_class": per_class, "mean": round(float(np.mean(list(per_class.values()))), 4)}
    return out


# --- stability --------------------------------------------------------------------------------------------------


def stability_dataset(
    dataset: str, data: Data, args: argparse.Namespace, report: dict, save: Any, clock: Clock, figures: Path
) -> None:
    rows = sample(np.arange(len(data.train_x)), args.stability_train, args.seed)
    test = sample(np.arange(len(data.test_x)), args.stability_images, args.seed + 1)
    x_train, x_test = data.train_x[rows], data.test_x[test]
    section = report["stability"].setdefault(dataset, {})
    results = []
    for key in args.stability_models:
        labels = [str(y) for y in data.train_y[rows]] if key.startswith("siamese") else [None] * len(rows)
        encoder, info = train_model(key, x_train, labels, args)
        stem = f"{dataset}-{key.replace(':', '-')}"
        result = measure(encoder, x_test, NOISE, k=10, seed=args.seed, name=key)
        plot_ranks(result, figures / f"{stem}-ranks.png")
        # The same images and noise, ranks counted above 1% of the largest singular value (an effective rank).
        effective = measure(encoder, x_test, NOISE, k=10, seed=args.seed, name=key, rtol=EFFECTIVE_RTOL)
        plot_ranks(effective, figures / f"{stem}-ranks-effective.png")
        section[key] = {
            **result.to_json(),
            **info,
            "test_images": len(x_test),
            "clean_rank_deficiency": rank_deficiency(encoder, x_test),
            "ranks_png": f"{stem}-ranks.png",
            "effective": {
                "rtol": EFFECTIVE_RTOL,
                "clean_ranks": effective.to_json()["clean_ranks"],
                "levels": [
                    {"sigma": lv.sigma, "ranks_changed": lv.ranks_changed, "ranks": lv.to_json()["ranks"]}
                    for lv in effective.levels
                ],
                "ranks_png": f"{stem}-ranks-effective.png",
            },
        }
        results.append(result)
        save()
        top, top_effective = result.levels[-1], effective.levels[-1]
        clock.step(
            f"{dataset} stability {key}: σ={top.sigma:g} moved {top.movement:.3f}, k-NN kept {top.knn_overlap:.3f}, "
            f"ranks changed {share(top.ranks_changed)} (at rtol {EFFECTIVE_RTOL:g}: "
            f"{share(top_effective.ranks_changed)})"
        )
    for name, (key, label) in {
        "movement": ("movement", "median shift ÷ median distance between images"),
        "knn": ("knn_overlap", "k-NN overlap with the clean neighbours"),
    }.items():
        plot_curves(results, key, label, figures / f"{dataset}-{name}.png")


def rank_deficiency(encoder: Encoder, x: np.ndarray) -> dict[str, float]:
    """Why clean latent tensors fall short of full rank in the channel unfolding: the share of images below full
    rank, of images whose feature map has two identical columns (two positions with the same C values: their
    receptive fields see the same thing, such as blank background and the same padding), and of images with both."""
    _, features = embed_with_features(encoder, normalise(x, encoder.preprocess))
    assert features is not None
    n, c, h, w = features.shape
    deficient = latent_ranks(features)["channels"] < min(c, h * w)
    columns = features.reshape(n, c, h * w).transpose(0, 2, 1)
    identical = np.array([len(np.unique(image, axis=0)) < h * w for image in columns])
    return {
        "below_full_rank": float(deficient.mean()),
        "identical_columns": float(identical.mean()),
        "below_full_rank_with_identical_columns": float((deficient & identical).mean()),
    }


def share(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def distinct_ranks(ranks: dict | None) -> str:
    """How many different ranks the images have, per unfolding: "C/H/W"."""
    if not ranks:
        return "–"
    return "/".join(str(sum(1 for count in ranks[mode]["counts"] if count)) for mode in MODES)


def mean_ranks(ranks: dict | None) -> str:
    return "–" if not ranks else "/".join(f"{ranks[mode]['mean']:.1f}" for mode in MODES)


def changed_at_top(models: dict, effective: bool) -> dict[str, float] | None:
    """The share of images whose latent ranks changed at the largest σ, for the autoencoder, denoising and VAE."""
    out = {}
    for key in ("autoencoder", "denoising", "vae"):
        record = models.get(key, {}).get("effective") if effective else models.get(key)
        if not record or not record["levels"] or record["levels"][-1]["ranks_changed"] is None:
            return None
        out[key] = record["levels"][-1]["ranks_changed"]
    return out


def paper_verdict(models: dict) -> str | None:
    """Whether the paper's finding shows up, from the share of images whose latent ranks changed at the largest σ:
    the autoencoder's and denoising autoencoder's against the VAE's."""
    numerical = changed_at_top(models, effective=False)
    if numerical is None:
        return None
    sigma = models["vae"]["levels"][-1]["sigma"]
    ae, dae, vae = numerical["autoencoder"], numerical["denoising"], numerical["vae"]
    shares = (
        f"at σ = {sigma:g} the numerical ranks of the latent tensors changed for {ae:.1%} (autoencoder), "
        f"{dae:.1%} (denoising) and {vae:.1%} (VAE) of the images"
    )
    if vae < min(ae, dae) and vae <= 0.01 and min(ae, dae) >= 0.05:
        verdict = "the paper's finding shows up: the AE and DAE latents change rank (strata), the VAE's keep theirs"
    elif vae < min(ae, dae):
        verdict = (
            "the VAE's ranks move least, as the paper finds, but the paper's clear split (ranks that change against "
            "ranks that stay) does not show"
        )
    elif max(ae, dae, vae) == 0:
        verdict = "no model's ranks change, so the paper's stratified-versus-smooth split does not show here"
    else:
        verdict = "the paper's finding does not show up here: the VAE's ranks change as often as the others'"
    text = f"{shares}; {verdict}."
    causes = [models[k].get("clean_rank_deficiency") for k in ("autoencoder", "denoising", "vae")]
    if all(causes) and all(c["below_full_rank"] > 0 for c in causes):
        explained = all(c["below_full_rank_with_identical_columns"] == c["below_full_rank"] for c in causes)
        text += (
            f" The clean tensors below full rank ({', '.join(share(c['below_full_rank']) for c in causes)} of the "
            "images) "
            + (
                "all have two identical columns in the channel unfolding — two feature-map positions whose receptive "
                "fields see only background and the same padding — and noise makes every column different: the "
                "rank changes come from the images' blank margins, not from the families."
                if explained
                else "do not all have two identical columns: some other linear dependence lowers their rank."
            )
        )
    effective = changed_at_top(models, effective=True)
    if effective is not None:
        text += (
            f" Counting only singular values above {EFFECTIVE_RTOL:.0%} of the largest (an effective rank), "
            f"{effective['autoencoder']:.1%}, {effective['denoising']:.1%} and {effective['vae']:.1%} changed."
        )
    return text


# --- map --------------------------------------------------------------------------------------------------------

MEASURE = """
import json, resource, subprocess, sys, time
command, timeout, out, err = json.loads(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
started = time.perf_counter()
with open(out, "wb") as o, open(err, "wb") as e:
    try:
        rc = subprocess.run(command, stdout=o, stderr=e, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - started,
                  "peak_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def measured(command: list[str], timeout: float, work: Path, env: dict[str, str]) -> dict:
    """Run ``command`` in a wrapper process of its own: its return code (or "timeout"), wall seconds, the peak RSS
    of the command (the wrapper's only child), and the tail of its stderr."""
    out, err = work / "stdout.txt", work / "stderr.txt"
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps(command), str(timeout), str(out), str(err)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    result = json.loads(done.stdout)
    result["stderr_tail"] = err.read_text(errors="replace")[-500:]
    return result


def generate_images(folder: Path, n: int, seed: int) -> None:
    """``n`` 28×28 grey PNGs in 10 class folders: each class a blurred random prototype, each image it shifted by
    up to 3 pixels with pixel noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    prototypes = np.zeros((10, 28, 28))
    for c in range(10):
        for _ in range(4):
            cy, cx, r = rng.uniform(6, 22), rng.uniform(6, 22), rng.uniform(2, 6)
            prototypes[c] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    prototypes = 255 * prototypes / prototypes.max(axis=(1, 2), keepdims=True)
    for c in range(10):
        (folder / str(c)).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % 10
        shifted = np.roll(prototypes[c], tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
        image = np.clip(shifted + rng.normal(0, 20, (28, 28)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / str(c) / f"{i:06d}.png")


def map_section(args: argparse.Namespace, report: dict, save: Any, work: Path) -> None:
    env = {**os.environ, "SIMSEARCH_HOME": str(work / "home")}
    probe = subprocess.run(
        [sys.executable, "-m", "simsearch", "map", "--help"], capture_output=True, text=True, env=env
    )
    if probe.returncode != 0:
        reason = "skipped: `simsearch map` does not exist yet (`python -m simsearch map --help` failed)"
        print(f"map: {reason}", flush=True)
        report["map"] = {"skipped": reason}
        save()
        return
    report["map"] = {}
    for n in args.map_sizes:
        folder, name, out = work / f"generated-{n}", f"generated-{n}", work / f"map-{n}"
        started = time.perf_counter()
        generate_images(folder, n, args.seed)
        generated = time.perf_counter() - started
        index = measured(
            [sys.executable, "-m", "simsearch", "index", str(folder), "--name", name, "--model", "pixels"],
            args.map_timeout,
            work,
            env,
        )
        record: dict[str, Any] = {
            "points": n,
            "generate_seconds": round(generated, 1),
            "index_seconds": round(index["seconds"], 1),
            "index_peak_rss_mb": round(index["peak_rss_kb"] / 1024, 1),
        }
        if index["rc"] != 0:
            record["error"] = f"index failed ({index['rc']}): {index['stderr_tail']}"
        else:
            command = ["map", "--name", name, "--out", str(out), "--method", "auto"]
            run = measured([sys.executable, "-m", "simsearch", *command], args.map_timeout, work, env)
            page = out / "map.html"
            record.update(
                command="python -m simsearch " + " ".join(command),
                rc=run["rc"],
                map_seconds=round(run["seconds"], 1),
                map_peak_rss_mb=round(run["peak_rss_kb"] / 1024, 1),
                map_html_bytes=page.stat().st_size if page.is_file() else None,
            )
            if run["rc"] != 0:
                record["error"] = run["stderr_tail"]
        report["map"][str(n)] = record
        save()
        print(f"map {n:,} points: {json.dumps(record)}", flush=True)


# --- the result files -------------------------------------------------------------------------------------------


def deep_merge(base: Any, now: Any) -> Any:
    """``now`` laid over ``base``: dictionaries merged key by key, anything else replaced."""
    if isinstance(base, dict) and isinstance(now, dict):
        out = dict(base)
        for key, value in now.items():
            out[key] = deep_merge(base.get(key), value) if key in base else value
        return out
    return now


def with_means(report: dict) -> dict:
    """Each anomaly row's mean AUROC over the classes it has, and how many."""
    for section in report.get("anomaly", {}).values():
        for entry in section.get("rows", {}).values():
            values = list(entry["per_class"].values())
            entry["mean"] = round(float(np.mean(values)), 4) if values else None
            entry["classes"] = len(values)
    return report


def markdown(report: dict) -> str:
    lines = [
        "# The latent space, seen and used (`bench/latent.py`)",
        "",
        f"Command: `{report.get('command')}` — {report.get('date')}, {report.get('device')}.",
    ]
    for update in report.get("updates", []):
        lines.append(f"Updated {update['date']}: `{update['command']}`.")
    lines += ["", "## One-class anomaly detection (AUROC, the class's training images only)", ""]
    anomaly = report.get("anomaly", {})
    sets = [d for d in DATASETS if d in anomaly]
    if sets:
        lines.append("| row | " + " | ".join(f"{TITLES[d]} mean AUROC (classes)" for d in sets) + " |")
        lines.append("| --- |" + " --- |" * len(sets))
        for row in ANOMALY_ROWS:
            cells = []
            for d in sets:
                entry = anomaly[d]["rows"].get(row)
                cells.append(
                    "–" if not entry or entry.get("mean") is None else f"{entry['mean']:.3f} ({entry['classes']})"
                )
            if any(c != "–" for c in cells):
                lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append(
            "| *published anchor, full data set (not ours)* | "
            + " | ".join(f"*{ANCHORS[d][1]:.3f}: {ANCHORS[d][0]}*" for d in sets)
            + " |"
        )
        lines.append("")
        for d in sets:
            section = anomaly[d]
            classes = sorted({int(c) for e in section["rows"].values() for c in e["per_class"]})
            lines += [
                f"**{TITLES[d]}**: {section['split']}. Training images per class: "
                + ", ".join(f"{c}: {section['train_images'].get(str(c))}" for c in classes)
                + f"; {section['test_images']:,} test images, of all ten classes, scored. "
                f"The published anchor ({ANCHORS[d][0]}, {ANCHORS[d][1]:.3f}) trains on about 6,000 images of the "
                "class and tests on all 10,000 test images: our splits are smaller.",
                "",
                "| row | " + " | ".join(str(c) for c in classes) + " | mean | epochs run (median) |",
                "| --- |" + " --- |" * (len(classes) + 2),
            ]
            for row in ANOMALY_ROWS:
                entry = section["rows"].get(row)
                if entry:
                    cells = [
                        f"{entry['per_class'][str(c)]:.3f}" if str(c) in entry["per_class"] else "–" for c in classes
                    ]
                    epochs = [m["epochs"] for m in entry.get("models", {}).values() if "epochs" in m]
                    run = f"{np.median(epochs):g}" if epochs else "–"
                    lines.append(f"| {row} | " + " | ".join(cells) + f" | {entry['mean']:.3f} | {run} |")
            lines.append("")
            sweep = section.get("gamma_sweep")
            if sweep:
                lines += [
                    "The pixels encoder's k-NN score at other gammas (`--gamma-sweep`), mean AUROC on these same "
                    "test images: a sensitivity seen after the fact, not how `pixels-sqrt` got its 0.5 — "
                    + ", ".join(f"γ {g}: {v['mean']:.3f}" for g, v in sweep.items())
                    + ".",
                    "",
                ]
    stability = report.get("stability", {})
    if stability:
        lines += [
            "## Stability under input noise (`simsearch.latent.stability`)",
            "",
            "Gaussian noise of standard deviation σ added to the [0, 1] pixels (clipped to [0, 1]) before each "
            "model's normalisation. *moved*: median ‖z(x̃) − z(x)‖ ÷ median distance between two clean images; "
            "*k-NN kept*: share of each image's 10 nearest clean images still its 10 nearest when noisy; *PSNR rec*: "
            "the decoder's reconstruction of the noisy image against the clean image (dB; *PSNR in*: the noisy "
            "image itself); *ranks C/H/W*: mean numerical rank of the latent tensor's channel, height and width "
            "unfoldings (the 64×7×7 feature map before the final linear head; at most 49/7/7); *changed*: share of "
            "images whose rank changed in some unfolding; *distinct*: how many different ranks the images have; "
            f"*at {EFFECTIVE_RTOL:.0%}*: the same, counting only singular values above {EFFECTIVE_RTOL:.0%} of the "
            "largest (an effective rank).",
            "",
        ]
        for d in [d for d in DATASETS if d in stability]:
            models = stability[d]
            any_model = next(iter(models.values()))
            lines += [
                f"**{TITLES[d]}** ({any_model['test_images']} test images; models trained on "
                f"{any_model['train_images']} training images of every class, {any_model['train_seconds']} s or so "
                "each):",
                "",
                "| model | σ | moved | k-NN kept | PSNR rec | PSNR in | ranks C/H/W | changed | distinct | "
                f"ranks at {EFFECTIVE_RTOL:.0%} | changed at {EFFECTIVE_RTOL:.0%} | distinct at {EFFECTIVE_RTOL:.0%} |",
                "| --- |" + " --- |" * 11,
            ]
            for key, m in models.items():
                effective = m.get("effective") or {}
                psnr = "–" if m.get("clean_psnr") is None else f"{m['clean_psnr']:.2f}"
                clean, clean_effective = m.get("clean_ranks"), effective.get("clean_ranks")
                lines.append(
                    f"| {key} | clean | 0 | 1 | {psnr} | – | {mean_ranks(clean)} | – | {distinct_ranks(clean)} | "
                    f"{mean_ranks(clean_effective)} | – | {distinct_ranks(clean_effective)} |"
                )
                levels_effective = effective.get("levels") or [{}] * len(m["levels"])
                for level, other in zip(m["levels"], levels_effective, strict=True):
                    rec = "–" if level.get("psnr") is None else f"{level['psnr']:.2f}"
                    inp = "–" if level.get("input_psnr") is None else f"{level['input_psnr']:.2f}"
                    lines.append(
                        f"| {key} | {level['sigma']:g} | {level['movement']:.3f} | {level['knn_overlap']:.3f} | {rec} | "
                        f"{inp} | {mean_ranks(level.get('ranks'))} | {share(level.get('ranks_changed'))} | "
                        f"{distinct_ranks(level.get('ranks'))} | {mean_ranks(other.get('ranks'))} | "
                        f"{share(other.get('ranks_changed'))} | {distinct_ranks(other.get('ranks'))} |"
                    )
            lines.append("")
            verdict = paper_verdict(models)
            if verdict:
                lines += [f"Shrivastava et al.'s finding on {TITLES[d]}: {verdict}", ""]
            links = [f"[{key}](latent/{m['ranks_png']})" for key, m in models.items() if m.get("ranks_png")]
            effective_links = [
                f"[{key}](latent/{m['effective']['ranks_png']})" for key, m in models.items() if m.get("effective")
            ]
            lines += [
                "Rank histograms (clean and each σ): "
                + ", ".join(links)
                + (f"; at {EFFECTIVE_RTOL:.0%}: " + ", ".join(effective_links) if effective_links else "")
                + f"; curves: [movement](latent/{d}-movement.png), [k-NN overlap](latent/{d}-knn.png).",
                "",
            ]
    if "map" in report:
        lines += ["## `simsearch map` at scale", ""]
        if "skipped" in report["map"]:
            lines += [report["map"]["skipped"], ""]
        else:
            lines += [
                "Generated 28×28 images (10 blurred prototypes, shifted, with pixel noise) indexed with `--model pixels`, "
                "then `python -m simsearch map --name C --out DIR --method auto` in a subprocess; peak RSS is that "
                "process's.",
                "",
                "| points | index s | map wall s | map peak RSS MB | map.html bytes | note |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            for record in report["map"].values():
                note = (record.get("error") or "").replace("\n", " ").replace("|", "/")[:160]
                size = "–" if record.get("map_html_bytes") is None else f"{record['map_html_bytes']:,}"
                lines.append(
                    f"| {record['points']:,} | {record['index_seconds']} | {record.get('map_seconds', '–')} | "
                    f"{record.get('map_peak_rss_mb', '–')} | {size} | {note} |"
                )
            lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sections", nargs="*", default=["anomaly", "stability", "map"], choices=["anomaly", "stability", "map"]
    )
    parser.add_argument("--datasets", nargs="*", default=DATASETS, choices=DATASETS)
    parser.add_argument("--classes", nargs="*", type=int, default=list(range(10)), choices=range(10), metavar="C")
    parser.add_argument(
        "--only", nargs="*", default=None, choices=ANOMALY_ROWS, metavar="ROW", help=f"anomaly rows: {ANOMALY_ROWS}"
    )
    parser.add_argument("--max-seconds", type=float, default=25.0, help="training time limit of each model")
    parser.add_argument(
        "--epochs",
        type=lambda v: v if v == "auto" else int(v),
        default="auto",
        help="epochs of each model's schedule: a number, or auto (as many as fit in --max-seconds)",
    )
    parser.add_argument("--train", type=int, default=600, help="anomaly: training images of the class, at most")
    parser.add_argument("--test", type=int, default=2000, help="anomaly: test images (every class), at most")
    parser.add_argument("-k", "--k", type=int, default=5, help="anomaly: neighbours of the k-NN score")
    parser.add_argument(
        "--gamma-sweep", nargs="*", type=float, default=[], metavar="G",
        help="anomaly: also the pixels encoder's k-NN AUROC at each of these gammas (a sensitivity, after the fact)",
    )  # fmt: skip
    parser.add_argument("--stability-models", nargs="*", default=STABILITY_MODELS, choices=STABILITY_MODELS)
    parser.add_argument("--stability-train", type=int, default=2000, help="stability: training images, at most")
    parser.add_argument("--stability-images", type=int, default=1000, help="stability: test images measured")
    parser.add_argument("--map-sizes", nargs="*", type=int, default=[10_000, 100_000])
    parser.add_argument("--map-timeout", type=float, default=1200.0, help="seconds allowed to each index and map run")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="", help="suffix of the result files (latent-TAG.json)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--merge", action="store_true", help="lay the results of this run over the existing file's")
    parser.add_argument("--render", action="store_true", help="only write the .md again from the existing .json")
    args = parser.parse_args()
    if args.render:
        stem = args.out / ("latent" + (f"-{args.tag}" if args.tag else ""))
        Path(f"{stem}.md").write_text(markdown(with_means(json.loads(Path(f"{stem}.json").read_text()))))
        return
    if not SHARED_DATA.is_dir():
        sys.exit(f"no benchmark data at {SHARED_DATA} — see the README's Benchmarks section")
    if "anomaly" in args.sections:
        try:
            import simsearch.latent.anomaly  # noqa: F401
        except ImportError as exc:
            sys.exit(
                f"the anomaly section needs simsearch.latent.anomaly ({exc}); run the other sections with --sections"
            )
    rows = args.only if args.only is not None else ANOMALY_ROWS
    args.out.mkdir(parents=True, exist_ok=True)
    figures = args.out / "latent"
    figures.mkdir(exist_ok=True)
    name = "latent" + (f"-{args.tag}" if args.tag else "")
    existing = args.out / f"{name}.json"
    base = json.loads(existing.read_text()) if args.merge and existing.is_file() else None
    report: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(0)
        if args.device != "cpu" and torch.cuda.is_available()
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "command": "python " + " ".join(sys.argv),
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "merge")},
        "anomaly": {},
        "stability": {},
    }

    earlier = list(base.get("updates", [])) if base is not None else []  # this run adds one, however often it saves

    def result() -> dict:
        if base is None:
            return with_means(json.loads(json.dumps(report)))
        merged = deep_merge(base, {k: v for k, v in report.items() if k not in ("date", "command", "device")})
        merged["updates"] = [*earlier, {"date": report["date"], "command": report["command"]}]
        return with_means(merged)

    def save() -> None:
        final = result()
        (args.out / f"{name}.json").write_text(json.dumps(final, indent=2, default=str) + "\n")
        (args.out / f"{name}.md").write_text(markdown(final))

    import matplotlib

    matplotlib.use("Agg")
    models = list(dict.fromkeys(r.rpartition(":")[0] for r in rows))
    per_class = sum(BASELINE_WEIGHT if m in BASELINES else 1.0 for m in models)
    clock = Clock(
        len(args.datasets)
        * (
            (per_class * len(args.classes) if "anomaly" in args.sections else 0)
            + (len(args.stability_models) if "stability" in args.sections else 0)
        )
    )
    started = time.perf_counter()
    for dataset in args.datasets:
        data = load_data(dataset)
        if "anomaly" in args.sections:
            test_rows = sample(np.arange(len(data.test_x)), args.test, SPLIT_SEED + 1)
            report["anomaly"][dataset] = {
                "split": data.split,
                "test_images": len(test_rows),
                "train_images": {},
                "rows": {},
            }
            for c in args.classes:
                anomaly_class(dataset, data, test_rows, c, rows, args, report, save, clock)
            if args.gamma_sweep:
                report["anomaly"][dataset]["gamma_sweep"] = gamma_sweep(data, test_rows, args)
                save()
        if "stability" in args.sections:
            stability_dataset(dataset, data, args, report, save, clock, figures)
    if "map" in args.sections:
        with tempfile.TemporaryDirectory(prefix="simsearch-latent-map-") as tmp:
            map_section(args, report, save, Path(tmp))
    save()
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    print(markdown(result()))


if __name__ == "__main__":
    main()
