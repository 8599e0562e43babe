"""What reaches the terminal: user data is shown as text, and Ctrl-C and SIGTERM end a command with a true line.

File names, folder names (labels, roots, collections, model folders) and error messages that embed them are
printed as text: never parsed as rich markup (``[/bold]`` in a name once crashed the command, ``[bold red]``
vanished), and control or other non-printable characters are shown escaped (``\\x1b``), never sent to the
terminal raw. ``--json`` output keeps the exact names. Every case runs the real CLI on real files.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import simsearch.cli.core as cli_core
import simsearch.cli.render as render
import simsearch.cli.train as cli_train
from tests.conftest import pattern, write_folder
from tests.helpers import invoke

SIMSEARCH = shutil.which("simsearch", path=str(Path(sys.executable).parent)) or "simsearch"

# Image files (copies of blob/0.png), relative to the root → how the terminal must show them.
IMAGES = {
    "blob/L0[/bold].png": "blob/L0[/bold].png",  # a closing tag with no opening one: MarkupError
    "blob/[bold red]x[blink].png": "blob/[bold red]x[blink].png",  # valid markup: eaten
    "blob/a:smile:b.png": "blob/a:smile:b.png",  # an emoji code: replaced by 😄
    "blob/é中.png": "blob/é中.png",  # ordinary Unicode: kept as it is
    "blob/esc\x1b[31mred.png": "blob/esc\\x1b[31mred.png",  # an ANSI colour sequence
    "blob/\x1b]0;pwned\x07.png": "blob/\\x1b]0;pwned\\x07.png",  # an OSC sequence that sets the window title
    "blob/c1\x9b2J del\x7f.png": "blob/c1\\x9b2J del\\x7f.png",  # C1 CSI (clears the screen) and DEL
    "blob/rtl\u202egnp.png": "blob/rtl\\u202egnp.png",  # a right-to-left override (shows 'png.png')
    "blob/two\nlines.png": "blob/two\\nlines.png",  # a newline would fake a second row
}
# One image of its own under a label (a folder name) that holds markup and an escape sequence.
LABEL = "[red]lab\x1b[7m"
LABEL_SHOWN = "[red]lab\\x1b[7m"
# Text files named like images: indexing skips them and lists them.
NOT_IMAGES = {
    "hbars/S[/bold]\x1b[2J.png": "hbars/S[/bold]\\x1b[2J.png",
    "hbars/[bold]x\x1b]0;t\x07.png": "hbars/[bold]x\\x1b]0;t\\x07.png",
    "hbars/bad\udcff.png": "hbars/bad\\xff.png",  # a byte that is not UTF-8 (Python decodes it to U+DCFF)
}
# The folders themselves: the root of the images and the collections' home.
ROOT = ("imgs[", "u]\x1b[5m")
ROOT_SHOWN = "imgs[/u]\\x1b[5m"
HOME = ("home[", "x]\x1b[0m")
HOME_SHOWN = "home[/x]\\x1b[0m"


def raw_controls(text: str) -> list[str]:
    """The characters in ``text`` that a terminal would not show as themselves (a newline ends a line)."""
    return sorted({c for c in text if not c.isprintable() and c != "\n"})


def assert_clean(result) -> None:
    """No traceback, and nothing non-printable reached stdout or stderr."""
    assert "Traceback" not in result.output and "MarkupError" not in result.output
    assert raw_controls(result.stdout) == [] and raw_controls(result.stderr) == []


def place(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except (OSError, ValueError) as exc:
        pytest.skip(f"this filesystem refuses the name {str(path)!r}: {exc}")


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wide terminal, so that no table cell wraps a name across lines (``_width``: what ``width=`` sets)."""
    monkeypatch.setattr(render.out, "_width", 400)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """15 labelled images plus the hostile names above, under a hostile root."""
    root = tmp_path.joinpath(*ROOT)
    write_folder(root)
    blob = (root / "blob" / "0.png").read_bytes()
    for name in IMAGES:
        place(root / name, blob)
    own = Image.fromarray(pattern("dots", np.random.default_rng(7)))
    own_path = root / LABEL / "0.png"
    place(own_path, b"")
    own.save(own_path)
    for name in NOT_IMAGES:
        place(root / name, b"not an image")
    return root


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path.joinpath(*HOME)


def index(root: Path, home: Path):
    result = invoke("index", root, "--home", home, "--model", "pixels", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return result


def test_index_lists_skipped_files_by_their_names(root: Path, home: Path, wide: None) -> None:
    result = index(root, home)
    assert_clean(result)
    assert f"Collection {home.parent.parent}/{HOME_SHOWN}/default" in result.stdout
    for shown in NOT_IMAGES.values():
        assert f"│ {shown} " in result.stdout
    again = index(root, home)  # a re-run lists them again
    assert_clean(again)
    assert all(f"│ {shown} " in again.stdout for shown in NOT_IMAGES.values())


def test_query_shows_paths_labels_and_titles_as_text(
    root: Path, home: Path, wide: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    index(root, home)
    monkeypatch.chdir(root)
    result = invoke("query", *IMAGES, "-k", "30", "--home", home)
    assert result.exit_code == 0, result.output
    assert_clean(result)
    for shown in IMAGES.values():
        assert f"{shown} — vote: blob (" in result.stdout  # the table's title: the query path
        assert f"│ {shown} " in result.stdout  # a neighbour row
    assert f"│ {LABEL_SHOWN} " in result.stdout and "│ blob/L0[ " in result.stdout  # label cells
    own = invoke("query", f"{LABEL}/0.png", "-k", "1", "--home", home)
    assert own.exit_code == 0, own.output
    assert_clean(own)
    assert f"{LABEL_SHOWN}/0.png — vote: {LABEL_SHOWN} (1/1)" in own.stdout


def test_query_json_keeps_the_exact_names(root: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index(root, home)
    monkeypatch.chdir(root)
    result = invoke("query", *IMAGES, f"{LABEL}/0.png", "-k", "30", "--json", "--home", home)
    assert result.exit_code == 0, result.output
    assert_clean(result)  # JSON escapes what it holds: \u001b, \u009b, \u202e …
    data = json.loads(result.stdout)
    assert [d["query"] for d in data] == [*IMAGES, f"{LABEL}/0.png"]
    paths = {n["path"] for d in data for n in d["neighbours"]}
    assert {*IMAGES, f"{LABEL}/0.png"} <= paths
    assert data[-1]["neighbours"][0]["label"] == LABEL


def test_info_lists_skipped_files_and_sources_as_text(root: Path, home: Path, image_folder: Path, wide: None) -> None:
    index(root, home)
    index(image_folder, home)  # a second source: one per line
    result = invoke("info", "--home", home, "--skipped")
    assert result.exit_code == 0, result.output
    assert_clean(result)
    lines = result.stdout.splitlines()
    at = next(n for n, line in enumerate(lines) if "│ sources " in line)
    sources = sorted(line.split("│")[2].strip() for line in lines[at : at + 2])
    assert sources == sorted([f"{root.parent.parent}/{ROOT_SHOWN}", str(image_folder)])
    for shown in NOT_IMAGES.values():
        assert f"│ {shown} " in result.stdout
    data = json.loads(invoke("info", "--home", home, "--json").stdout)
    assert sorted(data["roots"]) == sorted([str(root), str(image_folder)]) and data["skipped"] == len(NOT_IMAGES)


def test_error_and_skipped_lines_show_names_escaped(root: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index(root, home)
    monkeypatch.chdir(root)
    for name, shown in NOT_IMAGES.items():
        result = invoke("query", name, "--home", home)
        assert result.exit_code == 1
        assert_clean(result)
        assert result.stderr.splitlines() == [f"Error: {shown}: not an image: its content is no known image format"]
    folder = invoke("query", "hbars", "-k", "1", "--home", home)
    assert folder.exit_code == 0, folder.output
    assert_clean(folder)
    skipped = sorted(line.split(": not an image")[0] for line in folder.stderr.splitlines())
    assert skipped == sorted(f"Skipped {s}" for s in NOT_IMAGES.values())


def test_verify_shows_names_as_text(
    root: Path, home: Path, pixels_model: Path, wide: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(root)
    (a, a_shown), (b, b_shown) = list(IMAGES.items())[4:6]
    result = invoke("verify", a, b, "--model", pixels_model)
    assert result.exit_code == 0, result.output
    assert_clean(result)
    assert result.stdout.startswith(f"MATCH: {a_shown} ↔ {b_shown}\n")
    data = json.loads(invoke("verify", a, b, "--model", pixels_model, "--json").stdout)
    assert (data["a"], data["b"]) == (a, b)
    names = [n for n in IMAGES if "\n" not in n]  # the pairs file is read line by line
    with open("pairs.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["a", "b", "label"])
        writer.writerows([name, names[(n + 1) % len(names)], 1] for n, name in enumerate(names))
    pairs = invoke("verify", "--pairs", "pairs.csv", "--model", pixels_model)
    assert pairs.exit_code == 0, pairs.output
    assert_clean(pairs)
    for name in names:
        assert f"│ {IMAGES[name]} " in pairs.stdout


def test_eval_shows_the_folder_and_the_model_as_text(
    root: Path, pixels_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model[" / "i]\x1b]0;m\x07"
    shutil.copytree(pixels_model, model)
    monkeypatch.chdir(tmp_path)
    folder = Path(*ROOT)
    result = invoke("eval", folder, "--model", model.relative_to(tmp_path), "--no-baselines", "--bootstrap", "10")
    assert result.exit_code == 0, result.output
    assert_clean(result)
    assert result.stdout.startswith(f"{ROOT_SHOWN}: ")
    assert "Encoder: model model[/i]\\x1b]0;m\\x07." in result.stdout
    data = json.loads(invoke("eval", folder, "--model", model, "--no-baselines", "--bootstrap", "10", "--json").stdout)
    assert data["folder"] == str(folder) and data["source"] == f"model {model}"


def test_progress_notes_are_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """The progress bar (shown only on a terminal) renders its own columns: notes are text there too."""
    import io

    from rich.console import Console

    screen = io.StringIO()
    monkeypatch.setenv("SIMSEARCH_PROGRESS", "auto")
    monkeypatch.setattr(render, "err", Console(file=screen, force_terminal=True, color_system=None, width=200))
    with render._RichProgress() as progress:
        progress("reading [/bold]", 1, 2, "blob/L0[/bold].png \x1b]0;pwned\x07 [bold red]x")
    shown = screen.getvalue()
    assert "reading [/bold]" in shown
    assert "blob/L0[/bold].png \\x1b]0;pwned\\x07 [bold red]x" in shown
    assert "\x1b]0;pwned" not in shown and "\x07" not in shown


# Ctrl-C and SIGTERM: exit 130 or 143 and one line that says what is left, true for each command.

KEPT = "work committed so far is kept; run the same command again to resume."
UNCHANGED = "stopped before it finished and nothing was changed; run the same command again for its results."


def interrupt(*_: object, **__: object) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("command", "target", "said"),
    [
        ("index", "simsearch.indexing.index_folder", f"Interrupted: {KEPT}"),
        ("demo", "simsearch.demo.run_demo", f"Interrupted: {KEPT}"),
        ("query", "simsearch.search.expand_query_paths", f"Interrupted: query {UNCHANGED}"),
        ("info", "simsearch.collection.Collection.inspect", f"Interrupted: info {UNCHANGED}"),
        ("verify", "simsearch.verification.load_encoder", f"Interrupted: verify {UNCHANGED}"),
        ("eval", "simsearch.evaluation.evaluate", f"Interrupted: eval {UNCHANGED}"),
    ],
)
def test_ctrl_c_says_what_each_command_leaves(
    command: str,
    target: str,
    said: str,
    image_folder: Path,
    pixels_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmp_path / "home"
    if command in ("index", "query", "info"):
        index(image_folder, home)
    monkeypatch.setattr(target, interrupt)
    args = {
        "index": ["index", image_folder, "--home", home],
        "demo": ["demo", "--dir", tmp_path / "demo", "--home", home, "--device", "cpu"],
        "query": ["query", image_folder / "blob" / "0.png", "--home", home],
        "info": ["info", "--home", home],
        "verify": ["verify", image_folder / "blob" / "0.png", image_folder / "blob" / "1.png", "--model", pixels_model],
        "eval": ["eval", image_folder, "--model", pixels_model, "--no-baselines"],
    }[command]
    result = invoke(*args)
    assert result.exit_code == 130
    assert result.stderr.splitlines() == [said]


def test_ctrl_c_in_train_says_nothing_was_saved(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("simsearch.training.train_on_folder", interrupt)
    model = tmp_path / "models" / "m"
    result = invoke("train", image_folder, "--out", model, "--device", "cpu")
    assert result.exit_code == 130
    assert result.stderr.splitlines() == [
        f"Interrupted: training stopped and nothing was saved ({model} is as it was); run the same command again to train."
    ]
    assert not (tmp_path / "models").exists()


def test_ctrl_c_after_train_saved_says_where(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the summary prints, after the model folder was written: the line says it was saved."""
    monkeypatch.setattr(cli_train, "_describe_training", interrupt)
    model = tmp_path / "m"
    result = invoke("train", image_folder, "--out", model, "--family", "pca", "--dim", "4", "--device", "cpu")
    assert result.exit_code == 130
    assert result.stderr.splitlines() == [
        f"Interrupted: the model was already saved to {model}; only the summary was cut short."
    ]
    assert (model / "encoder.json").is_file()


def test_ctrl_c_while_eval_writes_its_report_says_so(
    image_folder: Path, pixels_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("simsearch.evaluation.report.write_report", interrupt)
    report = tmp_path / "report"
    result = invoke(
        "eval", image_folder, "--model", pixels_model, "--no-baselines", "--bootstrap", "10", "--report", report
    )
    assert result.exit_code == 130
    assert result.stderr.splitlines() == [
        f"Interrupted: the report in {report} may be incomplete; run the same command again to write it whole."
    ]


def test_terminated_inside_a_command_exits_143(
    image_folder: Path, pixels_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def terminate(*_: object, **__: object) -> None:
        raise cli_core.Terminated

    monkeypatch.setattr("simsearch.evaluation.evaluate", terminate)
    result = invoke("eval", image_folder, "--model", pixels_model, "--no-baselines")
    assert result.exit_code == 143
    assert result.stderr.splitlines() == [f"Terminated: eval {UNCHANGED}"]


def test_sigterm_stops_training_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    """A real ``simsearch train`` process gets SIGTERM once it is training: it exits 143 with the train line,
    no traceback, and no model folder (nor any temporary one) exists."""
    images = tmp_path / "images"
    write_folder(images, per_class=8)
    model = tmp_path / "models" / "m"
    log = tmp_path / "stderr.txt"
    # TTY_COMPATIBLE (FORCE_COLOR for older rich): the progress bar is drawn into the log, which shows when
    # training has begun.
    env = {**os.environ, "TTY_COMPATIBLE": "1", "FORCE_COLOR": "1", "COLUMNS": "200", "SIMSEARCH_PROGRESS": "auto"}
    args = ["train", str(images), "--family", "autoencoder", "--epochs", "100000", "--patience", "100000"]
    args += ["--max-seconds", "120", "--dim", "8", "--device", "cpu", "--out", str(model)]
    with open(log, "w") as stderr:
        proc = subprocess.Popen([SIMSEARCH, *args], stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    try:
        deadline = time.monotonic() + 90
        while "training autoencoder" not in log.read_text() or "loss" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "training did not start within 90 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert proc.returncode == 143, text
    assert "Traceback" not in text
    assert (
        f"Terminated: training stopped and nothing was saved ({model} is as it was); run the same command again to train."
        in text
    )
    assert stdout == ""
    assert not (tmp_path / "models").exists()
