"""``simsearch duplicates``: every group of near-duplicate images in a collection or among images, with the
distances; or, with ``--against``, which new images already exist (library: ``simsearch.latent.duplicates``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from simsearch.cli.core import _errors, _unchanged, app
from simsearch.cli.options import _home_option
from simsearch.cli.render import _print_json, _print_skipped, _RichProgress, out, shown

#: The relative rule's default, said in --help (simsearch.latent.duplicates.DEFAULT_RELATIVE, not imported here:
#: --help imports no numpy; a test checks they agree).
DEFAULT_RELATIVE_HELP = 0.65
SCALE_RANK_HELP = 5

THRESHOLD_HELP = (
    "A fixed distance instead of the relative rule: pairs at most this far apart are duplicates (in the compared "
    "space: the encoder's metric for a collection; Euclidean between descriptors for IMAGES)."
)
RELATIVE_HELP = (
    f"The relative rule's α: a pair is a duplicate when its distance is at most α × the geometric mean of the two "
    f"images' distances to their {SCALE_RANK_HELP}th nearest neighbour (their own copies set aside). Default: "
    f"{DEFAULT_RELATIVE_HELP} (measured: bench/results/duplicates.md). In (0, 1]."
)
FAR_HELP = (
    "Choose α so that this share of all the pairs of the images is paired (e.g. 0.00001), measured on their own "
    "pairs (their duplicates count among them: distinct pairs are paired at most this often)."
)


@app.command()
def duplicates(
    images: list[Path] | None = typer.Argument(
        None,
        metavar="IMAGES",
        help="Images, or folders of them, compared with each other (embedded here by --model). Without them: the "
        "stored embeddings of a collection (--name).",
    ),
    name: str | None = typer.Option(
        None,
        "--name",
        "-n",
        help="The collection whose images are compared, by their stored embeddings (default: 'default'); a path "
        "also works.",
    ),
    home: Path = _home_option(),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="With IMAGES: 'pixels' (the default: each image trimmed of its plain margin, 16×16 grey, centred; the "
        "fastest and, measured, the most accurate) or a model folder from 'simsearch train'.",
    ),
    threshold: float | None = typer.Option(None, "--threshold", help=THRESHOLD_HELP),
    relative: float | None = typer.Option(None, "--relative", help=RELATIVE_HELP),
    far: float | None = typer.Option(None, "--far", help=FAR_HELP),
    mirror: bool | None = typer.Option(
        None,
        "--mirror/--no-mirror",
        help="Count an image's mirror image as its duplicate (default: yes for IMAGES; a collection's stored "
        "embeddings hold no mirror images).",
    ),
    against: list[Path] | None = typer.Option(
        None,
        "--against",
        help="Instead of groups: which images of this folder (or file; repeatable) already exist among the "
        "compared ones, each with its nearest duplicates.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts (every group, every pair)."),
    csv_file: Path | None = typer.Option(
        None, "--csv", help="Write a CSV: one row per image in a group (group, image, nearest, distance, relative)."
    ),
    report: Path | None = typer.Option(
        None, "--report", help="Write the groups as pictures (duplicates-NN.png) and index.html into this folder."
    ),
    top: int | None = typer.Option(None, "--top", min=1, help="Show only the N largest groups (default: all)."),
    device: str = typer.Option("auto", "--device", help="Where to run a model: auto, cpu or cuda."),
    gpu: bool = typer.Option(True, "--gpu/--no-gpu", help="Search on the GPU when FAISS sees one."),
) -> None:
    """Find every group of near-duplicate images (crops, resizes, re-encodes, small turns, tone shifts, mirror
    images), with the distances.

    Two images are duplicates when they are much nearer each other than their neighbourhood: the relative rule,
    α = 0.65 by default (see --relative); groups are the connected components of the pairs.

    Example: simsearch duplicates --name photos   (or images: simsearch duplicates ./images --report dups/)
    """
    with _errors(_unchanged("duplicates").replace("nothing was changed", "nothing was written")) as stop:
        from simsearch.latent.duplicates import (
            check_report,
            check_rule,
            find_duplicates,
            find_existing,
            load_compared,
            write_existing_report,
            write_report,
        )

        check_rule(threshold, relative, far)
        if report is not None:
            check_report(report)
        with _RichProgress() as progress:
            compared = load_compared(images or [], model, name, home, device, mirror, progress=progress)
            _print_skipped(compared.items.skipped)
            if against:
                existing = find_existing(compared, against, threshold, relative, far, gpu, progress)
            else:
                found = find_duplicates(compared, threshold, relative, far, gpu, progress)
        if against:
            _print_skipped(existing.skipped)
            _finish_existing(existing, as_json, csv_file, report, top, write_existing_report, stop)
        else:
            _finish_groups(found, as_json, csv_file, report, top, write_report, stop)


def _lines(values: list[str]) -> Any:
    """Values one per line in a table cell, each shown as text (``shown``: no markup, controls escaped)."""
    from rich.text import Text

    return Text("\n").join(Text(shown(v)) for v in values)


def _write_outputs(found: Any, csv_file: Path | None, report: Path | None, write: Any, stop: Any) -> Path | None:
    if csv_file is not None:
        stop.left = f"{csv_file} may be incomplete; run the same command again to write it whole"
        found.write_csv(csv_file)
    page = None
    if report is not None:
        stop.left = f"the report in {report} may be incomplete; run the same command again to write it whole"
        page = write(found, report)
    stop.left = "the files asked for were written; only the summary was cut short"
    return page


def _printed_json(found: Any, as_json: bool, csv_file: Path | None, page: Path | None) -> bool:
    """With ``--json``, print the result with the files written beside it, and say so."""
    if as_json:
        _print_json(
            {**found.to_json(), "csv": str(csv_file) if csv_file else None, "report": str(page) if page else None}
        )
    return as_json


def _finish_groups(
    found: Any, as_json: bool, csv_file: Path | None, report: Path | None, top: int | None, write: Any, stop: Any
) -> None:
    page = _write_outputs(found, csv_file, report, write, stop)
    if _printed_json(found, as_json, csv_file, page):
        return
    from rich.table import Table

    if found.groups:
        table = Table(title=f"Near-duplicates among {found.source}")
        for column in ("group", "images", "largest distance"):
            table.add_column(column)
        table.add_column("files", overflow="fold")  # whole paths, folded: a name's end is what tells them apart
        for group in found.groups[:top]:
            names = [found.names[m] for m in group.members]
            listed = _lines(names[:6] + ([f"… {len(names) - 6} more"] if len(names) > 6 else []))
            table.add_row(str(group.number), str(len(group.members)), f"{group.farthest:.4g}", listed)
        out.print(table)
        if top is not None and len(found.groups) > top:
            out.print(f"… {len(found.groups) - top:,} more groups (--json lists them all).")
    out.print(
        f"{len(found.groups):,} group{'s' if len(found.groups) != 1 else ''} of near-duplicates holding "
        f"{found.in_groups:,} of {len(found.names):,} images ({len(found.pairs):,} pairs), in {found.seconds:.1f} s."
    )
    out.print(f"Compared: {found.descriptor}.")
    out.print(f"Rule: {found.rule.describe()}.")
    if csv_file is not None:
        out.print(f"CSV: {csv_file}")
    if page is not None:
        out.print(f"Report: {page}")


def _finish_existing(
    found: Any, as_json: bool, csv_file: Path | None, report: Path | None, top: int | None, write: Any, stop: Any
) -> None:
    page = _write_outputs(found, csv_file, report, write, stop)
    if _printed_json(found, as_json, csv_file, page):
        return
    from rich.table import Table

    hits = [(n, m) for n, m in enumerate(found.matches) if m]
    if hits:
        table = Table(title=f"Already among {found.source}")
        table.add_column("new image", overflow="fold")
        table.add_column("already there as", overflow="fold")
        table.add_column("distance")
        for n, matches in hits[:top]:
            table.add_row(
                found.names[n],
                _lines([found.reference[m.image] for m in matches[:5]]),
                _lines([f"{m.distance:.4g}" for m in matches[:5]]),
            )
        out.print(table)
        if top is not None and len(hits) > top:
            out.print(f"… {len(hits) - top:,} more (--json lists them all).")
    out.print(
        f"{found.existing:,} of {len(found.names):,} new images already exist among {len(found.reference):,}, "
        f"in {found.seconds:.1f} s."
    )
    out.print(f"Compared: {found.descriptor}.")
    out.print(f"Rule: {found.rule.describe()}.")
    if csv_file is not None:
        out.print(f"CSV: {csv_file}")
    if page is not None:
        out.print(f"Report: {page}")
