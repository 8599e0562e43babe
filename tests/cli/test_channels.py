"""One channel rule for every command that fits images to an existing model: a colour image for a grey model is
converted with one ``Note:`` line by default, and refused with the same ``Error:`` words under ``--channels strict``
— ``query``, ``verify``, ``index`` into a collection, ``eval`` (its library path), and the service's uploads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import error_lines, invoke

NOTE = (
    "Note: 1 colour image was converted to grey (by luminance) for a grey model; --channels strict refuses such "
    "images instead."
)
WHAT = "a colour image, but the model takes grey images (1 channel)"
REMEDY = "pass --channels convert to convert it to grey by luminance, or use a model trained on colour images"


@pytest.fixture
def setup(tmp_path: Path, image_folder: Path, pixels_model: Path) -> tuple[Path, Path, Path, Path]:
    """(home with the grey pixels collection ``default`` of ``image_folder``, the model folder, a folder holding
    one colour image, that image)."""
    home = tmp_path / "home"
    assert invoke("index", image_folder, "--home", home, "--model", pixels_model, "--workers", "1").exit_code == 0
    colour = tmp_path / "colour" / "hbars" / "c.png"
    colour.parent.mkdir(parents=True)
    rgb = np.stack([np.asarray(Image.open(image_folder / "hbars" / "0.png"))] * 3, axis=-1)
    rgb[::3, :, 0] = 255  # red stripes: colour
    Image.fromarray(rgb).save(colour)
    return home, pixels_model, tmp_path / "colour", colour


def test_every_command_converts_by_default_with_one_note(setup: tuple[Path, Path, Path, Path]) -> None:
    home, model, folder, colour = setup
    good = next(Path(folder.parent / "images" / "hbars").glob("*.png"))
    query = invoke("query", colour, "-k", "2", "--home", home)
    verify = invoke("verify", colour, good, "-m", model)
    index = invoke("index", folder, "--home", home)
    for result in (query, verify, index):
        assert result.exit_code in (0, 1), result.output  # verify: 1 is "no match"
        assert error_lines(result) == [NOTE], result.output
    assert "vote: hbars" in query.stdout
    assert "│ added                │ 1" in index.stdout
    data = json.loads(invoke("verify", colour, good, "-m", model, "--json").stdout)
    assert data["channels"] == {"rule": "convert", "converted_to_grey": 1, "converted_to_colour": 0, "refused": 0}


def test_strict_refuses_with_the_same_words_everywhere(setup: tuple[Path, Path, Path, Path]) -> None:
    home, model, folder, colour = setup
    good = next(Path(folder.parent / "images" / "hbars").glob("*.png"))
    line = f"{colour}: {WHAT} — {REMEDY}"
    query = invoke("query", colour, "--channels", "strict", "--home", home)
    assert (query.exit_code, error_lines(query)) == (1, [f"Error: {line}"])
    verify = invoke("verify", colour, good, "-m", model, "--channels", "strict")
    assert (verify.exit_code, error_lines(verify)) == (2, [f"Error: {line}"])
    # index lists the file as skipped, with what is wrong; one note says how many, with the remedy.
    index = invoke("index", folder, "--home", home, "--channels", "strict")
    assert index.exit_code == 0, index.output
    assert f"│ hbars/c.png  │ {WHAT} │" in index.stdout
    assert error_lines(index) == [
        "Note: 1 image whose colour differs from the model's was refused (--channels strict); --channels convert "
        "converts such images instead."
    ]
    from simsearch.store.collection import Collection

    assert [(r["path"], r["reason"]) for r in Collection(home / "default").load().skipped.to_pylist()] == [
        ("hbars/c.png", WHAT)
    ]
    fatal = invoke("index", folder, "--home", home, "--channels", "strict", "--strict")
    assert (fatal.exit_code, error_lines(fatal)) == (
        1,
        [f"Error: {colour}: {WHAT} — pass --channels convert to convert such images, or drop --strict to skip them"],
    )
    bad = invoke("query", colour, "--channels", "grey", "--home", home)
    assert (bad.exit_code, error_lines(bad)) == (2, ["Error: --channels must be convert or strict, not 'grey'"])


def test_a_query_folder_lists_a_refused_image_as_skipped(setup: tuple[Path, Path, Path, Path]) -> None:
    home, _, folder, colour = setup
    shutil.copy(folder.parent / "images" / "hbars" / "0.png", colour.parent / "0.png")
    result = invoke("query", folder, "-k", "1", "--channels", "strict", "--home", home)
    assert result.exit_code == 0, result.output
    assert error_lines(result) == [f"Skipped {colour}: {WHAT} — {REMEDY}"]


def test_an_encoder_trained_on_the_folder_takes_its_channels_from_it(tmp_path: Path, image_folder: Path) -> None:
    """A folder of grey and colour images gets a colour model: its grey images are its data, not a mismatch."""
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[::4, :, 2] = 255
    Image.fromarray(rgb).save(image_folder / "blob" / "colour.png")
    result = invoke("index", image_folder, "--home", tmp_path / "h", "--model", "pixels", "--channels", "strict")
    assert result.exit_code == 0 and error_lines(result) == [], result.output
    assert "input 3×16×16" in result.stdout and "skipped              │ 0" in result.stdout


def test_eval_follows_the_rule_of_its_scope(setup: tuple[Path, Path, Path, Path], image_folder: Path) -> None:
    """``eval`` embeds through the same library path: a front end's ``channel_rule`` applies to it whole."""
    from simsearch.evaluation import EvalConfig, evaluate
    from simsearch.io import channel_rule
    from simsearch.models.encoder import Encoder

    _, model, _, colour = setup
    shutil.copy(colour, image_folder / "hbars" / "c.png")
    encoder = Encoder.load(model)
    config = EvalConfig(k=3, bootstrap=10, workers=1)
    with channel_rule() as tally:
        converted = evaluate(image_folder, encoder, config)
    assert converted.images == 16 and tally.to_grey == 1  # counted once, though the baselines read it again
    with channel_rule("strict") as tally:
        refused = evaluate(image_folder, encoder, config)
    assert refused.images == 15 and tally.refused == 1
    assert [s.rel for s in refused.skipped if WHAT in s.reason] == ["hbars/c.png"]


def test_the_service_uploads_follow_the_rule(setup: tuple[Path, Path, Path, Path]) -> None:
    from fastapi.testclient import TestClient

    from simsearch.service import create_app

    home, model, _, colour = setup
    good = next(Path(colour.parents[2] / "images" / "hbars").glob("*.png"))

    def files(*pairs: tuple[str, Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
        return [(field, (path.name, path.read_bytes(), "image/png")) for field, path in pairs]

    app = create_app(home, models=[model], device="cpu", use_gpu=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        verify = client.post("/verify?model=model&threshold=5", files=files(("a", colour), ("b", good)))
        assert verify.status_code == 200 and verify.json()["channels"]["converted_to_grey"] == 1
        embed = client.post("/collections/default/embed", files=files(("file", colour), ("file", good))).json()
        assert [e["converted"] for e in embed["embeddings"]] == [True, False]
        for url, upload in (
            ("/verify?model=model&threshold=5&channels=strict", files(("a", colour), ("b", good))),
            ("/verify?model=model&threshold=5&convert=false", files(("a", colour), ("b", good))),
            ("/collections/default/embed?channels=strict", files(("file", colour))),
            ("/collections/default/query?channels=strict", files(("file", colour))),
        ):
            refused = client.post(url, files=upload)
            assert refused.status_code == 415, (url, refused.text)
            assert refused.json() == {
                "error": f"c.png: {WHAT}",
                "remedy": "pass channels=convert to convert it to grey by luminance, or use a model trained on colour "
                "images",
            }
        assert client.post("/collections/default/query?channels=grey", files=files(("file", colour))).status_code == 422


def test_eval_and_the_latent_commands_take_the_same_option(
    setup: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    """``eval``, ``map`` and ``anomalies`` (and ``reconstruct``, ``interpolate``, ``denoise``, ``stability``, which
    read images the same way) print the same note, and refuse with the same words under ``--channels strict``."""
    home, model, folder, colour = setup
    images = folder.parent / "images"
    shutil.copy(images / "hbars" / "1.png", colour.parent / "h.png")
    (folder / "vbars").mkdir()
    for n in ("0", "1"):
        shutil.copy(images / "vbars" / f"{n}.png", folder / "vbars" / f"{n}.png")
    runs = {
        "eval": ("eval", folder, "-m", model, "-k", "1", "--no-baselines", "--bootstrap", "10"),
        "map": ("map", folder, "--model", model, "--method", "pca", "--out", tmp_path / "map"),
        "anomalies": ("anomalies", folder, "--name", "default", "--home", home, "--by", "knn", "-k", "1"),
    }
    for command, args in runs.items():
        result = invoke(*args)
        assert result.exit_code == 0, (command, result.output)
        assert NOTE in error_lines(result), (command, result.output)
    shutil.rmtree(tmp_path / "map")
    for command, args in runs.items():
        result = invoke(*args, "--channels", "strict")
        assert not any(line.startswith("Note: 1 colour") for line in error_lines(result)), (command, result.output)
        assert WHAT in result.output, (command, result.output)
    for command in ("reconstruct", "interpolate", "denoise", "stability", "eval", "map", "anomalies"):
        assert "--channels" in invoke(command, "--help").stdout, command
