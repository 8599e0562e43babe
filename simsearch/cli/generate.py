"""What a model's decoder makes, and anomaly scores: ``simsearch reconstruct``, ``interpolate``, ``sample``,
``denoise`` and ``anomalies`` (library: ``simsearch.latent.images`` and ``simsearch.latent.anomaly``)."""

from __future__ import annotations

from pathlib import Path

import typer

from simsearch.cli.core import _errors, _unchanged, app
from simsearch.cli.options import _channels_option, _home_option
from simsearch.cli.render import _ChannelNote, _print_json, _print_skipped, _RichProgress, out

MODEL_SOURCE_HELP = "A model folder from 'simsearch train' with a decoder (autoencoder, denoising or vae)."
NAME_SOURCE_HELP = "Use this collection's encoder instead (default: the collection 'default'); a path also works."
DEVICE_HELP = "Where to run the model: auto, cpu or cuda."
WROTE_NOTHING = "nothing was written"


@app.command()
def reconstruct(
    images: list[Path] = typer.Argument(..., help="Images, or folders of them (every image inside)."),
    out_file: Path = typer.Option(..., "--out", "-o", help="The PNG to write: inputs above their reconstructions."),
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_SOURCE_HELP),
    name: str | None = typer.Option(None, "--name", help=NAME_SOURCE_HELP),
    home: Path = _home_option(),
    columns: int = typer.Option(8, "--columns", min=1, help="Images per pair of rows."),
    as_json: bool = typer.Option(False, "--json", help="Print each image's reconstruction error as JSON."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    channels: str = _channels_option(),
) -> None:
    """Draw each image above the model's reconstruction of it, with its reconstruction error (mean squared error
    in the model's input space) under it.

    Example: simsearch reconstruct a.png b.png --model models/ae --out grid.png
    """
    with _errors(_unchanged("reconstruct").replace("nothing was changed", WROTE_NOTHING)), _ChannelNote(channels):
        from simsearch.latent.images import (
            check_output_file,
            load_source,
            read_images,
            reconstruction_grid,
            require_decoder,
        )
        from simsearch.latent.images import reconstruct as run

        source = load_source(model, name, home, device)
        require_decoder(source.encoder, "reconstruct", source.folder)
        inputs = read_images(source.encoder, images, strict=False)
        _print_skipped(inputs.skipped)
        check_output_file(out_file, inputs.paths)
        decoded, errors = run(source.encoder, inputs.arrays)
        grid = reconstruction_grid(source.encoder, inputs.names, inputs.arrays, decoded, errors, columns)
        grid.save(out_file)
        if as_json:
            _print_json(
                {
                    "source": source.description,
                    "out": str(out_file),
                    "images": [
                        {"path": path, "error": float(error)} for path, error in zip(inputs.names, errors, strict=True)
                    ],
                    "mean_error": float(errors.mean()),
                }
            )
            return
        from rich.table import Table

        table = Table("image", "reconstruction error (mse)", title=f"Reconstructed by {source.description}")
        for path, error in zip(inputs.names, errors, strict=True):
            table.add_row(path, f"{error:.5g}")
        out.print(table)
        out.print(
            f"Wrote {out_file} ({grid.image.width}×{grid.image.height}): "
            + (
                "1 input above its reconstruction"
                if len(errors) == 1
                else f"{len(errors)} inputs above their reconstructions"
            )
            + f", at {grid.scale}× the model's input size."
        )


@app.command()
def interpolate(
    a: Path = typer.Argument(..., help="The first image."),
    b: Path = typer.Argument(..., help="The second image."),
    out_file: Path = typer.Option(..., "--out", "-o", help="The PNG to write: A, the decoded points, B."),
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_SOURCE_HELP),
    name: str | None = typer.Option(None, "--name", help=NAME_SOURCE_HELP),
    home: Path = _home_option(),
    steps: int = typer.Option(8, "--steps", min=2, help="Points decoded on the segment, both ends included."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    channels: str = _channels_option(),
) -> None:
    """Decode evenly spaced points on the segment between two images' embeddings: from A's reconstruction to B's,
    with the inputs at both ends.

    Example: simsearch interpolate a.png b.png --model models/vae --steps 8 --out strip.png
    """
    with _errors(_unchanged("interpolate").replace("nothing was changed", WROTE_NOTHING)), _ChannelNote(channels):
        from simsearch.latent.images import (
            check_output_file,
            interpolation_strip,
            load_source,
            read_images,
            require_decoder,
        )
        from simsearch.latent.images import interpolate as run

        source = load_source(model, name, home, device)
        require_decoder(source.encoder, "interpolate", source.folder)
        for path in (a, b):
            if path.is_dir():
                from simsearch.errors import UsageError

                raise UsageError(f"'{path}' is a folder: interpolate takes two image files")
        inputs = read_images(source.encoder, [a, b])
        check_output_file(out_file, inputs.paths)
        decoded = run(source.encoder, inputs.arrays[0], inputs.arrays[1], steps)
        grid = interpolation_strip(
            source.encoder, (inputs.names[0], inputs.names[1]), inputs.arrays[0], inputs.arrays[1], decoded
        )
        grid.save(out_file)
        out.print(
            f"Wrote {out_file} ({grid.image.width}×{grid.image.height}): {a}, {steps} points decoded from its "
            f"reconstruction to {b}'s, then {b} ({source.description})."
        )


@app.command()
def sample(
    out_file: Path = typer.Option(..., "--out", "-o", help="The PNG to write: the samples in a grid."),
    model: str | None = typer.Option(None, "--model", "-m", help="A vae model folder from 'simsearch train'."),
    name: str | None = typer.Option(None, "--name", help=NAME_SOURCE_HELP),
    home: Path = _home_option(),
    count: int = typer.Option(16, "-n", "--count", min=1, max=4096, help="How many samples."),
    seed: int = typer.Option(0, "--seed", help="The seed of the draws: the same seed, the same samples."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """Decode draws from a VAE's prior N(0, I): images the model makes up. Only the vae family has a prior.

    Example: simsearch sample --model models/vae -n 16 --seed 0 --out samples.png
    """
    with _errors(_unchanged("sample").replace("nothing was changed", WROTE_NOTHING)):
        from simsearch.latent.images import check_output_file, load_source, sample_grid
        from simsearch.latent.images import sample as run

        source = load_source(model, name, home, device)
        decoded = run(source.encoder, count, seed)
        check_output_file(out_file)
        grid = sample_grid(source.encoder, decoded)
        grid.save(out_file)
        out.print(
            f"Wrote {out_file} ({grid.image.width}×{grid.image.height}): {count} samples of {source.description}'s "
            f"prior N(0, I), seed {seed}."
        )


@app.command()
def denoise(
    images: list[Path] = typer.Argument(..., help="Images, or folders of them (every image inside)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="The folder to write the PNGs into (same base names)."),
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_SOURCE_HELP),
    name: str | None = typer.Option(None, "--name", help=NAME_SOURCE_HELP),
    home: Path = _home_option(),
    noise: float | None = typer.Option(
        None,
        "--noise",
        min=0.0,
        help="Add Gaussian noise of this standard deviation (on the 0..1 intensity scale) first, to demonstrate; "
        "the noisy input is written too (NAME.noisy.png).",
    ),
    seed: int = typer.Option(0, "--seed", help="The seed of the noise."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    channels: str = _channels_option(),
) -> None:
    """Write the model's reconstruction of each image as a PNG (at the model's input size): for the denoising
    family, its denoised image. Other families with a decoder work too, but were not trained to denoise.

    Example: simsearch denoise scans/*.png --model models/dae --out clean/ --noise 0.1
    """
    with _errors(_unchanged("denoise").replace("nothing was changed", WROTE_NOTHING)) as stop, _ChannelNote(channels):
        from simsearch.latent.images import denoise as run
        from simsearch.latent.images import load_source, read_images, require_decoder

        source = load_source(model, name, home, device)
        require_decoder(source.encoder, "denoise", source.folder)
        inputs = read_images(source.encoder, images, strict=False)
        _print_skipped(inputs.skipped)
        stop.left = f"some PNGs may be written in {out_dir}; run the same command again to write them all"
        done = run(source.encoder, inputs, out_dir, noise, seed)
        trained = source.encoder.family == "denoising"
        note = (
            None
            if trained
            else f"this {source.encoder.family} model was not trained to denoise: these are its reconstructions"
        )
        if as_json:
            _print_json(
                {
                    "source": source.description,
                    "family": source.encoder.family,
                    "trained_to_denoise": trained,
                    "note": note,
                    "noise": noise,
                    "images": [
                        {
                            "path": path,
                            "output": str(output),
                            "noisy": str(done.noisy[n]) if done.noisy else None,
                            "error": float(done.errors[n]),
                        }
                        for n, (path, output) in enumerate(zip(inputs.names, done.outputs, strict=True))
                    ],
                }
            )
            return
        if note:
            out.print(f"Note: {note}.")
        for n, (path, output) in enumerate(zip(inputs.names, done.outputs, strict=True)):
            noisy = f" (noisy input: {done.noisy[n]})" if done.noisy else ""
            out.print(f"{path} → {output}{noisy}")
        out.print(
            f"Wrote {len(done.outputs)} image{'s' if len(done.outputs) != 1 else ''} at the model's input size "
            f"({'×'.join(map(str, source.encoder.preprocess.size))}) into {out_dir}."
        )


@app.command()
def anomalies(
    images: list[Path] = typer.Argument(..., help="Images, or folders of them (every image inside)."),
    model: str | None = typer.Option(None, "--model", "-m", help="A model folder from 'simsearch train'."),
    name: str | None = typer.Option(
        None, "--name", help="A collection: its encoder, and for --by knn its images (default: 'default')."
    ),
    home: Path = _home_option(),
    by: str = typer.Option(
        "auto",
        "--by",
        help="reconstruction (error of the model's decoder), knn (mean distance to the k nearest images of the "
        "collection) or auto (reconstruction when the model has a decoder, else knn).",
    ),
    k: int = typer.Option(5, "-k", "--k", min=1, help="Neighbours for --by knn."),
    percentile: float = typer.Option(
        99.0,
        "--percentile",
        min=0.0,
        max=100.0,
        help="Flag scores above this percentile of the training images' (reconstruction) or the collection's own "
        "leave-one-out (knn) scores.",
    ),
    top: int | None = typer.Option(None, "--top", min=1, help="Show only the N most anomalous (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    report: Path | None = typer.Option(
        None, "--report", help="Write report.html (self-contained) and top.png, bottom.png into this folder."
    ),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    channels: str = _channels_option(),
) -> None:
    """Score every image by how unlike the model's or collection's images it is, rank them, and flag those beyond
    a threshold fitted on images the model knows.

    Example: simsearch anomalies new-scans/ --model models/ae --top 20 --report reports/anomalies
    """
    with _errors(_unchanged("anomalies")) as stop, _ChannelNote(channels):
        from simsearch.latent.anomaly import find_anomalies, write_report
        from simsearch.latent.images import load_source

        source = load_source(model, name, home, device)
        with _RichProgress() as progress:
            found = find_anomalies(source, images, by, k, percentile, progress=progress)
        _print_skipped(found.skipped)
        page = None
        if report is not None:
            stop.left = f"the report in {report} may be incomplete; run the same command again to write it whole"
            page = write_report(found, source.encoder, report)
            stop.left = f"the report was already written to {page}; only the summary was cut short"
        if as_json:
            _print_json({**found.to_json(top), "report": str(page) if page else None})
            return
        from rich.table import Table

        what = "reconstruction error" if found.by == "reconstruction" else f"mean distance to {found.k} nearest"
        table = Table("rank", f"score ({what})", "flagged", "image", title=f"Anomalies by {found.by}")
        for result in found.results[:top]:
            table.add_row(str(result.rank), f"{result.score:.5g}", "yes" if result.flagged else "", result.path)
        out.print(table)
        if found.threshold.value is None:
            out.print(f"Note: {found.threshold.describe()}.")
        else:
            out.print(f"{found.flagged} of {len(found.results)} images flagged, above {found.threshold.describe()}.")
        if page is not None:
            out.print(f"Report: {page}")
