"""The family registry: the one list of families that training, model folders, the command line's help and the
README read, and what adding a family takes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from torch import nn
from typer.testing import CliRunner

from simsearch.cli import app
from simsearch.cli.options import cli_spelling
from simsearch.errors import ModelError, UsageError, spell
from simsearch.models.registry import REGISTRY, Family, family_names, get_family
from simsearch.training import NEURAL, TRAINABLE, TrainConfig

README = Path(__file__).resolve().parents[2] / "README.md"


def family_table(text: str) -> list[list[str]]:
    """The cells of the first table under the README's "### `simsearch train IMAGES`" heading."""
    section = text.split("### `simsearch train IMAGES`", 1)[1].split("\n### ", 1)[0]
    lines = [line.strip() for line in section.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_readme_family_table_is_the_registry() -> None:
    """One row per registered family, in the registry's order: its name, its description (the README may set
    option names in `code`), and whether it needs labels (``yes …`` or ``no``)."""
    header, rule, *rows = family_table(README.read_text(encoding="utf-8"))
    assert header == ["family", "what it learns", "needs labels"]
    assert all(set(cell) <= {"-", ":"} for cell in rule)
    assert [row[0] for row in rows] == [f"`{name}`" for name in family_names()]
    for (name, description, labels), family in zip(rows, REGISTRY.values(), strict=True):
        assert description.replace("`", "") == spell(family.description, cli_spelling), name
        assert labels.split()[0] == ("yes" if family.needs_labels else "no"), name


def test_every_record_resolves_and_describes_itself_on_one_line() -> None:
    from simsearch.training.objectives import OBJECTIVES

    for family in REGISTRY.values():
        assert issubclass(family.encoder_class, nn.Module)
        if family.decoder is not None:
            assert issubclass(family.decoder_class, nn.Module) and callable(family.decoder_class.mirroring)
        assert family.objective is None or family.objective in OBJECTIVES, family.name
        # one line, and none of the characters that --help and the README table separate families or cells with
        assert family.description and not re.search(r"[\n;|]", family.description), family.name
    assert TRAINABLE == family_names() == tuple(REGISTRY)
    assert NEURAL == ("autoencoder", "denoising", "vae", "siamese")
    assert {name for name in REGISTRY if REGISTRY[name].decoder} == {"autoencoder", "denoising", "vae"}
    with pytest.raises(ValueError, match="unknown family 'gan'; known: autoencoder, denoising, vae, siamese"):
        get_family("gan")
    with pytest.raises(ValueError, match="registered already"):
        from simsearch.models.registry import register

        register(REGISTRY["pca"])


def test_what_lists_families_reads_the_registry(tmp_path: Path) -> None:
    import simsearch.models
    from simsearch.cli.train import FAMILY_HELP
    from simsearch.models.encoder import Encoder

    names = ", ".join(REGISTRY)
    with pytest.raises(UsageError, match=f"use one of: {names}"):
        TrainConfig(family="gan")
    assert family_names() == simsearch.models.FAMILIES
    assert simsearch.models.ENCODER_CLASSES["pca"] is REGISTRY["pca"].encoder_class
    with pytest.raises(ModelError, match=f"or one of: {names}"):
        Encoder.load(tmp_path)
    for family in REGISTRY.values():
        assert f"{family.name}: {spell(family.description, cli_spelling)}" in FAMILY_HELP
    for command in ("train", "index"):
        output = CliRunner().invoke(app, [command, "--help"], terminal_width=200).output
        assert all(name in output for name in REGISTRY), (command, output)


HELP_IMPORTS = """
import sys
from typer.testing import CliRunner
from simsearch.cli import app
for args in (["train", "--help"], ["index", "--help"]):
    assert CliRunner().invoke(app, args).exit_code == 0
import simsearch.models.registry
print(",".join(sorted(m for m in ("torch", "faiss", "numpy") if m in sys.modules)))
"""


def test_listing_the_families_imports_no_torch() -> None:
    done = subprocess.run([sys.executable, "-c", HELP_IMPORTS], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_a_family_is_one_record(
    image_folder: Path, tmp_path: Path, fast_train: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new family made of parts that exist (here: the convolutional autoencoder trained to denoise, with labels
    read by a contrastive term) is one record: training, saving, loading and its decoder all follow from it."""
    from simsearch.models.encoder import Encoder
    from simsearch.training import train_on_folder

    record = Family(
        "sketch",
        "a test family",
        encoder="autoencoder:ConvEncoder",
        decoder="autoencoder:ConvDecoder",
        objective="denoising",
    )
    monkeypatch.setitem(REGISTRY, "sketch", record)
    with pytest.raises(UsageError, match=r"use one of: .*, sketch"):
        TrainConfig(family="nope")
    encoder = train_on_folder(image_folder, replace(fast_train, family="sketch", epochs=2))
    assert encoder.family == "sketch" and encoder.decoder is not None and len(encoder.history) == 2
    encoder.save(tmp_path / "m")
    loaded = Encoder.load(tmp_path / "m")
    x = np.random.default_rng(0).normal(size=(2, 1, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(loaded.embed(x), encoder.embed(x))
    np.testing.assert_array_equal(loaded.decode(loaded.embed(x)), encoder.decode(encoder.embed(x)))
    assert json.loads((tmp_path / "m" / "encoder.json").read_text())["family"] == "sketch"
    monkeypatch.delitem(REGISTRY, "sketch")
    with pytest.raises(ModelError, match="unknown family 'sketch'"):
        Encoder.load(tmp_path / "m")
