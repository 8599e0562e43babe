"""``simsearch query``: the k nearest indexed images of each query image, and their vote."""

from __future__ import annotations

from pathlib import Path

import typer

from simsearch.cli.core import _errors, _unchanged, app
from simsearch.cli.options import FAR_HELP, NAME_HELP, THRESHOLD_HELP, _home_option, cli_spelling
from simsearch.cli.render import _print_json, _render_result, err


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
        from simsearch.errors import ImageError
        from simsearch.search import Searcher, expand_query_paths
        from simsearch.store.collection import Collection, resolve_path
        from simsearch.verification import operating_point

        files, unreadable = expand_query_paths(images)
        if not files:
            raise ImageError(f"no images under {', '.join(map(str, images))}", remedy="check the path")
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
            files, k, on_error=(lambda e: unreadable.append(e.render(cli_spelling))) if from_folders else None
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
