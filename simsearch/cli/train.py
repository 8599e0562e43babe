"""``simsearch train``: train an encoder on a folder and save it as a model folder."""

from __future__ import annotations

from pathlib import Path

import typer

from simsearch.cli.core import _errors, app
from simsearch.cli.options import cli_spelling
from simsearch.cli.render import _describe_training, _RichProgress, out
from simsearch.errors import option, spell
from simsearch.models.registry import REGISTRY

#: --family's help: every registered family with its one-line description, options spelled as flags (the registry
#: imports no torch).
FAMILY_HELP = "One of: " + "; ".join(f"{f.name}: {spell(f.description, cli_spelling)}" for f in REGISTRY.values()) + "."


@app.command()
def train(
    images: Path = typer.Argument(..., help="Folder of images to train on (labels are sub-folder names)."),
    family: str = typer.Option("autoencoder", "--family", "-f", help=FAMILY_HELP),
    loss: str = typer.Option(
        "contrastive",
        "--loss",
        help="Siamese loss: contrastive, triplet, arcface, cosface, subcenter (margin losses with a weight per "
        "label, the standard of face recognition), or ntxent (self-supervised: no labels).",
    ),
    margin: float | None = typer.Option(
        None,
        "--margin",
        help="Margin of the loss: contrastive 1.0, triplet 0.2, arcface and subcenter 28.6 (degrees), cosface 0.35.",
    ),
    beta: float = typer.Option(1.0, "--beta", help="VAE: weight of the KL term."),
    contrastive_weight: float = typer.Option(
        0.0, "--contrastive-weight", help="Autoencoders: add this much contrastive loss on labelled batches."
    ),
    out_dir: Path | None = typer.Option(
        None, "--out", "-o", help="Model folder to write (default: models/<folder name>)."
    ),
    dim: int = typer.Option(64, "--dim", min=1, help="Embedding size."),
    size: str = typer.Option("auto", "--size", help="Input size HxW, or auto (aspect kept, never upscaled)."),
    resize: str = typer.Option(
        "auto",
        "--resize",
        help="letterbox (fit the whole image, aspect kept), trim (crop the background margin first: drawings, "
        "characters, signatures on a plain sheet), or auto (trim on light backgrounds, else letterbox).",
    ),
    invert: str = typer.Option("auto", "--invert", help="auto (invert light backgrounds), yes or no."),
    gamma: float = typer.Option(
        1.0,
        "--gamma",
        help="Raise the [0, 1] intensities to this power first: 0.5 (the square root) makes distances weigh where "
        "there is ink or fabric more than how bright it is; 1 keeps them as they are.",
    ),
    epochs: int | None = typer.Option(
        None,
        "--epochs",
        min=1,
        help="Most epochs (training also stops early). Default: 60, or 20 with the character recipe, whose epochs "
        "hold eight times the images.",
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=2, help="Images per training batch (default: 256 for siamese, else 128)."
    ),
    augment: float = typer.Option(
        0.5, "--augment", min=0, help="Siamese: strength of the random warps, noise and erasing."
    ),
    class_augment: str = typer.Option(
        "auto",
        "--class-augment",
        help="Labelled losses: none, rot4 (each label turned by 90°, 180°, 270° is a new label) or rot4flip "
        "(mirror images too). For characters and symbols, not for faces or signatures; needs square inputs. "
        "auto: rot4flip with the character recipe (siamese, labels, ink on a light background in square images), "
        "else none.",
    ),
    mirror: str = typer.Option(
        "no",
        "--mirror",
        help="Siamese: mirror half the training images left to right: yes, no, or auto (for images that fill "
        "their frame, such as faces, photos and clothes; not strokes on a plain background, such as handwriting, "
        "signatures and digits).",
    ),
    discriminant: str = typer.Option(
        "no",
        "--discriminant",
        help="Siamese, identities: auto scores the cross-fitted folds also through an LDA back-end fitted on "
        "their training identities, and the model ends with it when that verifies unseen identities better "
        "(on faces: EER 0.100 → 0.095, but a less exact FAR promise); no: never (the default).",
    ),
    readout: str = typer.Option(
        "auto",
        "--readout",
        help="Siamese: what the model searches and verifies with: head, the --dim numbers of its last layer; "
        "features, the feature map under that layer, flattened (thousands of numbers; the layer is then trained "
        "as a projection head and set aside); auto (the default): features when training is cross-fitted over "
        "identities (verification meets new ones) in images that are not ink on paper, such as faces, which it "
        "verified better; else head (signatures and characters verified worse by the feature map).",
    ),
    patience: int = typer.Option(
        12, "--patience", min=1, help="Stop after this many epochs without a better validation score."
    ),
    ema: float | None = typer.Option(
        None,
        "--ema",
        min=0,
        help="Validate and keep a moving average of the weights, with this decay per step (0.995, say; 0: off). "
        "Default: 0.995 with the character recipe, else off.",
    ),
    projection: int | None = typer.Option(
        None,
        "--projection",
        min=0,
        help="Siamese: compute the loss on a head of this many hidden units over the "
        "embedding, dropped after training (helps with labels never seen in training; 0: off). Default: 256 with "
        "the character recipe, else off.",
    ),
    similar_labels: int = typer.Option(
        0,
        "--similar-labels",
        min=0,
        help="Siamese, labelled: build each batch from groups of this many labels "
        "that the encoder finds alike, so that it learns from hard negatives (0: off).",
    ),
    folds: str = typer.Option(
        "auto",
        "--folds",
        help="Labelled identities: calibrate the verification threshold by cross-fitting over this many folds of "
        "identities (one model per fold, trained without them, scores their pairs; then the final model trains on "
        "all). auto: 2 to 5, from the number of identities and images; 1: off (one split of held-out identities, quicker).",
    ),
    max_seconds: float = typer.Option(
        1800.0, "--max-seconds", min=1, help="Time limit for training (cross-fitted folds and final model together)."
    ),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda."),
    seed: int = typer.Option(0, "--seed", help="Random seed (runs are reproducible on the CPU)."),
    checkpoint_seconds: float = typer.Option(
        30.0,
        "--checkpoint-seconds",
        min=0,
        help="Save the training state at the end of an epoch at most this often (0: every epoch); an interrupted "
        "run resumes from it when the same command runs again.",
    ),
) -> None:
    """Train an encoder on a folder of images and save it as a model folder.

    Example: simsearch train ./signatures --family siamese --loss contrastive --out models/sig
    """
    with _errors("training stopped and nothing was saved; run the same command again to train") as stop:
        target = out_dir or Path("models") / (images.resolve().name or "model")
        # The model folder is written at the end, at once (Encoder.save); until then only the training
        # checkpoint beside it is on disk, and what is said on Ctrl-C follows what it keeps.
        stop.left = (
            f"training stopped and nothing was saved ({target} is as it was); run the same command again to train"
        )
        from simsearch.models.encoder import check_model_target
        from simsearch.training import TrainConfig, TrainingCheckpoint, train_on_folder
        from simsearch.training.checkpoint import checkpoint_path

        def kept(what: str) -> None:
            if not what:  # removed: the model folder is saved (the message after it says so)
                return
            stop.left = (
                f"training stopped; its work up to {what} is kept in {checkpoint.path} ({target} is as it was): "
                "run the same command again to resume"
            )

        checkpoint = TrainingCheckpoint(checkpoint_path(target), checkpoint_seconds, on_save=kept)

        check_model_target(target)  # before hours of training, not after
        from simsearch.errors import UsageError

        if folds.strip().lower() == "auto":
            n_folds = None
        elif folds.strip().isdigit():
            n_folds = int(folds)
        else:
            raise UsageError(f"--folds must be auto or a whole number (1: no cross-fitting), not {folds!r}")
        config = TrainConfig(
            family=family, loss=loss, margin=margin, beta=beta, contrastive_weight=contrastive_weight, dim=dim,
            size=size, resize=resize, invert=invert, gamma=gamma, epochs=epochs, batch_size=batch_size, augment=augment,
            class_augment=class_augment, mirror=mirror, discriminant=discriminant, patience=patience, ema=ema,
            projection=projection, readout=readout,
            similar_labels=similar_labels, folds=n_folds, max_seconds=max_seconds, seed=seed,
            device=device,
        )  # fmt: skip
        with _RichProgress() as progress:
            encoder = train_on_folder(images, config, progress, checkpoint)
        fingerprint = encoder.save(target)
        checkpoint.remove()
        stop.left = f"the model was already saved to {target}; only the summary was cut short"
        if checkpoint.resumed:
            out.print(f"Resumed an interrupted run from its checkpoint ({checkpoint.resumed}).")
        elif checkpoint.discarded:
            out.print(
                f"Trained afresh: the checkpoint found in {checkpoint.path} was not used ({checkpoint.discarded})."
            )
        spec = encoder.preprocess
        out.print(_describe_training(encoder.family, encoder.dim, (spec.channels, *spec.size), encoder.training))
        if encoder.family == "siamese" and encoder.training.get("recipe"):
            out.print(_describe_recipe(encoder.training["recipe"]))
        if encoder.threshold:
            from simsearch.verification import describe_calibration

            th = encoder.threshold
            rates = f" (EER {th['eer']:.3f}, ROC AUC {th['roc_auc']:.3f})" if th.get("eer") is not None else ""
            out.print(f"Verification threshold {th['value']:.4f}{rates}. {describe_calibration(th)}")
        if discriminant == "auto":
            out.print(_describe_discriminant(encoder.training.get("cross_fit")))
        if encoder.family == "siamese" and readout == "auto" and discriminant != "auto":
            out.print(_describe_readout(encoder.training.get("cross_fit"), encoder.dim, encoder.preprocess.invert))
        out.print(f"Saved {fingerprint[:12]} to {target}. Use it with: simsearch index {images} --model {target}")


def _describe_discriminant(cross_fit: dict | None) -> str:
    """What ``--discriminant auto`` decided, on the cross-fitted folds' unseen identities."""
    if not cross_fit:
        return (
            "Discriminant back-end: not fitted: it is chosen on cross-fitted folds of unseen identities, and this "
            "training was not cross-fitted (it needs 4 identity groups or more)."
        )
    epoch = cross_fit["chosen_epoch"]
    plain, through = cross_fit["pooled_eer_plain"][epoch - 1], cross_fit["pooled_eer_discriminant"][epoch - 1]
    kept = cross_fit["discriminant"]
    if kept:
        return (
            f"Discriminant back-end: kept ({kept['axes']} axes, fitted on {kept['labels']} labels): pooled EER of the "
            f"unseen identities {through:.3f} with it, {plain:.3f} without (epoch {epoch})."
        )
    return (
        f"Discriminant back-end: not kept: pooled EER of the unseen identities {through:.3f} with it, {plain:.3f} "
        f"without (epoch {epoch})."
    )


def _describe_readout(cross_fit: dict | None, dim: int, ink: bool) -> str:
    """What ``--readout auto`` decided, and the cross-fitted folds' pooled EER of unseen identities both ways."""
    if not cross_fit:
        return (
            "Readout: head: the feature map is read out when training is cross-fitted over identities, and this one "
            "was not (it needs 4 identity groups or more)."
        )
    if ink:
        return (
            "Readout: head: the feature map is read out for images that are not ink on paper; on ink (signatures, "
            "characters) it verified worse."
        )
    epoch = cross_fit["chosen_epoch"]
    head, features = cross_fit["pooled_eer_plain"][epoch - 1], cross_fit["pooled_eer_features"][epoch - 1]
    what = f"features (the feature map under the head, {dim} numbers)" if cross_fit["readout"] == "features" else "head"
    return (
        f"Readout: {what}: pooled EER of the unseen identities {features:.3f} by the feature map, {head:.3f} by the "
        f"head (epoch {epoch})."
    )


def _describe_recipe(recipe: dict) -> str:
    """Which recipe the options left on auto took (``training.recipe``), why, and what it set."""
    chosen = ", ".join(
        f"inputs at most {v} pixels a side" if k == "max_side" else spell(option(k, v), cli_spelling)
        for k, v in recipe.get("set", {}).items()
    )
    what = f": {chosen}" if chosen else " (every option it sets was given)"
    return f"Recipe: {recipe['name']} ({recipe['why']}){what}."
