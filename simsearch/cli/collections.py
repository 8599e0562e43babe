"""``simsearch collections`` and ``simsearch remove-collection``: the collections under a home, and removing one."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

from simsearch.cli.core import _errors, _unchanged, app
from simsearch.cli.options import NAME_HELP, _home_option
from simsearch.cli.render import _print_json, out


def _size(n: int) -> str:
    """Bytes as a short size: 812 B, 4.2 kB, 13.0 MB, 1.20 GB."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{n} B" if unit == "B" else (f"{value:.2f} {unit}" if value < 10 else f"{value:.1f} {unit}")
        value /= 1000
    raise AssertionError("unreachable")


def _stdin_is_terminal() -> bool:
    """Whether a person can answer a question (tests replace this)."""
    return sys.stdin.isatty()


@app.command("collections")
def collections(
    home: Path = _home_option(),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """List the collections under --home: images, encoder, index type, size on disk, last update.

    Reads each collection's manifest only (fast: no index or embeddings are loaded).

    Example: simsearch collections --home indexes
    """
    with _errors(_unchanged("collections")):
        from simsearch.store.collection import list_collections

        found = list_collections(home)
        if as_json:
            _print_json([c.to_json() for c in found])
            return
        if not found:
            where = "" if home.is_dir() else " (the folder does not exist)"
            out.print(f"No collections under {home}{where}.")
            return
        table = Table(
            "name",
            "images",
            "encoder",
            "index",
            "size",
            "updated",
            title=f"Collections under {home}",
            title_justify="left",
        )
        for c in found:
            if c.problem is not None:
                table.add_row(c.name, "–", f"({c.problem})", "–", _size(c.bytes), "–")
                continue
            index = f"{c.index} (+ unfinished rebuild)" if c.rebuild else str(c.index)
            table.add_row(c.name, f"{c.images:,}", str(c.encoder), index, _size(c.bytes), str(c.updated or ""))
        out.print(table)


@app.command("compact")
def compact(
    name: str = typer.Option("default", "--name", "-n", help=NAME_HELP),
    home: Path = _home_option(),
    wait: bool = typer.Option(False, "--wait", help="If another process is writing to the collection, wait for it."),
    as_json: bool = typer.Option(False, "--json", help="Print what was done as JSON."),
) -> None:
    """Merge a collection's segments into one, dropping deleted rows (and convert an older collection).

    Indexing merges small segments by itself as it goes; this does all of it now, in one commit that readers see
    whole. Example: simsearch compact --name photos
    """
    with _errors(_unchanged("compact")):
        from simsearch.store.collection import Collection, resolve_path

        done = Collection(resolve_path(name, home)).compact(wait=wait)
        if as_json:
            _print_json(done.to_json())
        elif done.generation_after is None:
            out.print(f"Nothing to compact: {done.path} is one segment without deleted rows.")
        else:
            converted = " (converted from format 1)" if done.format.endswith("/1") else ""
            out.print(
                f"Compacted {done.path}{converted}: {done.segments} segments and {done.deleted:,} deleted rows into "
                f"one segment; {_size(done.bytes)} → {_size(done.bytes_after or 0)} "
                f"(generation {done.generation_after})."
            )


@app.command("remove-collection")
def remove_collection(
    name: str = typer.Argument(..., help=NAME_HELP),
    home: Path = _home_option(),
    yes: bool = typer.Option(False, "--yes", "-y", help="Remove without asking (needed when stdin is no terminal)."),
    wait: bool = typer.Option(False, "--wait", help="If another process is writing to the collection, wait for it."),
    as_json: bool = typer.Option(False, "--json", help="Print what was removed as JSON."),
) -> None:
    """Remove a collection for good: its index, metadata, encoder, map and folder.

    Asks for confirmation on a terminal; --yes removes without asking. A collection another process is writing
    to is refused (or waited for, with --wait).

    Example: simsearch remove-collection photos --yes
    """
    with _errors(_unchanged("remove-collection")):
        from simsearch.errors import UsageError, option
        from simsearch.store.collection import Collection, resolve_path

        collection = Collection(resolve_path(name, home))
        if not collection.present():
            raise collection.not_found()
        if not yes:
            if not _stdin_is_terminal():
                raise UsageError(
                    f"remove-collection asks for confirmation, and stdin is not a terminal ('{collection.path}' was "
                    "not removed)",
                    remedy=f"pass {option('yes')} to remove it without asking",
                )
            summary = collection.summary()
            held = f"{summary.images:,} images, " if summary.images is not None else ""
            question = f"Remove collection {collection.path} ({held}{_size(summary.bytes)}) for good?"
            if not typer.confirm(question, default=False):
                out.print("Nothing was removed.")
                raise typer.Exit(1)
        removal = collection.remove(wait=wait)
        if as_json:
            _print_json(removal.to_json())
            return
        held = f"{removal.images:,} images, " if removal.images is not None else ""
        out.print(f"Removed collection {removal.path} ({held}{_size(removal.bytes)}).")
        if removal.kept:
            shown = ", ".join(removal.kept[:5]) + (
                f" and {len(removal.kept) - 5} more" if len(removal.kept) > 5 else ""
            )
            out.print(f"Kept {removal.path} itself: it also holds files simsearch did not write ({shown}).")
