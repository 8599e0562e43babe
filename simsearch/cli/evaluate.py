"""``simsearch eval`` and ``simsearch demo``: score an encoder on labelled images; the whole flow on a bundled sample."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from simsearch.cli.core import KEPT, _errors, _unchanged, app
from simsearch.cli.options import (
    FAR_HELP,
    MAX_BOOTSTRAP,
    MODEL_HELP,
    SOURCE_NAME_HELP,
    THRESHOLD_HELP,
    _channels_option,
    _home_option,
    _train_config,
    cli_spelling,
)
from simsearch.cli.query import DEFAULT_VOTE, VOTE_HELP
from simsearch.cli.render import _ChannelNote, _print_json, _render_eval, _render_result, _RichProgress, out


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
    vote: str = typer.Option(DEFAULT_VOTE, "--vote", help=VOTE_HELP),
    gallery: str = typer.Option(
        "folder",
        "--gallery",
        help="folder: the folder's images answer each other (leave-one-out or --split); collection: each image of "
        "the folder is a query against the collection --name, as 'query' answers it.",
    ),
    channels: str = _channels_option(),
) -> None:
    """Score an encoder on a labelled folder: k-NN accuracy, precision@k, MAP@R, ROC AUC, EER and more.

    With --gallery collection, the folder holds labelled queries for an existing collection: vote accuracy, 1-NN
    accuracy, precision@k and a row per label.

    Example: simsearch eval ./faces --model models/faces --report reports/faces
    (or: simsearch eval ./queries --name photos --gallery collection)
    """
    with _errors(_unchanged("eval")) as stop, _ChannelNote(channels):
        from simsearch.errors import UsageError, option
        from simsearch.evaluation import EvalConfig
        from simsearch.evaluation import evaluate as run_eval
        from simsearch.verification import load_encoder

        if gallery not in ("folder", "collection"):
            raise UsageError(f"{option('gallery')} must be folder or collection, not {gallery!r}")
        if gallery == "collection":
            given = [
                flag
                for flag, used in (
                    ("model", model is not None), ("split", split is not None), ("open_set", open_set),
                    ("threshold", threshold != "auto"), ("far", far is not None), ("report", report is not None),
                )
                if used
            ]  # fmt: skip
            if given:
                raise UsageError(
                    f"{option(given[0])} does not apply with {option('gallery', 'collection')}",
                    remedy=f"leave it out (the collection answers with its own encoder and images), or use "
                    f"{option('gallery', 'folder')}",
                )
            _evaluate_collection(images, name, home, k, vote, bootstrap, seed, as_json, device)
            return
        config = EvalConfig(
            k=k, split=split, baselines=baselines, open_set=open_set, unknown_fraction=unknown_fraction,
            threshold=threshold, far=far, bootstrap=bootstrap, seed=seed, vote=vote,
        )  # fmt: skip
        encoder, source = load_encoder(model, name, home, device)
        with _RichProgress() as progress:
            result = run_eval(images, encoder, config, encoder.family, progress)
        page = None
        if report is not None:
            from simsearch.evaluation.report import write_report

            stop.left = f"the report in {report} may be incomplete; run the same command again to write it whole"
            page = write_report(result, report)
            stop.left = f"the report was already written to {page}; only the summary was cut short"
        if as_json:
            _print_json({**result.to_json(), "source": source, "report": str(page) if page else None})
            return
        _render_eval(result, source)
        if page is not None:
            out.print(f"Report: {page}")


def _evaluate_collection(
    images: Path, name: str | None, home: Path, k: int, vote: str, bootstrap: int, seed: int, as_json: bool, device: str
) -> None:
    """``eval --gallery collection``: the folder's labelled images as queries against the collection ``name``."""
    from simsearch.errors import spell
    from simsearch.evaluation import evaluate_collection
    from simsearch.evaluation.report import format_figure
    from simsearch.search import Searcher
    from simsearch.store.collection import Collection, resolve_path

    searcher = Searcher(Collection(resolve_path(name or "default", home)), device=device)
    with _RichProgress() as progress:
        report = evaluate_collection(images, searcher, k, vote, bootstrap, seed, progress)
    notes = [spell(note, cli_spelling) for note in report.notes]
    if as_json:
        _print_json({**report.to_json(), "notes": notes})
        return
    out.print(
        f"{report.folder}: {report.queries} queries, {report.labels} labels, against collection {report.collection} "
        f"({report.gallery} images); k={report.k}, {report.vote} vote."
    )
    table = Table(
        "metric", "value [95% bootstrap interval]", title="Queries against the collection", title_justify="left"
    )
    figures = report.figures
    for key, label in (
        ("vote_accuracy", "k-NN vote accuracy"),
        ("nn1_accuracy", "1-NN accuracy"),
        ("precision_at_k", f"precision@{report.k}"),
        ("vote_ties", "queries whose vote tied"),
        ("unfamiliar_queries", "queries flagged unfamiliar"),
    ):
        if figures.get(key) is not None:
            table.add_row(label, format_figure(figures[key]))
    out.print(table)
    labels = Table(
        "label",
        "queries",
        "vote accuracy",
        "1-NN accuracy",
        "images in the collection",
        title="Per label",
        title_justify="left",
    )
    for row in report.per_label:
        labels.add_row(
            row.label, str(row.queries), f"{row.vote_accuracy:.3f}", f"{row.nn1_accuracy:.3f}", str(row.in_collection)
        )
    out.print(labels)
    for note in notes:
        out.print(f"Note: {note}.")
    if report.skipped or report.unlabelled:
        out.print(
            f"Left out: {len(report.skipped)} files that could not be used, {report.unlabelled} images without a label."
        )


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
