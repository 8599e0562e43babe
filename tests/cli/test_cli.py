"""The command line: output, exit codes and error lines, through CliRunner and the installed command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers import error_lines, invoke

runner = CliRunner()
SIMSEARCH = shutil.which("simsearch", path=str(Path(sys.executable).parent)) or "simsearch"


@pytest.fixture
def indexed(image_folder: Path, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    result = invoke("index", image_folder, "--home", home, "--model", "pixels", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return home


def test_index_then_query_prints_a_table(indexed: Path, image_folder: Path) -> None:
    result = invoke("query", image_folder / "vbars" / "2.png", "-k", "3", "--home", indexed)
    assert result.exit_code == 0, result.output
    assert "vote: vbars (3/3)" in result.output
    assert "vbars/2.png" in result.output and "0.0000" in result.output


def test_index_reports_counts_and_rerun_says_nothing_to_embed(indexed: Path, image_folder: Path) -> None:
    again = invoke("index", image_folder, "--home", indexed)
    assert again.exit_code == 0, again.output
    assert "Nothing to embed: all 15 images are unchanged." in again.output


def test_query_json_for_several_images(indexed: Path, image_folder: Path) -> None:
    queries = [image_folder / "hbars" / "0.png", image_folder / "blob" / "4.png"]
    result = invoke("query", *queries, "-k", "20", "--json", "--home", indexed)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [d["query"] for d in data] == [str(q) for q in queries]
    assert [d["vote"] for d in data] == ["hbars", "blob"]
    for d in data:
        assert len(d["neighbours"]) == 15  # min(k, n)
        assert d["neighbours"][0]["distance"] == 0.0
        assert set(d["neighbours"][0]) == {"rank", "id", "distance", "path", "root", "label"}
    # --float16 (a GPU placement) gives the same answers wherever the search runs: exact distances either way.
    half = invoke("query", *queries, "-k", "20", "--json", "--float16", "--home", indexed)
    assert half.exit_code == 0, half.output
    assert json.loads(half.stdout) == data


def test_info(indexed: Path, image_folder: Path) -> None:
    (image_folder / "bad.png").write_text("nope")
    invoke("index", image_folder, "--home", indexed)
    result = invoke("info", "--home", indexed, "--skipped")
    assert result.exit_code == 0
    assert "pixels" in result.output and "bad.png" in result.output
    data = json.loads(invoke("info", "--home", indexed, "--json").stdout)
    assert data["count"] == 15 and data["skipped"] == 1 and data["metric"] == "l2"


def test_query_against_missing_collection_is_one_error_line(tmp_path: Path, image_folder: Path) -> None:
    result = invoke("query", image_folder / "blob" / "0.png", "--home", tmp_path / "none")
    assert result.exit_code == 1
    lines = error_lines(result)
    assert (
        len(lines) == 1
        and lines[0].startswith("Error: no collection at")
        and "index a folder into it first" in lines[0]
    )


def test_query_of_missing_file_is_one_error_line(indexed: Path, tmp_path: Path) -> None:
    result = invoke("query", tmp_path / "ghost.png", "--home", indexed)
    assert result.exit_code == 1
    lines = error_lines(result)
    assert len(lines) == 1 and "ghost.png: no such image file" in lines[0]


def test_query_of_undecodable_file_is_one_error_line(indexed: Path, tmp_path: Path) -> None:
    (tmp_path / "fake.png").write_text("text")
    result = invoke("query", tmp_path / "fake.png", "--home", indexed)
    assert result.exit_code == 1
    assert error_lines(result) == [
        f"Error: {tmp_path / 'fake.png'}: not an image: its content is no known image format"
    ]


def test_bad_usage_exits_2(indexed: Path, image_folder: Path) -> None:
    assert invoke("query", image_folder / "blob" / "0.png", "-k", "0", "--home", indexed).exit_code == 2
    assert invoke("index").exit_code == 2
    result = invoke("train", image_folder, "--family", "gan")
    assert result.exit_code == 2 and "unknown family" in result.stderr
    result = invoke("train", image_folder, "--family", "siamese", "--class-augment", "rot3")
    assert result.exit_code == 2 and "--class-augment must be auto or one of none, rot4, rot4flip" in result.stderr


def test_train_writes_a_model_folder_that_index_uses(image_folder: Path, tmp_path: Path) -> None:
    model = tmp_path / "models" / "m"
    result = invoke(
        "train", image_folder, "--out", model, "--epochs", "2", "--dim", "8", "--device", "cpu", "--max-seconds", "20"
    )
    assert result.exit_code == 0, result.output
    assert (model / "encoder.json").is_file() and (model / "weights.safetensors").is_file()
    assert (model / "history.jsonl").read_text().count("\n") == 2
    home = tmp_path / "home"
    result = invoke("index", image_folder, "--model", model, "--home", home, "--name", "m")
    assert result.exit_code == 0, result.output
    info = json.loads(invoke("info", "--home", home, "--name", "m", "--json").stdout)
    assert info["dim"] == 8 and info["encoder"]["family"] == "autoencoder"


HELP_IMPORTS = """
import sys
from typer.testing import CliRunner
from simsearch.cli import app
for args in (["--help"], ["query", "--help"], ["index", "--help"], ["serve", "--help"]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
heavy = sorted(m for m in ("torch", "faiss", "numpy", "pyarrow", "PIL", "fastapi", "uvicorn", "ray") if m in sys.modules)
print(",".join(heavy))
"""


def test_help_imports_neither_torch_nor_faiss_nor_the_web_stack() -> None:
    done = subprocess.run([sys.executable, "-c", HELP_IMPORTS], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_installed_command_end_to_end(image_folder: Path, tmp_path: Path) -> None:
    env = {**os.environ, "SIMSEARCH_HOME": str(tmp_path / "h")}
    first = subprocess.run(
        [SIMSEARCH, "index", str(image_folder), "--model", "pixels"], capture_output=True, text=True, env=env
    )
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""  # no progress bars when stderr is not a terminal
    query = subprocess.run(
        [SIMSEARCH, "query", str(image_folder / "hbars" / "3.png"), "-k", "2", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert query.returncode == 0, query.stderr
    assert json.loads(query.stdout)[0]["neighbours"][0]["path"] == "hbars/3.png"
    missing = subprocess.run([SIMSEARCH, "info", "--name", "nothing"], capture_output=True, text=True, env=env)
    assert missing.returncode == 1 and missing.stderr.startswith("Error: no collection at")
    assert "Traceback" not in missing.stderr
    module = subprocess.run([sys.executable, "-m", "simsearch", "--version"], capture_output=True, text=True)
    assert module.returncode == 0 and module.stdout.startswith("simsearch ")


ENTRY = """
import atexit, sys, threading, time
from pathlib import Path
from simsearch.cli import entry

marks = Path(sys.argv[1])


class Torn:  # its __del__ runs only when the interpreter is torn down module by module
    def __del__(self):
        print("torn down", file=sys.stderr, flush=True)


torn = Torn()
atexit.register(lambda: (marks / "atexit").write_text("ran"))
if sys.argv[2] == "thread":
    def late():
        time.sleep(0.5)
        (marks / "thread").write_text("done")
    threading.Thread(target=late).start()
sys.argv = ["simsearch", *sys.argv[3:]]
entry()
print("entry returned", file=sys.stderr)
"""


@pytest.mark.parametrize("thread", [False, True])
def test_entry_ends_the_process_at_once_after_the_exit_work(tmp_path: Path, thread: bool) -> None:
    """The executable ends without tearing the interpreter down (unloading torch took 0.9 s of a query), but only
    once what a normal exit does that matters is done: atexit handlers run, output flushed, the exit status kept.
    With another thread still running it waits for it and takes the normal exit."""

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        for mark in tmp_path.glob("*"):
            mark.unlink()
        what = "thread" if thread else "plain"
        return subprocess.run([sys.executable, "-c", ENTRY, str(tmp_path), what, *argv], capture_output=True, text=True)

    ok = run("--version")
    assert ok.returncode == 0 and ok.stdout.startswith("simsearch "), ok.stderr
    assert (tmp_path / "atexit").read_text() == "ran"
    assert "entry returned" not in ok.stderr
    assert ("torn down" in ok.stderr) is thread  # the normal exit only when a thread had to be waited for
    assert (tmp_path / "thread").exists() is thread
    failed = run("info", "--name", "nothing", "--home", str(tmp_path / "home"))
    assert failed.returncode == 1 and failed.stderr.startswith("Error: no collection at"), failed.stderr
    assert (tmp_path / "atexit").read_text() == "ran"
    assert "entry returned" not in failed.stderr


def test_demo_runs_the_whole_flow(tmp_path: Path) -> None:
    done = subprocess.run(
        [SIMSEARCH, "demo", "--dir", "d", "--home", "h", "--max-seconds", "8", "--device", "cpu"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "held-out vote accuracy" in done.stdout
    rows = {line.split("│")[1].strip(): line for line in done.stdout.splitlines() if line.count("│") >= 4}
    assert "autoencoder" in rows and "pixels" in rows
    for family in ("autoencoder", "pixels"):
        accuracy = float(rows[family].split("│")[2])
        assert 0.8 < accuracy <= 1.0, done.stdout
    assert len(list((tmp_path / "d" / "queries").rglob("*.png"))) == 179


def test_train_siamese_reports_its_calibrated_threshold(tmp_path: Path) -> None:
    from tests.conftest import write_folder

    write_folder(tmp_path / "imgs", per_class=8)
    model = tmp_path / "sig"
    result = invoke(
        "train", tmp_path / "imgs", "--family", "siamese", "--loss", "triplet", "--out", model,
        "--epochs", "2", "--dim", "8", "--device", "cpu", "--batch-size", "12", "--class-augment", "rot4",
        "--resize", "trim", "--ema", "0.9", "--projection", "16", "--similar-labels", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Trained a siamese encoder" in result.output and "Verification threshold" in result.output
    stored = json.loads((model / "encoder.json").read_text())
    assert stored["family"] == "siamese" and stored["threshold"]["operating_point"] == "eer"
    assert stored["training"]["config"]["loss"] == "triplet"
    assert (
        stored["training"]["config"]["class_augment"] == "rot4" and stored["training"]["class_augment"]["labels"] == 12
    )


def test_train_rejects_unknown_loss_and_unlabelled_siamese(tmp_path: Path, image_folder: Path) -> None:
    result = invoke("train", image_folder, "--family", "siamese", "--loss", "hinge")
    assert result.exit_code == 2 and "unknown loss" in result.stderr
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted(image_folder.rglob("*.png")):
        (flat / f"{path.parent.name}-{path.name}").write_bytes(path.read_bytes())
    result = invoke("train", flat, "--family", "siamese", "--device", "cpu", "--out", tmp_path / "m")
    assert result.exit_code == 1
    assert error_lines(result) == [
        "Error: --family siamese with this loss needs labels: put each class in its own sub-folder "
        "(at least 2), or use --loss ntxent, which needs none"
    ]
    assert not (tmp_path / "m").exists()


def test_query_a_folder_batches_every_image_and_lists_unreadable_ones(indexed: Path, image_folder: Path) -> None:
    (image_folder / "blob" / "notes.txt").write_text("not an image")  # not named like an image: ignored
    (image_folder / "blob" / "fake.png").write_text("not an image")  # named like one: listed
    (image_folder / "blob" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    result = invoke(
        "query", image_folder / "blob", image_folder / "hbars" / "1.png", "-k", "2", "--json", "--home", indexed
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [Path(d["query"]).name for d in data] == ["0.png", "1.png", "2.png", "3.png", "4.png", "1.png"]
    assert [d["vote"] for d in data] == ["blob"] * 5 + ["hbars"]
    assert all(d["neighbours"][0]["distance"] == 0.0 for d in data)
    assert "Skipped" in result.stderr and "broken.png" in result.stderr
    assert "fake.png: not an image" in result.stderr and "notes.txt" not in result.stderr
    missing = invoke("query", image_folder / "nope", "--home", indexed)
    assert missing.exit_code == 1 and "no such image file or folder" in missing.output


QUERY_IMPORTS = """
import sys
from simsearch.cli import main
sys.argv = ["simsearch", "query", sys.argv[1], "-k", "2", "--home", sys.argv[2], "--json"]
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
heavy = ("pandas", "sklearn", "matplotlib", "pytorch_metric_learning", "scipy")
print(" ".join(m for m in heavy if m in sys.modules), file=sys.stderr)
"""


def test_query_imports_only_what_it_needs(indexed: Path, image_folder: Path) -> None:
    """A cold query pays for torch and faiss; pandas (which pyarrow's to_numpy would pull in whenever it is
    installed), scikit-learn, matplotlib and pytorch-metric-learning cost it nothing."""
    done = subprocess.run(
        [sys.executable, "-c", QUERY_IMPORTS, str(image_folder / "hbars" / "0.png"), str(indexed)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["vote"] == "hbars"
    assert done.stderr.strip() == ""


def test_eval_refuses_an_absurd_bootstrap_before_any_work(
    image_folder: Path, pixels_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--bootstrap 100000000`` would resample for hours: it is refused at once, with the allowed range."""
    from simsearch import evaluation
    from simsearch.cli import options as cli
    from simsearch.errors import UsageError

    def never(*_: object, **__: object) -> None:
        raise AssertionError("eval ran with a refused --bootstrap")

    monkeypatch.setattr("simsearch.evaluation.evaluate", never)
    for value, bound in (("100000000", "10000"), ("10001", "10000"), ("9", "10")):
        result = invoke("eval", image_folder, "--model", pixels_model, "--bootstrap", value)
        assert result.exit_code == 2, result.output
        error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(error) == 1 and "--bootstrap" in error[0] and bound in error[0], result.stderr
    for value in (9, 10_001, 100_000_000):  # the library's own check agrees with the command's
        with pytest.raises(UsageError, match=r"^bootstrap must be between 10 and 10,000 resamples, not "):
            evaluation.EvalConfig(bootstrap=value)
    assert evaluation.EvalConfig(bootstrap=10_000).bootstrap == evaluation.MAX_BOOTSTRAP == cli.MAX_BOOTSTRAP == 10_000
