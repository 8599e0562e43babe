"""Model folders: safetensors + encoder.json round trips, fingerprints, and refusal of tampered files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from simsearch.errors import ModelError, UsageError
from simsearch.io import Preprocess
from simsearch.models.autoencoder import ConvDecoder, ConvEncoder
from simsearch.models.baseline import PCAEncoder, PixelEncoder
from simsearch.models.encoder import Encoder, resolve_device
from simsearch.training import pixels_encoder


def small_encoder(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    spec = Preprocess(size=(12, 20), channels=1, mean=(0.3,), std=(0.2,))
    module = ConvEncoder(channels=1, size=(12, 20), dim=6)
    return Encoder("autoencoder", module.arch, spec, module, training={"note": "test"})


def batch(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, 12, 20)).astype(np.float32)


def test_round_trip_gives_identical_embeddings_and_fingerprint(tmp_path: Path) -> None:
    enc = small_encoder()
    folder = tmp_path / "m"
    fingerprint = enc.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["encoder.json", "weights.safetensors"]
    loaded = Encoder.load(folder)
    assert loaded.fingerprint == fingerprint == enc.fingerprint
    np.testing.assert_array_equal(loaded.embed(batch()), enc.embed(batch()))
    config = json.loads((folder / "encoder.json").read_text())
    assert config["dim"] == 6 and config["metric"] == "l2" and config["preprocess"]["size"] == [12, 20]
    assert config["training"]["note"] == "test"


def test_fresh_process_gives_identical_embeddings(tmp_path: Path) -> None:
    enc = small_encoder()
    enc.save(tmp_path / "m")
    np.save(tmp_path / "x.npy", batch())
    code = (
        "import numpy as np, sys; from simsearch.models.encoder import Encoder; "
        f"e = Encoder.load({str(tmp_path / 'm')!r}); np.save(sys.argv[1], e.embed(np.load({str(tmp_path / 'x.npy')!r})))"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "y.npy")], check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), enc.embed(batch()))


def test_different_weights_give_different_fingerprints() -> None:
    assert small_encoder(0).fingerprint != small_encoder(1).fingerprint


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    small_encoder().save(tmp_path / "m")
    weights = tmp_path / "m" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 does not match"):
        Encoder.load(tmp_path / "m")


def test_pickle_in_place_of_weights_is_refused_without_running(tmp_path: Path) -> None:
    small_encoder().save(tmp_path / "m")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    import pickle

    (tmp_path / "m" / "weights.safetensors").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ModelError):
        Encoder.load(tmp_path / "m")
    # Even with the hash "fixed" to match, safetensors never unpickles.
    import hashlib

    config = json.loads((tmp_path / "m" / "encoder.json").read_text())
    config["weights_sha256"] = hashlib.sha256((tmp_path / "m" / "weights.safetensors").read_bytes()).hexdigest()
    (tmp_path / "m" / "encoder.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="not a safetensors file"):
        Encoder.load(tmp_path / "m")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(dim=7), "'dim' is 7"),
        (lambda c: c.update(family="transformer"), "unknown family"),
        (lambda c: c.update(format="other"), "not a simsearch encoder"),
        (lambda c: c.pop("preprocess"), "missing or malformed"),
        (lambda c: c["preprocess"].update(channels="three"), "missing or malformed"),
        (lambda c: c["arch"].update(dim=7, widths=[32]), "'dim' is 6 but the architecture says 7"),
        (lambda c: c["arch"].update(size=[24, 40]), "do not fit"),
    ],
)
def test_malformed_encoder_json_is_refused(tmp_path: Path, change, message: str) -> None:
    small_encoder().save(tmp_path / "m")
    path = tmp_path / "m" / "encoder.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))
    with pytest.raises(ModelError, match=message):
        Encoder.load(tmp_path / "m")


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no encoder\.json"):
        Encoder.load(tmp_path)
    small_encoder().save(tmp_path / "m")
    (tmp_path / "m" / "encoder.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        Encoder.load(tmp_path / "m")


def test_save_replaces_an_existing_folder_atomically(tmp_path: Path) -> None:
    small_encoder(0).save(tmp_path / "m")
    second = small_encoder(1)
    second.save(tmp_path / "m")
    assert Encoder.load(tmp_path / "m").fingerprint == second.fingerprint
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_embed_checks_the_input_shape() -> None:
    with pytest.raises(ModelError, match="expects images of shape"):
        small_encoder().embed(np.zeros((2, 3, 12, 20), np.float32))


def test_pixels_encoder_is_the_flattened_input(tmp_path: Path) -> None:
    enc = pixels_encoder(Preprocess(size=(3, 4), channels=1))
    x = np.random.default_rng(0).random((2, 1, 3, 4), dtype=np.float32)
    np.testing.assert_array_equal(enc.embed(x), x.reshape(2, -1))
    enc.save(tmp_path / "p")
    np.testing.assert_array_equal(Encoder.load(tmp_path / "p").embed(x), x.reshape(2, -1))


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UsageError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA"):
            resolve_device("cuda")


def test_embed_runs_a_fused_copy_that_matches_the_trained_module() -> None:
    enc = small_encoder(seed=3)
    enc.module.train()
    with torch.no_grad():  # running statistics far from the initial 0 and 1, so folding them changes weights
        for _ in range(5):
            enc.module(torch.from_numpy(batch(32, seed=9)) * 3 + 1)
    enc.module.eval()
    fingerprint = enc.fingerprint
    weights = {k: v.clone() for k, v in enc.module.state_dict().items()}
    x = batch(64, seed=4)
    with torch.inference_mode():
        expected = enc.module(torch.from_numpy(x)).numpy()
    got = enc.embed(x, batch_size=16)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * float(np.abs(expected).max()))
    fused = enc.inference_module()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in enc.module.modules()) > 0  # the original is untouched
    assert all(torch.equal(weights[k], v) for k, v in enc.module.state_dict().items())
    assert enc.fingerprint == fingerprint
    # Batching does not change a result beyond float rounding (oneDNN and cuDNN pick kernels by batch size).
    np.testing.assert_allclose(enc.embed(x, batch_size=64), got, rtol=1e-5, atol=1e-6 * float(np.abs(got).max()))


@pytest.mark.parametrize(
    "module",
    [
        ConvEncoder(channels=3, size=(28, 40), dim=5, widths=(8, 16, 32, 64, 128), normalize=True),
        ConvDecoder(channels=3, size=(28, 40), dim=5, widths=(8, 16, 32, 64, 128)),
        ConvDecoder.mirroring(ConvEncoder(channels=1, size=(9, 9), dim=3)),
        PCAEncoder(channels=1, size=(4, 5), dim=3),
        PixelEncoder(channels=3, size=(2, 3), dim=18),
    ],
    ids=lambda m: type(m).__name__,
)
def test_modules_give_the_arguments_that_rebuild_them(module: torch.nn.Module) -> None:
    """``arch`` is plain JSON, and the module it rebuilds has the same tensors, of the same shapes."""
    arch = module.arch
    assert json.loads(json.dumps(arch)) == arch
    rebuilt = type(module)(**arch)
    assert rebuilt.arch == arch
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in module.state_dict().items()}
    if isinstance(module, ConvEncoder):  # the decoder mirrors the encoder, and maps its embeddings to its inputs
        decoder = ConvDecoder.mirroring(module)
        assert decoder.arch == {k: v for k, v in arch.items() if k != "normalize"}
        assert decoder(torch.zeros(2, 5)).shape == (2, 3, 28, 40)
