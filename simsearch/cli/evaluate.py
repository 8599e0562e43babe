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
    _home_option,
    _train_config,
)
from simsearch.cli.render import _print_json, _render_eval, _render_result, _RichProgress, out


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
