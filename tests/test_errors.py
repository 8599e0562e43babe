"""Library errors speak the library's language: what, which file, and a remedy that names fields, not flags.

The command line spells the fields as its flags, a service as request fields, the Python API as keywords.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import typer

from simsearch.cli import app
from simsearch.cli.options import cli_spelling
from simsearch.errors import CollectionLocked, ImageError, UsageError, option

LIBRARY = Path(__file__).resolve().parents[1] / "simsearch"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")


def library_sources() -> list[Path]:
    return [p for p in sorted(LIBRARY.rglob("*.py")) if "cli" not in p.relative_to(LIBRARY).parts]


def message_strings(path: Path) -> list[tuple[int, str]]:
    """Every string literal of a module (f-string parts included) but its docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_no_library_message_names_a_command_line_flag() -> None:
    found = [
        f"{path.relative_to(LIBRARY.parent)}:{line}: {text!r}"
        for path in library_sources()
        for line, text in message_strings(path)
        if FLAG.search(text)
    ]
    assert found == []


def command_line_flags() -> set[str]:
    command = typer.main.get_command(app)
    flags = set()
    for sub in command.commands.values():  # type: ignore[attr-defined]
        for param in sub.params:
            flags.update(param.opts)
            flags.update(getattr(param, "secondary_opts", []))
    return flags


def test_every_option_a_library_message_names_is_a_flag_of_the_command_line() -> None:
    named = {
        name for path in library_sources() for name in re.findall(r"""option\(\s*["']([a-z_]+)["']""", path.read_text())
    }
    assert len(named) >= 10  # the messages do name options
    flags = command_line_flags()
    missing = {name: cli_spelling(name, None) for name in named if cli_spelling(name, None).split("/")[0] not in flags}
    assert missing == {}


def test_the_command_line_spells_every_field_as_its_own_flag() -> None:
    """``FLAG_NAMES`` knows every option whose flag is not ``--`` + its dashed name."""
    command = typer.main.get_command(app)
    for sub in command.commands.values():  # type: ignore[attr-defined]
        for param in sub.params:
            if any(opt.startswith("-") for opt in param.opts):
                assert cli_spelling(param.name, None).split("/")[0] in param.opts, (sub.name, param.name)


def test_one_error_rendered_for_each_front_end() -> None:
    error = UsageError(
        f"{option('index_type', 'ivfpq')} needs at least 100 images",
        file="/data/c",
        remedy=f"use {option('index_type', 'flat')}, or pass {option('rebuild', 'true')}",
    )
    assert (
        str(error)
        == "/data/c: index_type='ivfpq' needs at least 100 images — use index_type='flat', or pass rebuild=True"
    )
    assert (
        error.render(cli_spelling)
        == "/data/c: --type ivfpq needs at least 100 images — use --type flat, or pass --rebuild"
    )
    assert error.to_json() == {
        "error": "/data/c: index_type=ivfpq needs at least 100 images",
        "remedy": "use index_type=flat, or pass rebuild=true",
    }
    assert (error.exit_code, error.http_status) == (2, 422)
    assert error.options() == ["index_type", "index_type", "rebuild"]
    assert (CollectionLocked("x").http_status, ImageError("x").http_status) == (423, 415)


def test_errors_survive_a_trip_between_processes() -> None:
    """Decoding workers return ImageErrors through pickle: the message arrives whole, and in its parts."""
    import pickle

    error = ImageError("not an image", file="a/b.png", remedy=f"pass {option('convert', 'true')}")
    back = pickle.loads(pickle.dumps(error))
    assert isinstance(back, ImageError) and str(back) == str(error)
    assert (back.what, back.file, back.remedy) == ("not an image", "a/b.png", "pass ⟨convert=true⟩")
    assert back.render(cli_spelling) == "a/b.png: not an image — pass --convert"


def test_the_command_line_spells_options_as_its_flags(image_folder: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    args = ["index", str(image_folder), "--home", str(tmp_path), "--model", "pixels", "--type", "ivf"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 2
    assert [line for line in result.stderr.splitlines() if line] == [
        "Error: --type ivf needs at least 100 images to train on, and the collection would hold 15 — use --type flat "
        "(exact search, and fast at this size)"
    ]
