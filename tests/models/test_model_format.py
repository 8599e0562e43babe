"""Model folder format 2: the decoder kept beside the encoder (``decoder.safetensors``, its architecture and sha256
in ``encoder.json``), format-1 folders made by the previous release, and decoder files that were damaged, tampered
with or written by a stranger (refused like bad weights: nothing allocated before the shapes fit, never unpickled).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from simsearch.errors import ModelError
from simsearch.io import Preprocess, find_images, load_images
from simsearch.models.autoencoder import ConvDecoder, ConvEncoder
from simsearch.models.encoder import MODEL_FILES, Encoder
from simsearch.models.registry import REGISTRY, build_decoder
from simsearch.training import TrainConfig
from tests.helpers import Payload, invoke

FORMAT1 = Path(__file__).parent / "fixtures" / "format1-autoencoder"
ARCH = {"channels": 1, "size": [16, 16], "dim": 4, "widths": [4, 8]}


def tiny_autoencoder(folder: Path, seed: int = 0) -> Path:
    """A small autoencoder model folder with its decoder (16×16 grey inputs, d=4)."""
    torch.manual_seed(seed)
    encoder = ConvEncoder(**ARCH)
    decoder = ConvDecoder.mirroring(encoder)
    spec = Preprocess(size=(16, 16), mean=(0.4,), std=(0.3,))
    Encoder("autoencoder", encoder.arch, spec, encoder, decoder=decoder).save(folder)
    return folder


def images_of(folder: Path, spec: Preprocess) -> np.ndarray:
    entries, _ = find_images(folder)
    return np.stack([item.array for item in load_images([e.path for e in entries], spec)])


def edit_config(model: Path, change: Callable[[dict[str, Any]], object]) -> None:
    path = model / "encoder.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def fix_decoder_hash(model: Path) -> None:
    """Make encoder.json vouch for whatever decoder.safetensors now holds (what a forger would do)."""
    digest = hashlib.sha256((model / "decoder.safetensors").read_bytes()).hexdigest()
    edit_config(model, lambda c: c["decoder"].update(sha256=digest))


# ----------------------------------------------------------------------------------------------------------------
# training keeps the decoder


@pytest.mark.parametrize("family", ["autoencoder", "denoising", "vae"])
def test_train_writes_a_decoder_that_reconstructs(image_folder: Path, tmp_path: Path, family: str) -> None:
    """``simsearch train --family F`` writes decoder.safetensors; decoding the embeddings of the training images
    gives images of the input shape, nearer the inputs than any of five randomly initialised decoders get."""
    model = tmp_path / "m"
    result = invoke(
        "train", image_folder, "--family", family, "--out", model, "--epochs", "15", "--patience", "15", "--dim", "8",
        "--batch-size", "8", "--device", "cpu", "--max-seconds", "120",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in model.iterdir()) == [
        "decoder.safetensors",
        "encoder.json",
        "history.jsonl",
        "reference.safetensors",
        "weights.safetensors",
    ]
    config = json.loads((model / "encoder.json").read_text())
    assert config["format"] == "simsearch.encoder/2"
    assert config["decoder"]["sha256"] == hashlib.sha256((model / "decoder.safetensors").read_bytes()).hexdigest()
    encoder = Encoder.load(model)
    assert isinstance(encoder.decoder, REGISTRY[family].decoder_class)
    assert (
        config["decoder"]["arch"]
        == encoder.decoder_arch
        == {"channels": 1, "size": [16, 16], "dim": 8, "widths": [32, 64]}
    )
    x = images_of(image_folder, encoder.preprocess)
    z = encoder.embed(x)
    decoded = encoder.decode(z)
    assert decoded.shape == x.shape and decoded.dtype == np.float32
    error = float(np.mean((decoded - x) ** 2))
    for seed in range(5):
        torch.manual_seed(seed)
        random = build_decoder(family, config["decoder"]["arch"]).eval()
        with torch.no_grad():
            baseline = float(np.mean((random(torch.from_numpy(z)).numpy() - x) ** 2))
        assert error < 0.9 * baseline, (family, seed, error, baseline)


def test_siamese_keeps_no_decoder(tmp_path: Path, fast_train: TrainConfig) -> None:
    from simsearch.training import train_on_folder
    from tests.conftest import write_folder

    write_folder(tmp_path / "imgs", per_class=6)
    encoder = train_on_folder(tmp_path / "imgs", replace(fast_train, family="siamese", epochs=1))
    assert encoder.decoder is None
    encoder.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "encoder.json").read_text())["decoder"] is None
    assert not (tmp_path / "m" / "decoder.safetensors").exists()
    with pytest.raises(ModelError, match="its family has none"):
        Encoder.load(tmp_path / "m").decode(np.zeros((1, 8), np.float32))


def test_decoder_round_trip_and_what_decode_checks(tmp_path: Path) -> None:
    model = tiny_autoencoder(tmp_path / "m")
    original = Encoder.load(model)
    z = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    decoded = original.decode(z, batch_size=2)
    assert decoded.shape == (5, 1, 16, 16)
    with torch.no_grad():  # batches of 2 and one of 5: the same images, to float rounding
        np.testing.assert_allclose(decoded, original.decoder(torch.from_numpy(z)).numpy(), rtol=1e-5, atol=1e-7)
    # Saving a loaded model writes the same files again: the decoder comes along, with the same bytes.
    original.save(tmp_path / "again")
    for name in ("weights.safetensors", "decoder.safetensors"):
        assert (tmp_path / "again" / name).read_bytes() == (model / name).read_bytes()
    np.testing.assert_array_equal(Encoder.load(tmp_path / "again").decode(z), original.decode(z))
    with pytest.raises(ModelError, match=r"decoder expects embeddings of shape \(n, 4\)"):
        original.decode(np.zeros((2, 5), np.float32))


def test_the_decoder_is_not_part_of_the_fingerprint(tmp_path: Path) -> None:
    """The fingerprint names the embeddings: a model saved with or without its decoder has the same one."""
    tiny_autoencoder(tmp_path / "m")
    encoder = Encoder.load(tmp_path / "m")
    bare = Encoder(encoder.family, encoder.arch, encoder.preprocess, encoder.module)
    assert bare.fingerprint == encoder.fingerprint


def test_replacing_a_model_folder_removes_the_old_decoder(tmp_path: Path) -> None:
    tiny_autoencoder(tmp_path / "m")
    assert "decoder.safetensors" in MODEL_FILES
    torch.manual_seed(0)
    module = ConvEncoder(**ARCH, normalize=True)
    Encoder("siamese", module.arch, Preprocess(size=(16, 16)), module).save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["encoder.json", "weights.safetensors"]
    assert Encoder.load(tmp_path / "m").family == "siamese"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_a_collection_copies_the_decoder(image_folder: Path, tmp_path: Path) -> None:
    from simsearch.indexing import IndexConfig, index_folder
    from simsearch.store.collection import Collection

    model = tiny_autoencoder(tmp_path / "m")
    collection = Collection(tmp_path / "home" / "c")
    index_folder(image_folder, collection, IndexConfig(model=str(model), device="cpu"))
    copy = collection.load_encoder()
    folder = collection.path / collection.read_manifest()["files"]["encoder"]
    assert (folder / "decoder.safetensors").read_bytes() == (model / "decoder.safetensors").read_bytes()
    z = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_array_equal(copy.decode(z), Encoder.load(model).decode(z))
    # A decoder damaged inside the collection is refused when the encoder is loaded, naming the file.
    decoder = folder / "decoder.safetensors"
    data = bytearray(decoder.read_bytes())
    data[-1] ^= 0xFF
    decoder.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"decoder\.safetensors: its sha256 does not match"):
        collection.load_encoder()


# ----------------------------------------------------------------------------------------------------------------
# format 1: folders made by the previous release (commit 0520881)


def test_a_format1_folder_loads_and_embeds_identically(tmp_path: Path) -> None:
    """tests/models/fixtures/format1-autoencoder/model was trained and saved by simsearch at commit 0520881 (see
    make_fixture.py there), with the embeddings that release gave for inputs.npy."""
    folder = FORMAT1 / "model"
    stored = json.loads((folder / "encoder.json").read_text())
    assert stored["format"] == "simsearch.encoder/1" and "decoder" not in stored
    encoder = Encoder.load(folder)
    inputs, expected = np.load(FORMAT1 / "inputs.npy"), np.load(FORMAT1 / "embeddings.npy")
    # The same weights and operations; the last bits of float32 may differ with the CPU's kernels (an AMD EPYC
    # here gives 7e-9 from the fixture's machine), so equal to far below any distance that matters.
    np.testing.assert_allclose(encoder.embed(inputs), expected, rtol=0, atol=1e-6)
    assert encoder.fingerprint == stored["fingerprint"] and encoder.arch == stored["arch"]
    assert encoder.decoder is None and len(encoder.history) == 0 and stored["training"]["epochs_run"] == 3
    with pytest.raises(ModelError, match="no decoder — it was saved without one"):
        encoder.decode(expected)
    # Saved again it is a format-2 folder without a decoder, with the same fingerprint and embeddings (a collection
    # that holds a copy of it does not change); saving over the format-1 folder itself replaces it.
    shutil.copytree(folder, tmp_path / "m")
    fingerprint = encoder.save(tmp_path / "m")
    assert fingerprint == stored["fingerprint"]
    config = json.loads((tmp_path / "m" / "encoder.json").read_text())
    assert config["format"] == "simsearch.encoder/2" and config["decoder"] is None
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["encoder.json", "weights.safetensors"]
    np.testing.assert_array_equal(Encoder.load(tmp_path / "m").embed(inputs), encoder.embed(inputs))


def test_a_format1_folder_with_a_decoder_entry_has_no_decoder(tmp_path: Path) -> None:
    """Format 1 never had a decoder: an entry in a format-1 encoder.json is not read."""
    shutil.copytree(FORMAT1 / "model", tmp_path / "m")
    edit_config(tmp_path / "m", lambda c: c.update(decoder={"arch": {"depth": 1}, "sha256": "0" * 64}))
    assert Encoder.load(tmp_path / "m").decoder is None


def test_a_format_from_a_newer_simsearch_is_named(tmp_path: Path) -> None:
    model = tiny_autoencoder(tmp_path / "m")
    edit_config(model, lambda c: c.update(format="simsearch.encoder/3"))
    with pytest.raises(ModelError, match=r"format 'simsearch\.encoder/3' is not one this simsearch reads"):
        Encoder.load(model)


# ----------------------------------------------------------------------------------------------------------------
# hostile decoder files


def rewrite_decoder(model: Path, change: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> None:
    path = model / "decoder.safetensors"
    save_file(change(load_file(str(path))), str(path))
    fix_decoder_hash(model)


BAD_DECODERS = {
    "a-tensor-missing": (lambda w: {k: v for k, v in w.items() if k != "head.bias"}, "missing head.bias"),
    "an-extra-tensor": (lambda w: {**w, "backdoor": torch.zeros(3)}, "unexpected backdoor"),
    "a-wrong-shape": (lambda w: {**w, "head.weight": torch.zeros(5, 7)}, "head.weight is [5, 7]"),
    "another-architecture": (
        lambda w: ConvDecoder(channels=1, size=[16, 16], dim=4, widths=[8, 16]).state_dict(),
        "the architecture needs",
    ),
    "the-encoder's-weights": (lambda w: ConvEncoder(**ARCH).state_dict(), "do not fit the autoencoder decoder"),
    "nan-weights": (lambda w: {**w, "head.bias": torch.full_like(w["head.bias"], float("nan"))}, "NaN or infinite"),
    "infinite-weights": (lambda w: {**w, "out.weight": torch.full_like(w["out.weight"], float("inf"))}, "infinite"),
}


@pytest.mark.parametrize("case", sorted(BAD_DECODERS))
def test_a_decoder_that_does_not_fit_is_refused(tmp_path: Path, case: str) -> None:
    change, message = BAD_DECODERS[case]
    model = tiny_autoencoder(tmp_path / "m")
    rewrite_decoder(model, change)
    with pytest.raises(ModelError, match=r"decoder\.safetensors") as info:
        Encoder.load(model)
    assert message in str(info.value) and "re-" in str(info.value)


def test_a_tampered_decoder_is_refused(tmp_path: Path) -> None:
    model = tiny_autoencoder(tmp_path / "m")
    path = model / "decoder.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one bit of one weight: still a valid file of the right shapes
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"decoder\.safetensors: its sha256 does not match encoder\.json"):
        Encoder.load(model)
    path.unlink()
    with pytest.raises(ModelError, match=r"decoder\.safetensors: missing — the model folder is incomplete"):
        Encoder.load(model)


@pytest.mark.parametrize("form", ["pickle", "torch.save"])
def test_a_pickle_named_decoder_safetensors_never_runs(tmp_path: Path, form: str) -> None:
    model = tiny_autoencoder(tmp_path / "m")
    marker = tmp_path / "pwned"
    path = model / "decoder.safetensors"
    if form == "pickle":
        path.write_bytes(pickle.dumps(Payload(marker)))
    else:
        torch.save({"head.weight": Payload(marker)}, path)  # a zip holding data.pkl: what torch.load unpickles
    pickle.loads(pickle.dumps(Payload(tmp_path / "control")))  # the payload is real: unpickled, it runs
    assert (tmp_path / "control").exists()
    with pytest.raises(ModelError, match="sha256 does not match"):
        Encoder.load(model)
    fix_decoder_hash(model)  # even when encoder.json vouches for it, safetensors never unpickles
    with pytest.raises(ModelError, match=r"decoder\.safetensors: not a safetensors file"):
        Encoder.load(model)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"\xff" * 64], ids=["empty", "short", "garbage"])
def test_a_decoder_file_that_is_not_safetensors(tmp_path: Path, content: bytes) -> None:
    model = tiny_autoencoder(tmp_path / "m")
    (model / "decoder.safetensors").write_bytes(content)
    fix_decoder_hash(model)
    with pytest.raises(ModelError, match=r"decoder\.safetensors: not a safetensors file"):
        Encoder.load(model)


BAD_DECODER_ENTRIES = {
    "a-list": (lambda d: [d], "'decoder' must be null or an object"),
    "arch-a-list": (lambda d: {**d, "arch": [["dim", 4]]}, "'decoder' must be null or an object"),
    "hash-a-number": (lambda d: {**d, "sha256": 12}, "'decoder' must be null or an object"),
    "hash-missing": (lambda d: {"arch": d["arch"]}, "'decoder' must be null or an object"),
    "unknown-arch-argument": (
        lambda d: {**d, "arch": {**d["arch"], "depth": 3}},
        "cannot build the autoencoder decoder architecture",
    ),
    "widths-empty": (lambda d: {**d, "arch": {**d["arch"], "widths": []}}, "cannot build the autoencoder decoder"),
    "arch-of-a-giant": (lambda d: {**d, "arch": {**d["arch"], "widths": [1 << 20, 1 << 20]}}, "tensors do not fit"),
}


@pytest.mark.parametrize("case", sorted(BAD_DECODER_ENTRIES))
def test_a_bad_decoder_entry_in_encoder_json_is_refused(tmp_path: Path, case: str) -> None:
    change, message = BAD_DECODER_ENTRIES[case]
    model = tiny_autoencoder(tmp_path / "m")
    edit_config(model, lambda c: c.update(decoder=change(c["decoder"])))
    started = time.monotonic()
    with pytest.raises(ModelError, match=r"encoder\.json|decoder\.safetensors") as info:
        Encoder.load(model)
    assert message in str(info.value)
    assert time.monotonic() - started < 10  # the giant is measured on the meta device, never built


def test_a_decoder_for_a_family_without_one_is_refused(tmp_path: Path) -> None:
    model = tiny_autoencoder(tmp_path / "m")
    edit_config(model, lambda c: c.update(family="siamese"))
    with pytest.raises(ModelError, match="the siamese family has no decoder"):
        Encoder.load(model)


@pytest.mark.parametrize(
    ("arch", "message"),
    [({"dim": 5}, "shapes cannot be multiplied"), ({"size": [12, 12]}, "makes images of shape (1, 12, 12)")],
    ids=["another-dim", "another-size"],
)
def test_a_decoder_that_does_not_fit_the_encoder(tmp_path: Path, arch: dict[str, Any], message: str) -> None:
    """A decoder file that fits its own stated architecture, but not the encoder: it cannot decode this encoder's
    embeddings into images of its input shape, and is refused at load."""
    model = tiny_autoencoder(tmp_path / "m")
    other = ConvDecoder(**{**ARCH, **arch})
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(model / "decoder.safetensors"))
    edit_config(model, lambda c: c["decoder"].update(arch=other.arch))
    fix_decoder_hash(model)
    with pytest.raises(ModelError, match="the autoencoder decoder does not fit the encoder") as info:
        Encoder.load(model)
    assert message in str(info.value)


def test_loading_a_decoder_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def trap(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    model = tiny_autoencoder(tmp_path / "m")
    for target, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(target, name, trap)
    encoder = Encoder.load(model)
    assert np.isfinite(encoder.decode(np.zeros((1, 4), np.float32))).all()
