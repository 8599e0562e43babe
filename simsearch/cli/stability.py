"""``simsearch stability``: how far embeddings, neighbours, reconstructions and latent ranks move under input noise."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from simsearch.cli.core import _errors, _unchanged, app
from simsearch.cli.options import _channels_option
from simsearch.cli.render import _ChannelNote, _print_json, _RichProgress, out

if TYPE_CHECKING:
    from simsearch.latent.stability import StabilityReport


@app.command()
def stability(
    images: Path = typer.Argument(..., help="A folder of images (searched recursively; labels are not needed)."),
    model: list[str] = typer.Option(
        [], "--model", "-m", help="A model folder from 'simsearch train'; repeat it to compare several."
    ),
    noise: str = typer.Option(
        "0.05,0.1,0.2",
        "--noise",
        help="Noise levels: standard deviations of Gaussian noise added to the pixels scaled to [0, 1] (after the "
        "model's resizing, before its normalisation; clipped to [0, 1]), comma-separated.",
    ),
    k: int = typer.Option(10, "-k", "--k", help="Neighbours compared for the k-NN overlap."),
    max_images: int = typer.Option(
        2000, "--max-images", help="Measure at most this many images (a random sample, the same for every model)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for the sample and the noise."),
    rank_tol: float | None = typer.Option(
        None,
        "--rank-tol",
        help="Ranks count singular values above this share of the largest (default: the numerical rank, "
        "max(rows, columns) × float32 epsilon; 0.01, say, for an effective rank).",
    ),
    report: Path | None = typer.Option(
        None, "--report", help="Write report.html (self-contained) and its PNG figures into this folder."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    device: str = typer.Option("auto", "--device", help="Where to run the encoders: auto, cpu or cuda."),
    channels: str = _channels_option(),
) -> None:
    """Measure how each encoder's latent space moves when Gaussian noise is added to the images: embedding
    movement (median shift ÷ median distance between images), k-NN overlap with the clean neighbours,
    reconstruction PSNR (models with a decoder) and the ranks of the latent tensors (the feature map before the
    final linear head), clean and noisy.

    Example: simsearch stability ./images --model models/ae --model models/vae --report reports/stability
    """
    with _errors(_unchanged("stability")) as stop, _ChannelNote(channels):
        from simsearch.errors import UsageError, option
        from simsearch.latent.stability import check_image_folder, parse_noise, stability_of_folder, write_report
        from simsearch.verification import load_encoder

        if not model:
            raise UsageError(
                f"no model to measure — pass {option('model')} (a model folder from 'simsearch train') once or more"
            )
        levels = parse_noise(noise)
        if rank_tol is not None and not 0 <= rank_tol < 1:
            raise UsageError(f"{option('rank_tol')} must be at least 0 and below 1, not {rank_tol:g}")
        check_image_folder(images)
        encoders = [(m, load_encoder(m, None, Path("."), device)[0]) for m in model]
        with _RichProgress() as progress:
            result = stability_of_folder(
                images, encoders, levels, k, max_images, seed, rtol=rank_tol, progress=progress
            )
        page = None
        if report is not None:
            stop.left = f"the report in {report} may be incomplete; run the same command again to write it whole"
            page = write_report(result, report)
            stop.left = f"the report was already written to {page}; only the summary was cut short"
        if as_json:
            _print_json({**result.to_json(), "report": str(page) if page else None})
            return
        _render(result)
        if page is not None:
            out.print(f"Report: {page}")


def _render(result: StabilityReport) -> None:
    from rich.table import Table

    from simsearch.latent.stability import TABLE_HEADER, TABLE_LEGEND, table_rows

    out.print(
        f"{result.folder}: {result.images} images measured ({result.found} found, {result.skipped} left out); "
        f"Gaussian noise σ = {', '.join(f'{s:g}' for s in result.noise)} on [0, 1] pixels (clipped); k = {result.k}."
    )
    for model in result.models:
        about = f"{model.family}, median distance between images {model.pairwise_median:.4f}"
        if model.feature_shape is not None:
            about += f", latent tensor {'×'.join(map(str, model.feature_shape))}"
        table = Table(*TABLE_HEADER, title=f"{model.name} ({about})", title_justify="left")
        for row in table_rows(model):
            table.add_row(*row)
        out.print(table)
    out.print(TABLE_LEGEND[0].upper() + TABLE_LEGEND[1:] + ".")
