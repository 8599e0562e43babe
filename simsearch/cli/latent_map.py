"""``simsearch map``: a 2-D map of every embedding of a collection (or of a folder embedded with a model): a page
that works offline, a picture and a table."""

from __future__ import annotations

from pathlib import Path

import typer

from simsearch.cli.core import _errors, app
from simsearch.cli.options import NAME_HELP, _channels_option, _home_option
from simsearch.cli.render import _ChannelNote, _print_json, _RichProgress, err, out

METHOD_HELP = (
    "auto (UMAP when umap-learn is installed and there are at least 16 points, else PCA), umap, pca (exact, fast, "
    "always available) or tsne (slow: 3 minutes at 10,000 points on 2 cores, far longer at 100,000)."
)

LEFT = "map stopped before it finished: each map file is whole (the old one or the new one); run it again"


@app.command("map")
def latent_map(
    images: Path | None = typer.Argument(
        None, metavar="IMAGES", help="A folder of images to map, embedded with --model."
    ),
    name: str | None = typer.Option(
        None, "--name", "-n", help=NAME_HELP + " Its map goes into the collection's map/ folder unless --out is given."
    ),
    model: Path | None = typer.Option(None, "--model", help="With IMAGES: the model folder that embeds them."),
    method: str = typer.Option("auto", "--method", help=METHOD_HELP),
    out_dir: Path | None = typer.Option(
        None,
        "--out",
        help="Folder for map.html, map.png and map.parquet: new, empty, or holding a map (default with --name: the "
        "collection's map/ folder, which simsearch serve links to).",
    ),
    home: Path = _home_option(),
    seed: int = typer.Option(0, "--seed", help="Seed of the layout and of the thumbnail sample: same seed, same map."),
    max_thumbnails: int = typer.Option(
        5000, "--max-thumbnails", min=0, help="At most this many thumbnails in the page (a random sample beyond)."
    ),
    device: str = typer.Option("auto", "--device", help="With IMAGES: where to run the encoder: auto, cpu or cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    channels: str = _channels_option(),
) -> None:
    """Draw a 2-D map of every embedding: map.html (zoom, search, thumbnails on hover; offline), map.png, map.parquet.

    Example: simsearch map --name photos   (or a folder: simsearch map ./images --model models/ae --out maps/ae)
    """
    with _errors(LEFT), _ChannelNote(channels):
        from simsearch.errors import UsageError, option
        from simsearch.latent.map import (
            check_method,
            collection_map_dir,
            collection_source,
            folder_source,
            make_map,
            umap_available,
        )
        from simsearch.store.collection import resolve_path

        check_method(method)
        source_flags = f"{option('name')} C (a collection) or IMAGES {option('model')} M (a folder and a model folder)"
        if name is not None and (images is not None or model is not None):
            raise UsageError(f"give either {source_flags}, not both")
        if name is None and images is None and model is None:
            raise UsageError("say what to map", remedy=f"give {source_flags}")
        if name is None and model is None:
            raise UsageError("IMAGES needs a model to embed them", remedy=f"give {option('model')} M (a model folder)")
        if name is None and images is None:
            raise UsageError(f"{option('model')} maps a folder of images", remedy="give IMAGES, the folder to map")
        if name is None and out_dir is None:
            raise UsageError(
                "a folder's map has no collection folder to go into",
                remedy=f"give {option('out_dir')} DIR, a new or empty folder",
            )
        with _RichProgress() as progress:
            if name is not None:
                path = resolve_path(name, home)
                source = collection_source(path)
                folder = out_dir if out_dir is not None else collection_map_dir(path)
                what = f"collection {name}"
            else:
                assert images is not None and model is not None and out_dir is not None
                source = folder_source(images, model, device=device, progress=progress)
                folder, what = out_dir, str(images)
            report = make_map(
                source.ids,
                source.embeddings,
                source.labels,
                source.paths,
                folder,
                method=method,
                seed=seed,
                max_thumbnails=max_thumbnails,
                metric=source.metric,
                title=source.title,
                progress=progress,
            )
        for rel, reason in source.skipped[:20]:
            err.print(f"Skipped {rel}: {reason}")
        if len(source.skipped) > 20:
            err.print(f"… {len(source.skipped)} files skipped in all.")
        if as_json:
            _print_json({**report.to_json(), "skipped": len(source.skipped)})
            return
        why = ""
        if method == "auto" and report.method == "pca":
            why = " (umap-learn is not installed)" if not umap_available() else " (too few points for UMAP)"
        name_of = {"pca": "PCA", "umap": "UMAP", "tsne": "t-SNE"}
        labels = f"{report.labels:,} labels" if report.labels else "no labels"
        out.print(
            f"Mapped {report.points:,} points of {what} with {name_of[report.method]}{why} in {report.seconds:.1f} s "
            f"({labels}):"
        )
        html = report.files["html"]
        thumbs = "every point" if report.thumbnails == report.points else f"{report.thumbnails:,} points"
        size = html.stat().st_size
        weight = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{max(1, round(size / 1e3))} kB"
        out.print(f"  {html} ({weight}): open it in a browser; thumbnails for {thumbs}")
        out.print(f"  {report.files['png']}")
        out.print(f"  {report.files['parquet']} (id, x, y, path, label)")
