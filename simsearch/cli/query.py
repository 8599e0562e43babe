"""``simsearch query``: the k nearest indexed images of each query image, and their vote."""

from __future__ import annotations

from pathlib import Path

import typer

from simsearch.cli.core import _errors, _unchanged, app
from simsearch.cli.options import FAR_HELP, NAME_HELP, THRESHOLD_HELP, _channels_option, _home_option, cli_spelling
from simsearch.cli.render import _ChannelNote, _print_json, _render_result, err

#: ``search.DEFAULT_VOTE``, which this module does not import (it needs numpy and faiss); a test checks they agree.
DEFAULT_VOTE = "weighted"
VOTE_HELP = (
    "How the k neighbours vote: majority (one vote each) or weighted by distance (the nearest weighs 1, the k-th 0, "
    "the others linearly between). A tie is reported as one."
)
WHERE_HELP = (
    "Answer only with images whose metadata pass this test (repeatable: all must pass): label=cat, label!=cat, "
    "path~holiday/ (contains), path!~tmp, width>=100; columns label, path, root, sha256, id, bytes, width, height."
)


@app.command()
def query(
    images: list[Path] | None = typer.Argument(
        None, help="Query images, or folders of them (every image inside, batched); or none, with --id."
    ),
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
    channels: str = _channels_option(),
    open_set: bool = typer.Option(
        False, "--open-set", help="Answer 'unknown' when the nearest neighbour is beyond the threshold."
    ),
    threshold: str = typer.Option("auto", "--threshold", help=THRESHOLD_HELP),
    far: float | None = typer.Option(None, "--far", help=FAR_HELP),
    nprobe: int | None = typer.Option(None, "--nprobe", help="IVF indexes: cells to visit (default: the tuned value)."),
    ef: int | None = typer.Option(
        None, "--ef", help="HNSW and CAGRA indexes: search breadth (default: the tuned value)."
    ),
    id: list[int] | None = typer.Option(  # the flag's name: messages spell the option from this one
        None, "--id", help="An indexed image as the query, by id (repeatable): its k nearest other images."
    ),
    label: list[str] | None = typer.Option(
        None, "--label", help="Answer only with images of this label (repeatable: any of them)."
    ),
    where: list[str] | None = typer.Option(None, "--where", help=WHERE_HELP),
    vote: str = typer.Option(DEFAULT_VOTE, "--vote", help=VOTE_HELP),
) -> None:
    """Find the k nearest indexed images of each query image, and the label their votes give.

    Example: simsearch query img.png -k 9   (or a folder: simsearch query queries/ --json; an indexed image:
    simsearch query --id 12; within a label: simsearch query img.png --label cat)
    """
    with _errors(_unchanged("query")):
        from simsearch.errors import ImageError, UsageError, option, spell
        from simsearch.search import Filter, Searcher, check_vote, expand_query_paths, k_note
        from simsearch.store.collection import Collection, resolve_path
        from simsearch.verification import operating_point

        images, ids, labels = images or [], id or [], label or []
        if not images and not ids:
            raise UsageError(
                f"give query images (files or folders), or indexed images by {option('id')}",
                remedy="e.g. simsearch query img.png, or simsearch query --id 12",
            )
        if not open_set and (far is not None or threshold != "auto"):
            given = option("far") if far is not None else option("threshold")
            raise UsageError(
                f"{given} only applies with {option('open_set')}",
                remedy=f"add {option('open_set', 'true')}, or leave {given} out",
            )
        check_vote(vote)
        chosen = Filter.parse(labels, where or ())
        files, unreadable = expand_query_paths(images)
        if images and not files:
            for line in unreadable[:20]:
                err.print(f"Skipped {line}")
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
        # How many images each query can reach: checks the filter and the ids before any image is read.
        reach = [searcher.capacity(chosen)] if files else []
        reach += [searcher.capacity(chosen, image_id) for image_id in ids]
        from_folders = any(path.is_dir() for path in images)
        results = []
        if files:
            with _ChannelNote(channels):
                results = searcher.query_files(
                    files,
                    k,
                    on_error=(lambda e: unreadable.append(e.render(cli_spelling))) if from_folders else None,
                    where=chosen,
                    vote=vote,
                )
        for line in unreadable[:20]:
            err.print(f"Skipped {line}")
        if len(unreadable) > 20:
            err.print(f"… {len(unreadable)} files skipped in all.")
        if files and not results:  # every file under the folders was unreadable: as if there were none
            raise ImageError(
                f"no readable images under {', '.join(map(str, images))} ({len(unreadable)} skipped)",
                remedy="check the path",
            )
        if ids:
            results += searcher.query_ids(ids, k, where=chosen, vote=vote)
        note = k_note(k, max(reach), "that can answer" if chosen or ids else "in the collection")
        if note:
            err.print(f"Note: {spell(note, cli_spelling)}.")
        if point is not None:
            for result in results:
                result.hold_to(point.threshold)
        if as_json:
            _print_json([r.to_json() for r in results])
            return
        for result in results:
            _render_result(result)
