"""``simsearch index`` and ``simsearch info``: build and describe collections."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table
from rich.text import Text

from simsearch.cli.core import KEPT, _errors, _unchanged, app
from simsearch.cli.options import NAME_HELP, _channels_option, _home_option, _train_config
from simsearch.cli.render import _describe_index, _print_json, _render_index_report, _RichProgress, out, shown
from simsearch.models.registry import family_names

if TYPE_CHECKING:  # imported inside the command: --help imports no Ray (nor torch)
    from simsearch.engines.ray import RayEngine


@app.command()
def index(
    images: Path = typer.Argument(..., help="Folder of images (searched recursively; labels are sub-folder names)."),
    name: str = typer.Option("default", "--name", "-n", help=NAME_HELP),
    home: Path = _home_option(),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help=f"A model folder from 'simsearch train', or a family to fit here: {', '.join(family_names())}. "
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
    merge_factor: int = typer.Option(
        10,
        "--merge-factor",
        min=0,
        help="Merge this many checkpoint segments of one size tier into one, on a thread while indexing goes on "
        "(0: never during a run; 'simsearch compact' merges on demand).",
    ),
    checkpoint_seconds: float = typer.Option(
        30.0,
        "--checkpoint-seconds",
        min=0,
        help="Training a new encoder: save its state at the end of an epoch at most this often (0: every epoch); "
        "an interrupted run resumes its training.",
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
    channels: str = _channels_option(),
    allow_empty: bool = typer.Option(
        False,
        "--allow-empty",
        help="Let a folder that holds no images now remove its images from the collection (refused by default: an "
        "unmounted drive looks empty).",
    ),
    engine: str = typer.Option(
        "local",
        "--engine",
        help="Where files are decoded and embedded: local (worker processes here) or ray (Ray actors: a local Ray, "
        "or the cluster at --address; needs pip install 'simsearch[ray]').",
    ),
    address: str | None = typer.Option(
        None,
        "--address",
        help="With --engine ray: the Ray cluster to join (HOST:PORT, auto, ray://HOST:PORT). Every node must see "
        "the images at the same absolute paths (shared storage).",
    ),
) -> None:
    """Index a folder of images into a collection; re-runs only embed new or changed files.

    Example: simsearch index ./images --name photos
    """
    with _errors(KEPT) as stop, contextlib.ExitStack() as stack:
        chosen = _engine(engine, address, batch_size, device)
        stack.enter_context(_early(chosen))  # before the imports below, which take a second or more
        from simsearch.indexing import IndexConfig, index_folder
        from simsearch.store.collection import Collection, resolve_path

        collection = Collection(resolve_path(name, home))

        def training_saved(what: str) -> None:  # until the encoder is committed, its training is what is kept
            from simsearch.store.formats import TRAINING_CHECKPOINT

            where = collection.path / TRAINING_CHECKPOINT
            stop.left = (
                f"training stopped; its work up to {what} is kept in {where}: run the same command again to resume"
                if what
                else KEPT
            )

        config = IndexConfig(
            model=model,
            rebuild=rebuild,
            strict=strict,
            wait=wait,
            workers=workers,
            batch_size=batch_size,
            checkpoint_every=checkpoint_every,
            merge_factor=merge_factor,
            checkpoint_seconds=checkpoint_seconds,
            device=device,
            index_type=index_type,
            allow_empty=allow_empty,
            channels=channels,
            train=_train_config("autoencoder", dim, size, epochs, max_seconds, seed, device),
        )
        with _RichProgress() as progress:
            report = index_folder(images, collection, config, progress, engine=chosen, training_saved=training_saved)
        _render_index_report(report)
        if chosen is not None and report.embedded:
            _render_ray_spread(chosen)


#: ``--engine`` values: the local engine (the default), and Ray.
ENGINES = ("local", "ray")


def _engine(engine: str, address: str | None, batch_size: int, device: str) -> RayEngine | None:
    """The engine ``--engine`` and ``--address`` ask for: None for the local one (``index_folder``'s default), or a
    ``RayEngine`` (imported here: ``--help`` imports no Ray)."""
    from simsearch.errors import UsageError, option

    if engine not in ENGINES:
        raise UsageError(f"{option('engine')} must be {' or '.join(ENGINES)}, not {engine!r}")
    if engine == "local":
        if address is not None:
            raise UsageError(
                f"{option('address')} names a Ray cluster, which only the Ray engine uses",
                remedy=f"add {option('engine', 'ray')}, or drop {option('address')}",
            )
        return None
    from simsearch.engines.ray import RayEngine

    return RayEngine(address, batch_size=batch_size, device=device)


@contextlib.contextmanager
def _early(engine: RayEngine | None) -> Iterator[None]:
    """With a cluster to join (``--address``), start the Ray engine's actors before this process plans the run
    (``RayEngine.start``: they import torch meanwhile), and release them if the run never used them. Without one,
    Ray starts only when there is something to embed: starting a local Ray costs seconds that an unchanged folder
    should not pay."""
    if engine is None or engine.address is None:
        yield
        return
    engine.start()
    try:
        yield
    finally:
        engine.close()


def _render_ray_spread(engine: RayEngine) -> None:
    """One line: how many batches each Ray node read and embedded, and with how many actors."""
    batches, actors = engine.batches_per_node, engine.actors_per_node
    if not batches:
        return

    def plural(n: int, word: str, many: str) -> str:
        return f"{n:,} {word if n == 1 else many}"

    nodes = sorted(set(batches) | set(actors))
    spread = ", ".join(
        f"{node[:8]} {batches.get(node, 0):,} ({plural(actors.get(node, 0), 'actor', 'actors')})" for node in nodes
    )
    embedded = plural(sum(batches.values()), "batch", "batches")
    out.print(f"Ray: {embedded} embedded on {plural(len(nodes), 'node', 'nodes')}: {spread}.")


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
        from simsearch.store.collection import Collection, resolve_path

        collection = Collection(resolve_path(name, home))
        manifest, skipped_table = collection.inspect(skipped=skipped)  # the manifest (and skipped list): no more
        skipped_rows = skipped_table.to_pylist() if skipped_table is not None else []
        skipped_count = len(skipped_rows) if skipped_table is not None else int(manifest["skipped_count"])
        rebuild = collection.rebuild_summary()
        if as_json:
            _print_json(collection.describe(manifest, skipped_count))
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
            ("segments", _segments_line(manifest)),
            ("updated", manifest.get("updated", "")),
            ("skipped files", skipped_count),
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


def _segments_line(manifest: dict) -> str:
    """How the rows are stored: segments and deleted rows not yet merged away, or format 1."""
    if "segments" not in manifest:
        return "one file (format 1: converted to segments by the next write or 'simsearch compact')"
    segments = manifest["segments"]
    deleted = sum(int(s["rows"]) for s in segments) - int(manifest["count"])
    return f"{len(segments)}" + (f" ({deleted:,} deleted rows not yet merged away)" if deleted else "")
