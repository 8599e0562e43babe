"""The ``simsearch`` command: parses options, calls the library, renders with rich.

The only module that prints or exits. Library modules (and so torch and faiss) are imported inside the
commands, so ``simsearch --help`` starts fast.

Everything it prints goes through ``shown``: file names, labels, paths and error messages are user data, so
they are shown as text (never parsed as rich markup) with control characters escaped (``\\x1b``), never sent
to the terminal raw. The consoles below do that for every string they render; the progress bar and the JSON
output, which rich renders by other paths, call it (or ``_json_text``) themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from simsearch import __version__
from simsearch.errors import SimsearchError

if TYPE_CHECKING:
    from rich.style import Style

    from simsearch.indexing import IndexReport
    from simsearch.search import QueryResult

app = typer.Typer(
    name="simsearch",
    help="Offline image similarity search: train encoders on your images, index them with FAISS, query by example.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def shown(value: object) -> str:
    """``value`` as text that a terminal shows as it is: each control or other non-printable character (ESC,
    BEL, newline, DEL, C1 controls, bidi overrides, bytes that are not UTF-8) written as its escape (``\\x1b``,
    ``\\n``, ``\\u202e``, ``\\xff``); every other character, é and 中 included, kept."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    if "\udc80" <= char <= "\udcff":  # a byte of a file name that is not UTF-8 (os.fsdecode): show the byte
        return f"\\x{ord(char) - 0xDC00:02x}"
    return char.encode("unicode_escape").decode("ascii")


class TextConsole(Console):
    """A console that renders every string as text, through ``shown``: no markup, emoji codes or highlighting,
    and no raw control characters, whatever a file name holds. Tables' cells and titles, printed lines and
    error lines all reach the terminal this way."""

    def render_str(
        self,
        text: str,
        *,
        style: str | Style = "",
        justify: Any = None,
        overflow: Any = None,
        emoji: bool | None = None,
        markup: bool | None = None,
        highlight: bool | None = None,
        highlighter: Any = None,
    ) -> Text:
        return Text(shown(text), style=style, justify=justify, overflow=overflow)


out = TextConsole(highlight=False, soft_wrap=True)
err = TextConsole(stderr=True, highlight=False, soft_wrap=True)


def _json_text(data: Any) -> str:
    """``data`` as indented JSON whose strings hold printable characters only: ``json`` escapes the C0 controls
    itself; DEL, C1 controls, bidi overrides and lone surrogates are escaped here as ``\\uXXXX``, so a parser
    still reads back the exact names."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if text.replace("\n", "").isprintable():  # raw newlines lie only between tokens, never inside strings
        return text
    return "".join(c if c.isprintable() or c == "\n" else _json_escape(c) for c in text)


def _json_escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # beyond the basic plane: a UTF-16 surrogate pair, as JSON spells it
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _print_json(data: Any) -> None:
    """Print ``data`` for scripts: what ``Console.print_json`` prints, but with ``_json_text``'s escapes."""
    from rich.highlighter import JSONHighlighter

    text = JSONHighlighter()(_json_text(data))
    text.no_wrap = True
    text.overflow = None
    out.print(text, soft_wrap=True)


HOME_HELP = "Folder that holds named collections."
THRESHOLD_HELP = "Distance threshold: auto (the model's calibrated EER threshold, or the one for --far) or a number."
FAR_HELP = (
    "With --threshold auto: the calibrated threshold whose held-out false-accept rate is at most this (e.g. 0.01)."
)
MODEL_HELP = "A model folder from 'simsearch train' (instead of a collection's encoder)."
SOURCE_NAME_HELP = "Use this collection's encoder (default: the collection 'default'); a path also works."
NAME_HELP = "Collection name (under --home), or a path to a collection folder."
MAX_BOOTSTRAP = 10_000  # evaluation.MAX_BOOTSTRAP, which this module does not import (it needs numpy)


def _home_option() -> Any:
    return typer.Option(Path("indexes"), "--home", envvar="SIMSEARCH_HOME", help=HOME_HELP, show_default=True)


class Terminated(KeyboardInterrupt):
    """Raised by ``main``'s SIGTERM handler: the command stops as on Ctrl-C (clean-up runs), exit code 143."""


KEPT = "work committed so far is kept; run the same command again to resume"


def _unchanged(command: str) -> str:
    return f"{command} stopped before it finished and nothing was changed; run the same command again for its results"


@dataclass
class _Stop:
    """What an interrupted command leaves, said after "Interrupted:" or "Terminated:"; a command updates it as
    its work changes what would be true."""

    left: str


@contextlib.contextmanager
def _errors(left: str, exit_code: int | None = None) -> Iterator[_Stop]:
    """Turn library errors into one ``Error:`` line and the error's exit code (or ``exit_code`` for every
    error, as ``verify`` keeps 1 for "no match"); Ctrl-C into exit 130 and SIGTERM into 143, each with one line
    that says what is ``left`` (what the yielded ``_Stop`` says by then)."""
    stop = _Stop(left)
    try:
        yield stop
    except SimsearchError as exc:
        err.print(f"Error: {exc}")
        raise typer.Exit(exit_code or exc.exit_code) from None
    except OSError as exc:  # disk full, read-only folder, permissions: the OS's words, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        err.print(f"Error: {where}{exc.strerror or exc} — free space or fix permissions, then run again")
        raise typer.Exit(exit_code or 1) from None
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        err.print(f"{'Terminated' if terminated else 'Interrupted'}: {stop.left}.")
        raise typer.Exit(143 if terminated else 130) from None


class _RichProgress:
    """Renders the library's progress callbacks as rich bars on stderr (nothing when stderr is no terminal)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(  # its text columns build their Text themselves: markup off, values through shown
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}", markup=False),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        )
        self.tasks: dict[str, Any] = {}

    def __call__(self, task: str, done: int, total: int | None, note: str = "") -> None:
        if task not in self.tasks:
            self.tasks[task] = self.bar.add_task(shown(task), total=total, note=shown(note))
        self.bar.update(self.tasks[task], completed=done, total=total, note=shown(note))

    def __enter__(self) -> _RichProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(None, None, None)


def _version(value: bool) -> None:
    if value:
        out.print(f"simsearch {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Offline image similarity search.

    Two commands take a folder of images to answers:

        simsearch index ./images

        simsearch query img.png -k 9
    """


def _train_config(family: str, dim: int, size: str, epochs: int, max_seconds: float, seed: int, device: str) -> Any:
    from simsearch.train import TrainConfig

    return TrainConfig(
        family=family, dim=dim, size=size, epochs=epochs, max_seconds=max_seconds, seed=seed, device=device
    )


@app.command()
def index(
    images: Path = typer.Argument(..., help="Folder of images (searched recursively; labels are sub-folder names)."),
    name: str = typer.Option("default", "--name", "-n", help=NAME_HELP),
    home: Path = _home_option(),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="A model folder from 'simsearch train', or a family to fit here: autoencoder, denoising, vae, siamese, pca, pixels. "
        "Default: the collection's own encoder, or a new autoencoder.",
    ),
    rebuild: bool = typer.Option(False, "--rebuild", help="Re-embed everything (needed to change the encoder)."),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first unreadable file instead of skipping it."),
    wait: bool = typer.Option(False, "--wait", help="If another process is writing to the collection, wait for it."),
    workers: int = typer.Option(
        0,
        "--workers",
        min=0,
        help="Decoding worker processes (0: one per core, at most 8; runs under 2,000 images use threads).",
    ),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Images embedded per batch."),
    checkpoint_every: int = typer.Option(
        10_000, "--checkpoint-every", min=1, help="Commit after this many newly embedded images (resume point)."
    ),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda."),
    index_type: str = typer.Option(
        "auto",
        "--type",
        help="FAISS index: auto (exact up to 200,000 images, then IVF tuned to recall@10 ≥ 0.95), flat, ivf, ivfpq, "
        "hnsw, or cagra (a GPU graph; needs FAISS with cuVS).",
    ),
    dim: int = typer.Option(64, "--dim", min=1, help="Embedding size when training a new encoder."),
    size: str = typer.Option("auto", "--size", help="Encoder input size HxW when training, or auto."),
    epochs: int = typer.Option(60, "--epochs", min=1, help="Most training epochs for a new encoder."),
    max_seconds: float = typer.Option(300.0, "--max-seconds", min=1, help="Time limit for training a new encoder."),
    seed: int = typer.Option(0, "--seed", help="Seed for training and sampling."),
    allow_empty: bool = typer.Option(
        False,
        "--allow-empty",
        help="Let a folder that holds no images now remove its images from the collection (refused by default: an "
        "unmounted drive looks empty).",
    ),
) -> None:
    """Index a folder of images into a collection; re-runs only embed new or changed files.

    Example: simsearch index ./images --name photos
    """
    with _errors(KEPT):
        from simsearch.collection import Collection, resolve_path
        from simsearch.indexing import IndexConfig, index_folder

        collection = Collection(resolve_path(name, home))
        config = IndexConfig(
            model=model,
            rebuild=rebuild,
            strict=strict,
            wait=wait,
            workers=workers,
            batch_size=batch_size,
            checkpoint_every=checkpoint_every,
            device=device,
            index_type=index_type,
            allow_empty=allow_empty,
            train=_train_config("autoencoder", dim, size, epochs, max_seconds, seed, device),
        )
        with _RichProgress() as progress:
            report = index_folder(images, collection, config, progress)
        _render_index_report(report)


def _describe_training(family: str, dim: int, shape: tuple[int, ...], t: dict[str, Any]) -> str:
    size = "×".join(map(str, shape))
    if family == "pixels":
        return f"Using raw pixels as embeddings (input {size}, d={dim})."
    if family == "pca":
        return f"Fitted PCA (input {size}, d={dim}) on {t.get('images')} images."
    return (
        f"Trained a {family} encoder (input {size}, d={dim}) on {t.get('images')} images: {t.get('epochs_run')} "
        f"epochs in {t.get('seconds', 0):.0f} s on {t.get('device')}, best {t.get('validation_metric')} "
        f"{t.get('best_validation') or 0:.4f}."
    )


def _render_index_report(report: IndexReport) -> None:
    if report.discarded_rebuild:
        out.print("An unfinished rebuild made with another encoder was dropped; this rebuild started over.")
    if report.resumed:
        out.print("Resumed the unfinished rebuild: the images it had committed were not embedded again.")
    if report.moved_from:
        out.print(
            f"{report.moved} images of {report.moved_from} (a path that is gone) were found under {report.root}: "
            "the folder was moved, so they were kept, not indexed again."
        )
    if report.trained:
        out.print(_describe_training(report.encoder_family, report.encoder_dim, report.input_shape, report.training))
    if report.embedded == 0 and not report.removed:
        out.print(f"Nothing to embed: all {report.unchanged} images are unchanged.")
    table = Table(title=f"Collection {report.collection}", show_header=False, title_justify="left")
    for key, value in (
        ("found", report.found),
        ("added", report.added),
        ("updated", report.updated),
        ("removed", report.removed),
        ("unchanged", report.unchanged),
        ("skipped", len(report.skipped)),
        ("images in collection", report.count),
        ("encoder", f"{report.encoder_family} {report.encoder_fingerprint[:12]} on {report.device}"),
        ("time", f"{report.seconds:.1f} s"),
    ):
        table.add_row(key, str(value))
    out.print(table)
    if report.skipped:
        skipped = Table("skipped file", "reason", title="Skipped (not indexed)", title_justify="left")
        for s in report.skipped[:20]:
            skipped.add_row(s.rel, s.reason)
        out.print(skipped)
        if len(report.skipped) > 20:
            out.print(f"… and {len(report.skipped) - 20} more: see 'simsearch info --skipped'.")
    if report.rebuild_waiting:
        out.print("An unfinished rebuild waits beside this collection: run 'index … --rebuild' again to finish it.")


@app.command()
def query(
    images: list[Path] = typer.Argument(..., help="Query images, or folders of them (every image inside, batched)."),
    k: int = typer.Option(9, "-k", min=1, help="Number of neighbours."),
    name: str = typer.Option("default", "--name", "-n", help=NAME_HELP),
    home: Path = _home_option(),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    gpu: bool = typer.Option(True, "--gpu/--no-gpu", help="Search on the GPU when FAISS sees one."),
    float16: bool = typer.Option(
        False,
        "--float16",
        help="Hold a flat or IVF index in float16 on the GPU: half the memory (answers re-ranked exactly). "
        "Used by itself when float32 does not fit.",
    ),
    device: str = typer.Option("auto", "--device", help="Where to run the encoder: auto, cpu or cuda."),
    open_set: bool = typer.Option(
        False, "--open-set", help="Answer 'unknown' when the nearest neighbour is beyond the threshold."
    ),
    threshold: str = typer.Option("auto", "--threshold", help=THRESHOLD_HELP),
    far: float | None = typer.Option(None, "--far", help=FAR_HELP),
    nprobe: int | None = typer.Option(None, "--nprobe", help="IVF indexes: cells to visit (default: the tuned value)."),
    ef: int | None = typer.Option(
        None, "--ef", help="HNSW and CAGRA indexes: search breadth (default: the tuned value)."
    ),
) -> None:
    """Find the k nearest indexed images of each query image, and the label their votes give.

    Example: simsearch query img.png -k 9   (or a folder: simsearch query queries/ --json)
    """
    with _errors(_unchanged("query")):
        from simsearch.collection import Collection, resolve_path
        from simsearch.errors import ImageError
        from simsearch.search import Searcher, expand_query_paths
        from simsearch.verification import operating_point

        files, unreadable = expand_query_paths(images)
        if not files:
            raise ImageError(f"no images under {', '.join(map(str, images))} — check the path")
        searcher = Searcher(
            Collection(resolve_path(name, home)),
            use_gpu=gpu,
            device=device,
            nprobe=nprobe,
            ef=ef,
            float16=float16 or None,
        )
        point = operating_point(searcher.encoder, threshold, far) if open_set else None
        from_folders = any(path.is_dir() for path in images)
        results = searcher.query_files(
            files, k, on_error=(lambda e: unreadable.append(str(e))) if from_folders else None
        )
        for line in unreadable[:20]:
            err.print(f"Skipped {line}")
        if len(unreadable) > 20:
            err.print(f"… {len(unreadable)} files skipped in all.")
        if point is not None:
            for result in results:
                result.hold_to(point.threshold)
        if as_json:
            _print_json([r.to_json() for r in results])
            return
        for result in results:
            _render_result(result)


def _render_result(result: QueryResult) -> None:
    if result.unknown and result.threshold is not None:
        nearest = result.neighbours[0].distance if result.neighbours else float("nan")
        caption = f"vote: unknown (nearest {nearest:.4f} > threshold {result.threshold:.4f})"
    elif result.vote is not None:
        caption = f"vote: {result.vote} ({round(result.vote_share * len(result.neighbours))}/{len(result.neighbours)})"
    else:
        caption = "vote: none (no labelled neighbours)"
    table = Table("rank", "distance", "path", "label", title=f"{result.query} — {caption}", title_justify="left")
    for n in result.neighbours:
        table.add_row(str(n.rank), f"{n.distance:.4f}", n.path, n.label or "")
    out.print(table)


@app.command()
def info(
    name: str = typer.Option("default", "--name", "-n", help=NAME_HELP),
    home: Path = _home_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
    skipped: bool = typer.Option(False, "--skipped", help="List the files that could not be indexed."),
) -> None:
    """Describe a collection: size, encoder, index type, sources, skipped files.

    Example: simsearch info --name photos
    """
    with _errors(_unchanged("info")):
        from simsearch.collection import Collection, resolve_path

        collection = Collection(resolve_path(name, home))
        snapshot = collection.load()
        manifest = snapshot.manifest
        skipped_rows = snapshot.skipped.to_pylist()
        rebuild = collection.rebuild_summary()
        if as_json:
            _print_json({**manifest, "path": str(collection.path), "skipped": len(skipped_rows), "rebuild": rebuild})
            return
        table = Table(title=f"Collection {collection.path}", show_header=False, title_justify="left")
        enc = manifest["encoder"]
        for key, value in (
            ("images", manifest["count"]),
            ("dimensions", manifest["dim"]),
            ("metric", manifest["metric"]),
            ("encoder", f"{enc.get('family')} {enc['fingerprint'][:12]}"),
            ("index", _describe_index(manifest.get("index") or {})),
            ("sources", Text("\n").join(Text(shown(root)) for root in manifest.get("roots", []))),
            ("generation", manifest["generation"]),
            ("updated", manifest.get("updated", "")),
            ("skipped files", len(skipped_rows)),
        ):
            table.add_row(key, value if isinstance(value, Text) else str(value))
        if rebuild is not None:
            family = (rebuild.get("encoder") or {}).get("family", "?")
            table.add_row(
                "unfinished rebuild",
                f"unfinished rebuild: {rebuild.get('count')} images embedded with a new {family} encoder so far "
                f"(updated {rebuild.get('updated', '?')}); the collection above is unchanged until it completes — "
                "run the same 'simsearch index … --rebuild' command again to finish it",
            )
        out.print(table)
        if skipped and skipped_rows:
            listing = Table("root", "path", "reason", title="Skipped", title_justify="left")
            for row in skipped_rows:
                listing.add_row(row["root"], row["path"], row["reason"])
            out.print(listing)


def _describe_index(info: dict[str, Any]) -> str:
    kind = info.get("type", "?")
    if info.get("exact", kind == "flat"):
        return f"{kind} (exact)"
    knobs = ", ".join(
        f"{k} {info[k]}"
        for k in ("nlist", "pq_m", "pq_bits", "hnsw_m", "nprobe", "ef", "ef_cpu", "refine")
        if k in info
    )
    recall = info.get("recall_at_10")
    measured = (
        f"; recall@10 {recall:.3f} on {info.get('recall_queries')} held-out vectors" if recall is not None else ""
    )
    if "recall_at_10_cpu" in info:
        measured += f" ({info['recall_at_10_cpu']:.3f} searched on a CPU)"
    return f"{kind} ({knobs}{measured})"


@app.command()
def train(
    images: Path = typer.Argument(..., help="Folder of images to train on (labels are sub-folder names)."),
    family: str = typer.Option(
        "autoencoder", "--family", "-f", help="autoencoder, denoising, vae, siamese, pca or pixels."
    ),
    loss: str = typer.Option(
        "contrastive", "--loss", help="Siamese loss: contrastive, triplet, or ntxent (self-supervised: no labels)."
    ),
    margin: float | None = typer.Option(
        None, "--margin", help="Margin of the contrastive (1.0) or triplet (0.2) loss."
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
        "letterbox",
        "--resize",
        help="letterbox (fit the whole image, aspect kept) or trim (crop the background margin first: drawings, "
        "characters, signatures on a plain sheet).",
    ),
    invert: str = typer.Option("auto", "--invert", help="auto (invert light backgrounds), yes or no."),
    epochs: int = typer.Option(60, "--epochs", min=1, help="Most epochs (training also stops early)."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=2, help="Images per training batch (default: 256 for siamese, else 128)."
    ),
    augment: float = typer.Option(
        0.5, "--augment", min=0, help="Siamese: strength of the random warps, noise and erasing."
    ),
    class_augment: str = typer.Option(
        "none",
        "--class-augment",
        help="Labelled losses: none, rot4 (each label turned by 90°, 180°, 270° is a new label) or rot4flip "
        "(mirror images too). For characters and symbols, not for faces or signatures; needs square inputs.",
    ),
    patience: int = typer.Option(
        12, "--patience", min=1, help="Stop after this many epochs without a better validation score."
    ),
    ema: float = typer.Option(
        0.0,
        "--ema",
        min=0,
        help="Validate and keep a moving average of the weights, with this decay per step (0.995, say; 0: off).",
    ),
    projection: int = typer.Option(
        0,
        "--projection",
        min=0,
        help="Siamese: compute the loss on a head of this many hidden units over the "
        "embedding, dropped after training (helps with labels never seen in training; 0: off).",
    ),
    similar_labels: int = typer.Option(
        0,
        "--similar-labels",
        min=0,
        help="Siamese, labelled: build each batch from groups of this many labels "
        "that the encoder finds alike, so that it learns from hard negatives (0: off).",
    ),
    max_seconds: float = typer.Option(1800.0, "--max-seconds", min=1, help="Time limit for training."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda."),
    seed: int = typer.Option(0, "--seed", help="Random seed (runs are reproducible on the CPU)."),
) -> None:
    """Train an encoder on a folder of images and save it as a model folder.

    Example: simsearch train ./signatures --family siamese --loss contrastive --out models/sig
    """
    with _errors("training stopped and nothing was saved; run the same command again to train") as stop:
        target = out_dir or Path("models") / (images.resolve().name or "model")
        # The model folder is written at the end, at once (Encoder.save): until then nothing is on disk.
        stop.left = (
            f"training stopped and nothing was saved ({target} is as it was); run the same command again to train"
        )
        from simsearch.encoder import check_model_target
        from simsearch.train import TrainConfig, train_on_folder

        check_model_target(target)  # before hours of training, not after
        config = TrainConfig(
            family=family, loss=loss, margin=margin, beta=beta, contrastive_weight=contrastive_weight, dim=dim,
            size=size, resize=resize, invert=invert, epochs=epochs, batch_size=batch_size, augment=augment,
            class_augment=class_augment, patience=patience, ema=ema, projection=projection,
            similar_labels=similar_labels, max_seconds=max_seconds, seed=seed,
            device=device,
        )  # fmt: skip
        with _RichProgress() as progress:
            encoder = train_on_folder(images, config, progress)
        fingerprint = encoder.save(target)
        stop.left = f"the model was already saved to {target}; only the summary was cut short"
        spec = encoder.preprocess
        out.print(_describe_training(encoder.family, encoder.dim, (spec.channels, *spec.size), encoder.training))
        if encoder.threshold:
            th = encoder.threshold
            out.print(
                f"Verification threshold {th['value']:.4f} (EER {th['eer']:.3f}, ROC AUC {th['roc_auc']:.3f}) "
                f"calibrated on {th['pairs']['genuine']} genuine and {th['pairs']['impostor']} impostor held-out pairs."
            )
        out.print(f"Saved {fingerprint[:12]} to {target}. Use it with: simsearch index {images} --model {target}")


@app.command()
def verify(
    images: list[Path] | None = typer.Argument(None, help="Two images: are they the same identity?"),
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    name: str | None = typer.Option(None, "--name", "-n", help=SOURCE_NAME_HELP),
    home: Path = _home_option(),
    threshold: str = typer.Option("auto", "--threshold", help=THRESHOLD_HELP),
    far: float | None = typer.Option(None, "--far", help=FAR_HELP),
    pairs: Path | None = typer.Option(
        None, "--pairs", help="A CSV with columns a,b[,label] (paths relative to the CSV) to verify many pairs."
    ),
    convert: bool = typer.Option(
        False, "--convert", help="Convert colour images for a grey model (or grey for a colour one) instead of failing."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    device: str = typer.Option("auto", "--device", help="Where to run the encoder: auto, cpu or cuda."),
) -> None:
    """Decide whether two images show the same identity (signature, face, character).

    Exit code: 0 match, 1 no match, 2 error. With --pairs: 0 when every pair was verified.

    Example: simsearch verify a.png b.png --model models/sig --far 0.01
    """
    with _errors(_unchanged("verify"), exit_code=2):
        from simsearch.errors import UsageError
        from simsearch.verification import Verifier, load_encoder, operating_point, pair_metrics, read_pairs

        images = images or []
        if pairs is None and len(images) != 2:
            raise UsageError(f"verify takes exactly two images (or --pairs FILE), not {len(images)}")
        if pairs is not None and images:
            raise UsageError("give either two images or --pairs FILE, not both")
        encoder, source = load_encoder(model, name, home, device)
        point = operating_point(encoder, threshold, far)
        verifier = Verifier(encoder, convert=convert)
        if pairs is None:
            verdict = verifier.verify(images[0], images[1], point)
            if as_json:
                _print_json({**verdict.to_json(), "source": source})
            else:
                _render_verdict(verdict)
            raise typer.Exit(0 if verdict.match else 1)
        with _RichProgress():
            verdicts = verifier.verify_pairs(read_pairs(pairs), point)
        summary = pair_metrics(verdicts)
        if as_json:
            _print_json({"source": source, "pairs": [v.to_json() for v in verdicts], "metrics": summary})
            return
        _render_pairs(verdicts, summary)


def _point_text(verdict: Any) -> str:
    point = verdict.point
    if point.name == "manual":
        return "threshold given with --threshold"
    name = "EER point" if point.name == "eer" else point.name.upper().replace("FAR=", "FAR ≤ ")
    return f"{name}: FAR {point.far:.2%}, FRR {point.frr:.2%} on held-out pairs"


def _render_verdict(verdict: Any) -> None:
    sign = "≤" if verdict.match else ">"
    word = "MATCH" if verdict.match else "NO MATCH"
    probability = f"; match probability {verdict.probability:.3f}" if verdict.probability is not None else ""
    out.print(f"{word}: {verdict.a} ↔ {verdict.b}")
    out.print(
        f"distance {verdict.distance:.4f} {sign} threshold {verdict.point.threshold:.4f} ({_point_text(verdict)})"
        f"{probability}"
    )


def _render_pairs(verdicts: list[Any], summary: dict[str, Any] | None, limit: int = 50) -> None:
    table = Table("a", "b", "distance", "verdict", "probability", "label", title="Pairs", title_justify="left")
    for v in verdicts[:limit]:
        probability = f"{v.probability:.3f}" if v.probability is not None else "–"
        label = "" if v.label is None else ("same" if v.label else "different")
        table.add_row(v.a, v.b, f"{v.distance:.4f}", "match" if v.match else "no match", probability, label)
    out.print(table)
    if len(verdicts) > limit:
        out.print(f"… and {len(verdicts) - limit} more pairs: use --json for all of them.")
    matches = sum(v.match for v in verdicts)
    out.print(
        f"{matches} of {len(verdicts)} pairs match at threshold {verdicts[0].point.threshold:.4f} "
        f"({_point_text(verdicts[0])})."
    )
    if summary:
        lines = [
            f"accuracy {summary['accuracy']:.3f}",
            f"FAR {summary['far']:.3f}" if summary["far"] is not None else None,
            f"FRR {summary['frr']:.3f}" if summary["frr"] is not None else None,
        ]
        for key, label in (("roc_auc", "ROC AUC"), ("eer", "EER")):
            if key in summary:
                value, low, high = summary[key]
                lines.append(f"{label} {value:.3f} [{low:.3f}, {high:.3f}]")
        out.print(
            f"Labelled pairs ({summary['genuine']} same, {summary['impostor']} different): "
            + ", ".join(x for x in lines if x)
        )


@app.command("eval")
def evaluate(
    images: Path = typer.Argument(..., help="A folder of labelled images (one sub-folder per label)."),
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    name: str | None = typer.Option(None, "--name", "-n", help=SOURCE_NAME_HELP),
    home: Path = _home_option(),
    k: int = typer.Option(9, "-k", min=1, help="Neighbours that vote."),
    split: float | None = typer.Option(
        None,
        "--split",
        help="Use this share of each label's images as queries against the rest (default: leave-one-out).",
    ),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="Score the pixels and PCA baselines too."),
    open_set: bool = typer.Option(
        False, "--open-set", help="Keep some labels out of the gallery; answer 'unknown' beyond the threshold."
    ),
    unknown_fraction: float = typer.Option(0.2, "--unknown-fraction", help="Open set: share of the labels kept out."),
    threshold: str = typer.Option("auto", "--threshold", help=THRESHOLD_HELP),
    far: float | None = typer.Option(None, "--far", help=FAR_HELP),
    report: Path | None = typer.Option(
        None, "--report", help="Write report.html (self-contained) and its PNG figures into this folder."
    ),
    bootstrap: int = typer.Option(
        200, "--bootstrap", min=10, max=MAX_BOOTSTRAP, help="Bootstrap resamples for the 95% intervals."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for pairs, splits and resampling."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    device: str = typer.Option("auto", "--device", help="Where to run the encoder: auto, cpu or cuda."),
) -> None:
    """Score an encoder on a labelled folder: k-NN accuracy, precision@k, MAP@R, ROC AUC, EER and more.

    Example: simsearch eval ./faces --model models/faces --report reports/faces
    """
    with _errors(_unchanged("eval")) as stop:
        from simsearch.evaluation import EvalConfig
        from simsearch.evaluation import evaluate as run_eval
        from simsearch.verification import load_encoder

        config = EvalConfig(
            k=k, split=split, baselines=baselines, open_set=open_set, unknown_fraction=unknown_fraction,
            threshold=threshold, far=far, bootstrap=bootstrap, seed=seed,
        )  # fmt: skip
        encoder, source = load_encoder(model, name, home, device)
        with _RichProgress() as progress:
            result = run_eval(images, encoder, config, encoder.family, progress)
        page = None
        if report is not None:
            from simsearch.report import write_report

            stop.left = f"the report in {report} may be incomplete; run the same command again to write it whole"
            page = write_report(result, report)
            stop.left = f"the report was already written to {page}; only the summary was cut short"
        if as_json:
            _print_json({**result.to_json(), "source": source, "report": str(page) if page else None})
            return
        _render_eval(result, source)
        if page is not None:
            out.print(f"Report: {page}")


def _render_eval(result: Any, source: str) -> None:
    from simsearch.report import figure_rows

    pairs = result.results[0].figures["pairs"]
    out.print(
        f"{result.folder}: {result.images} images, {result.labels} labels; {result.mode}; {result.queries} queries, "
        f"gallery {result.gallery}; {pairs['genuine']} genuine and {pairs['impostor']} impostor pairs. Encoder: {source}."
    )
    table = Table(
        "metric", *(r.name for r in result.results), title="Value [95% bootstrap interval]", title_justify="left"
    )
    for label, cells in figure_rows(result):
        table.add_row(label, *cells)
    out.print(table, width=None if out.is_terminal else 200)  # piped: one line per metric, not wrapped at 80
    model = result.results[0]
    if model.threshold is not None:
        out.print(f"Threshold {model.threshold.threshold:.4f} ({model.threshold.name}).")
    for note in result.notes:
        out.print(note)
    if result.skipped or result.unlabelled:
        out.print(f"Left out: {len(result.skipped)} unreadable files, {result.unlabelled} images without a label.")


@app.command()
def demo(
    folder: Path = typer.Option(Path("simsearch-demo"), "--dir", help="Where to export the sample images."),
    home: Path = _home_option(),
    k: int = typer.Option(9, "-k", min=1, help="Neighbours per query."),
    max_seconds: float = typer.Option(120.0, "--max-seconds", min=1, help="Time limit for training the encoder."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda."),
) -> None:
    """Run the whole flow on scikit-learn's digits: export, index, query, and score held-out images.

    Example: simsearch demo
    """
    with _errors(KEPT):
        from simsearch.demo import run_demo
        from simsearch.indexing import IndexConfig

        config = IndexConfig(device=device, train=_train_config("autoencoder", 64, "auto", 60, max_seconds, 0, device))
        out.print(
            f"Exporting scikit-learn's digits to {folder}/ and indexing them (collections 'demo', 'demo-pixels')…"
        )
        with _RichProgress() as progress:
            report = run_demo(folder, home, k, config, progress)
        for example in report.examples:
            _render_result(example)
        table = Table(
            "encoder",
            "held-out vote accuracy",
            "images indexed",
            title=f"Held-out queries: {report.n_queries}, k={k}",
            title_justify="left",
        )
        for family, accuracy in report.accuracy.items():
            table.add_row(family, f"{accuracy:.3f}", str(report.reports[family].count))
        out.print(table)
        out.print(f"Try: simsearch query {report.queries_dir}/3/*.png --name demo --home {home} -k 5")


def _stop_on_sigterm() -> list[bool]:
    """Make SIGTERM stop a command the way Ctrl-C does: raise ``Terminated`` in the main thread, so that clean-up
    (``finally`` and ``except BaseException`` blocks: temporary files, locks, worker pools) runs, and
    ``_errors`` says what is left and exits 143. A second SIGTERM ends the process at once, as before. Forked
    worker processes, which inherit the handler, still end at once on it. Returns a flag set on SIGTERM."""
    received: list[bool] = []
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return received
    owner = os.getpid()

    def on_sigterm(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if os.getpid() != owner:  # a forked worker: die the default way
            os.kill(os.getpid(), signal.SIGTERM)
            return
        received.append(True)
        raise Terminated

    signal.signal(signal.SIGTERM, on_sigterm)
    return received


def main() -> None:
    """Console-script entry point."""
    # images.py refuses over-large images itself, right after Pillow reads the header; Pillow's own warning
    # about them would only add noise to the skipped-files table.
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
    # torch's OpenMP threads spin between operations by default, taking the cores from the processes that
    # decode the next batches; passive waiting made `index` 1.35× faster on 2 cores, training no slower.
    # Read when torch is imported, which the commands do later; a value the user set is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    terminated = _stop_on_sigterm()
    try:
        app()
    except BrokenPipeError:  # e.g. `simsearch query … | head`
        sys.stderr.close()
        sys.exit(1)
    except SystemExit as exc:
        # SIGTERM outside a command's work (while the options are parsed): typer turns it into a silent 130.
        if terminated and exc.code == 130:
            err.print("Terminated: simsearch stopped before it began any work; nothing was changed.")
            sys.exit(143)
        raise


if __name__ == "__main__":
    main()
