"""An Encoder: a model that maps preprocessed images to embeddings, and its on-disk model folder.

A model folder holds ``weights.safetensors`` (the encoder's tensors only: loading can never run code),
``encoder.json`` (everything needed to rebuild the modules and preprocess images, plus provenance) and, for the
families with a decoder (autoencoder, denoising, vae), ``decoder.safetensors``, the decoder that maps embeddings
back to images, checked exactly as the weights are. Models trained by this version also hold
``reference.safetensors``, the novelty reference (``models.novelty``: what the training inputs look like, so that
an input unlike them is flagged "unfamiliar"); a folder without one loads with no such check. The fingerprint names the exact encoder: a hash of the
architecture, preprocessing, metric and weights (the decoder changes no embedding and is not part of it: its own
sha256 is in ``encoder.json``; nor is the reference). Models with a decoder trained by this version also record in
``encoder.json`` how well they reconstruct their own training images (``anomaly``: a threshold on the reconstruction
error and its quantiles, what ``simsearch anomalies`` flags by); older folders load without it.

Format 2 (``simsearch.encoder/2``) is what this version writes; format-1 folders (no decoder) load as before.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from simsearch import __version__
from simsearch.errors import ModelError, UsageError, option
from simsearch.io import Preprocess
from simsearch.metrics import METRICS
from simsearch.models.autoencoder import output_width
from simsearch.models.novelty import METHOD, TENSORS, Reference
from simsearch.models.registry import arch_of, build_decoder, build_module, family_names, get_family

FORMAT = "simsearch.encoder/2"
FORMAT_1 = "simsearch.encoder/1"
#: The formats this version reads: format 1 (before decoders were kept) and format 2.
FORMATS = (FORMAT_1, FORMAT)
WEIGHTS = "weights.safetensors"
DECODER = "decoder.safetensors"
REFERENCE = "reference.safetensors"
CONFIG = "encoder.json"
HISTORY = "history.jsonl"
#: Everything a model folder may hold: replacing one removes these names and nothing else.
MODEL_FILES = (CONFIG, WEIGHTS, DECODER, REFERENCE, HISTORY)
MAX_CONFIG_BYTES = 16 * 1024 * 1024  # encoder.json is a few kilobytes
#: The remedy for a path that is no model folder.
TRAINED_FOLDER = "pass a model folder made by training"


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when torch sees a GPU, else CPU; ``cuda`` without a GPU is a usage error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(
            f"{option('device', 'cuda')} was asked for, but torch sees no CUDA GPU",
            remedy=f"use {option('device', 'auto')} or cpu",
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"unknown device {device!r}", remedy="use auto, cpu or cuda")
    return torch.device(device)


def fuse_batchnorm(module: nn.Module) -> nn.Module:
    """An eval-mode copy of ``module`` where every ``Conv2d`` directly followed by a ``BatchNorm2d`` inside an
    ``nn.Sequential`` is replaced by one convolution with the normalisation folded in (torch's own
    ``fuse_conv_bn_eval``), and the BatchNorm by an identity."""
    fused = copy.deepcopy(module).eval()
    for parent in fused.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        for i in range(len(parent) - 1):
            conv, bn = parent[i], parent[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                parent[i], parent[i + 1] = fuse_conv_bn_eval(conv, bn), nn.Identity()
    return fused


def _canonical(data: object) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class Encoder:
    """A ready-to-use encoder: ``embed(images (n, C, H, W) float32) → (n, dim) float32``; with a ``decoder``,
    ``decode(embeddings (n, dim) float32) → (n, C, H, W) float32`` maps embeddings back to images."""

    family: str
    arch: dict[str, Any]
    preprocess: Preprocess
    module: nn.Module
    metric: str = "l2"
    threshold: dict[str, Any] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: The decoder trained with the encoder (autoencoder, denoising, vae), or None (other families, format-1 folders).
    decoder: nn.Module | None = None
    #: What the training inputs look like (``models.novelty``), or None (baselines, folders saved without one).
    reference: Reference | None = None
    #: The reconstruction errors of the training images (models with a decoder, ``training.train.anomaly_record``):
    #: ``by``, ``percentile``, ``threshold``, ``quantiles``, ``images``; None for other families and older folders.
    anomaly: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ModelError(f"unknown metric {self.metric!r}; expected one of {', '.join(METRICS)}")
        if self.decoder is not None:
            if get_family(self.family).decoder is None:
                raise ModelError(f"the {self.family} family has no decoder, but one was given")
            self.decoder.eval()
        self.module.eval()
        self._inference: nn.Module | None = None

    @property
    def dim(self) -> int:
        """The embedding's width: the head's, or the discriminant back-end's when the model ends with one."""
        return output_dim(self.arch)

    def to(self, device: torch.device | str) -> Encoder:
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.module.to(self.device)
        if self.decoder is not None:
            self.decoder.to(self.device)
        self._inference = None
        return self

    def inference_module(self) -> nn.Module:
        """The module ``embed`` runs: a copy with each BatchNorm folded into the convolution before it, in
        channels-last layout (1.5× faster on a CPU, and the same embeddings to float rounding). Built once:
        an Encoder's weights do not change after it is made (its fingerprint is cached too)."""
        if self._inference is None:
            fused = fuse_batchnorm(self.module)
            self._inference = fused.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return self._inference

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return _tensors(self.module)

    def decoder_tensors(self) -> dict[str, torch.Tensor]:
        if self.decoder is None:
            raise ModelError(f"this {self.family} model has no decoder")
        return _tensors(self.decoder)

    @property
    def decoder_arch(self) -> dict[str, Any] | None:
        """The decoder's constructor arguments (its ``arch``), as ``encoder.json`` stores them; None without one."""
        return None if self.decoder is None else arch_of(self.decoder)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the architecture, preprocessing, metric and weights: equal fingerprints, equal embeddings."""
        digest = hashlib.sha256(_canonical(self.identity()))
        for name, tensor in sorted(self.state_tensors().items()):
            digest.update(name.encode())
            digest.update(str(tensor.dtype).encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()

    def identity(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "arch": self.arch,
            "dim": self.dim,
            "metric": self.metric,
            "preprocess": self.preprocess.to_json(),
        }

    @torch.inference_mode()
    def embed(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Embed preprocessed images: ``images`` (n, C, H, W) float32 → (n, dim) float32."""
        expected = (self.preprocess.channels, *self.preprocess.size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ModelError(f"encoder expects images of shape (n, {expected}), got {images.shape}")
        out = np.empty((len(images), self.dim), dtype=np.float32)
        module = self.inference_module()
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(self.device)
            batch = batch.contiguous(memory_format=torch.channels_last)
            out[start : start + len(batch)] = module(batch).float().cpu().numpy()
        return out

    @torch.inference_mode()
    def decode(self, embeddings: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Decode embeddings (n, dim) float32 → images (n, C, H, W) float32, in the space ``embed`` takes: the
        preprocessed inputs (normalised by the spec's mean and std, and inverted when the spec says so)."""
        if self.decoder is None:
            if get_family(self.family).decoder is None:
                raise ModelError(f"this {self.family} model has no decoder — its family has none")
            raise ModelError(
                f"this {self.family} model has no decoder",
                remedy="it was saved without one (a format-1 folder): re-train it to keep one",
            )
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ModelError(f"decoder expects embeddings of shape (n, {self.dim}), got {embeddings.shape}")
        out = np.empty((len(embeddings), self.preprocess.channels, *self.preprocess.size), dtype=np.float32)
        for start in range(0, len(embeddings), batch_size):
            batch = np.ascontiguousarray(embeddings[start : start + batch_size], dtype=np.float32)
            decoded = self.decoder(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()
            if decoded.shape[1:] != out.shape[1:]:
                raise ModelError(
                    f"the decoder makes images of shape {decoded.shape[1:]}, the encoder takes {out.shape[1:]}"
                )
            out[start : start + len(batch)] = decoded
        return out

    @torch.inference_mode()
    def reconstruction_errors(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Each image's reconstruction error: the mean squared difference between the preprocessed image and
        ``decode(embed(image))``, in the space ``embed`` takes (normalised by the spec's mean and std, inverted when
        it says so). ``images`` (n, C, H, W) float32 → (n,) float32. ``ModelError`` without a decoder."""
        out = np.empty(len(images), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32)
            decoded = self.decode(self.embed(batch, batch_size), batch_size)
            out[start : start + len(batch)] = np.mean(
                np.square(decoded.astype(np.float64) - batch), axis=tuple(range(1, batch.ndim))
            )
        return out

    def save(self, folder: Path) -> str:
        """Write the model folder atomically (a crash leaves either the old folder or the new one).

        ``folder`` must be new, empty, or a model folder (``check_model_target``): nothing else is replaced.
        Files and folders are created with the process's umask, so a model folder can be shared."""
        folder = Path(folder)
        check_model_target(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        tmp.mkdir()
        try:
            self.write_into(tmp)
            if folder.exists():
                old = folder.with_name(f".{folder.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
                folder.rename(old)
                try:
                    tmp.rename(folder)
                except BaseException:
                    old.rename(folder)  # interrupted between the two renames: the old folder goes back
                    raise
                for name in MODEL_FILES:  # the old folder held these and nothing else (checked above)
                    (old / name).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    old.rmdir()
            else:
                tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.fingerprint

    def write_into(self, folder: Path) -> None:
        """Write the model folder's files into an existing folder, fsynced: ``weights.safetensors``,
        ``decoder.safetensors`` when there is a decoder, ``encoder.json`` and ``history.jsonl`` (format 2)."""
        weights = folder / WEIGHTS
        weights_sha = _write_tensors(self.state_tensors(), weights)
        written = [weights]
        decoder: dict[str, Any] | None = None
        if self.decoder is not None:
            decoder = {"arch": self.decoder_arch, "sha256": _write_tensors(self.decoder_tensors(), folder / DECODER)}
            written.append(folder / DECODER)
        reference: dict[str, Any] | None = None
        if self.reference is not None:
            sha = _write_arrays(self.reference.tensors(), folder / REFERENCE)
            reference = {**self.reference.to_json(), "sha256": sha}
            written.append(folder / REFERENCE)
        config = {
            "format": FORMAT,
            **self.identity(),
            "fingerprint": self.fingerprint,
            "weights_sha256": weights_sha,
            "decoder": decoder,
            "threshold": self.threshold,
            "reference": reference,
            "anomaly": self.anomaly,
            "training": {"simsearch_version": __version__, **self.training},
        }
        (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        written.append(folder / CONFIG)
        if self.history:
            (folder / HISTORY).write_text("".join(json.dumps(h) + "\n" for h in self.history))
            written.append(folder / HISTORY)
        for path in written:
            with open(path, "rb") as f:
                os.fsync(f.fileno())

    @classmethod
    def load(cls, folder: Path, device: str | torch.device = "cpu") -> Encoder:
        """Load and verify a model folder; any inconsistency is a ``ModelError`` naming the file and the fix.

        Nothing in the folder can run code or make simsearch allocate more than its tensor files hold:
        ``encoder.json`` is checked field by field, the weights (and the decoder) are tensors in safetensors format
        (never pickle), and each architecture is first built on torch's ``meta`` device (no memory) and compared,
        tensor by tensor, with the shapes in its file's header before anything is allocated.
        """
        folder = Path(folder)
        config_path, weights_path = folder / CONFIG, folder / WEIGHTS
        if not config_path.is_file():
            raise ModelError(
                f"no {CONFIG} in '{folder}'", remedy=f"{TRAINED_FOLDER}, or one of: {', '.join(family_names())}"
            )
        try:
            if config_path.stat().st_size > MAX_CONFIG_BYTES:
                raise ValueError(f"over {MAX_CONFIG_BYTES:,} bytes")
            config = json.loads(config_path.read_text())
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8 or JSON; deep nesting
            raise ModelError(
                f"not valid JSON ({str(exc)[:200]})", file=config_path, remedy="re-train the model"
            ) from None
        version = config.get("format") if isinstance(config, dict) else None
        if version not in FORMATS:
            if isinstance(version, str) and version.startswith("simsearch.encoder/"):
                raise ModelError(
                    f"format {version[:40]!r} is not one this simsearch reads ({', '.join(FORMATS)})",
                    file=config_path,
                    remedy="use the newer simsearch that wrote it, or re-train the model",
                )
            raise ModelError(f"not a simsearch encoder (format must be {FORMAT!r} or {FORMAT_1!r})", file=config_path)
        try:
            family, arch, metric, preprocess, dim, weights_sha = _parse_config(config)
            decoder_spec = _parse_decoder(config, family)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ModelError(
                f"missing or malformed field ({exc})", file=config_path, remedy="re-train the model"
            ) from None
        if output_dim(arch) != dim:
            raise ModelError(f"'dim' is {dim} but the architecture says {output_dim(arch)}", file=config_path)
        module = _load_tensors(
            weights_path, weights_sha, lambda: build_module(family, arch), f"the {family} architecture", "weights"
        )
        decoder = None
        if decoder_spec is not None:
            decoder_arch, decoder_sha = decoder_spec
            decoder = _load_tensors(
                folder / DECODER,
                decoder_sha,
                lambda: build_decoder(family, decoder_arch),
                f"the {family} decoder architecture",
                "decoder",
            )
        threshold, training = config.get("threshold"), config.get("training")
        if not isinstance(threshold, (dict, type(None))) or not isinstance(training, (dict, type(None))):
            raise ModelError(
                "'threshold' and 'training' must be objects or null", file=config_path, remedy="re-train the model"
            )
        anomaly = config.get("anomaly")  # absent in folders saved before it was recorded
        if not isinstance(anomaly, (dict, type(None))):
            raise ModelError("'anomaly' must be an object or null", file=config_path, remedy="re-train the model")
        reference = _load_reference(folder, config, preprocess)
        encoder = cls(
            family,
            arch,
            preprocess,
            module,
            metric,
            threshold,
            training or {},
            decoder=decoder,
            reference=reference,
            anomaly=anomaly,
        )
        try:
            probe = encoder.embed(np.zeros((1, preprocess.channels, *preprocess.size), dtype=np.float32))
        except RuntimeError as exc:
            raise ModelError(f"the {family} architecture does not run ({str(exc)[:200]})", file=config_path) from None
        if probe.shape != (1, dim):
            raise ModelError(f"'dim' is {dim} but the model produces {probe.shape[1]}", file=config_path)
        if decoder is not None:
            try:
                encoder.decode(np.zeros((1, dim), dtype=np.float32))
            except (RuntimeError, ModelError) as exc:
                raise ModelError(
                    f"the {family} decoder does not fit the encoder ({str(exc)[:200]})",
                    file=config_path,
                    remedy="re-train or re-copy the model folder",
                ) from None
        stored_fingerprint = config.get("fingerprint")
        if stored_fingerprint is not None and stored_fingerprint != encoder.fingerprint:
            raise ModelError("fingerprint does not match the weights", file=config_path, remedy="re-train the model")
        return encoder.to(device)


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def _write_tensors(tensors: dict[str, torch.Tensor], path: Path) -> str:
    """Write ``tensors`` as a safetensors file readable as the umask allows; return its sha256."""
    save_file(tensors, str(path), metadata={"format": FORMAT})
    os.chmod(path, 0o666 & ~_umask())  # safetensors creates its file 0600, whatever the umask
    return _sha256_of(path)


def _write_arrays(arrays: dict[str, np.ndarray], path: Path) -> str:
    return _write_tensors({name: torch.from_numpy(array) for name, array in arrays.items()}, path)


def _load_reference(folder: Path, config: dict[str, Any], spec: Preprocess) -> Reference | None:
    """The novelty reference a model folder stores (``reference.safetensors``, described by ``encoder.json``'s
    ``reference``), checked as the weights are: its sha256, then the shapes in its header, then the values. None
    when there is none (folders saved before references were kept, baselines) or its method is another version's
    (then there is no check, as for an old folder)."""
    entry = config.get("reference")
    if entry is None:
        return None
    path, config_path = folder / REFERENCE, folder / CONFIG
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        raise ModelError(
            "'reference' must be null or an object with a 'sha256'", file=config_path, remedy="re-train the model"
        )
    if entry.get("method") != METHOD:
        return None
    if not path.is_file():
        raise ModelError("missing", file=path, remedy="the model folder is incomplete; re-train or re-copy it")
    if _sha256_of(path) != entry["sha256"]:
        raise ModelError(
            f"its sha256 does not match {CONFIG}",
            file=path,
            remedy="the reference was changed or damaged; re-train or re-copy the model folder",
        )
    inputs = spec.channels * spec.size[0] * spec.size[1]
    try:
        with safe_open(str(path), framework="pt") as f:  # the header first: nothing is allocated for a bad shape
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
        if set(shapes) != set(TENSORS) or shapes["mean"] != (inputs,) or len(shapes["components"]) != 2:
            raise ValueError(f"its tensors do not fit an input of {inputs} values")
        if shapes["components"][0] > 64 or shapes["low"] != shapes["high"] or len(shapes["low"]) != 1:
            raise ValueError("its tensors are not a reference's")
        tensors = {name: tensor.numpy() for name, tensor in load_file(str(path)).items()}
        return Reference.from_tensors(tensors, entry, inputs)
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise ModelError(
            f"not a valid novelty reference ({str(exc)[:200]})",
            file=path,
            remedy="re-train or re-copy the model folder",
        ) from None


def _load_tensors(path: Path, sha256: str, build: Callable[[], nn.Module], architecture: str, what: str) -> nn.Module:
    """The module ``build`` makes, with the tensors of the safetensors file ``path`` loaded into it, once the file is
    checked: its sha256 is ``sha256``, its header names exactly the tensors (and shapes) that the module has when
    built on the ``meta`` device (nothing allocated yet), and every value is finite. ``architecture`` and ``what``
    (``weights``, ``decoder``) name them in the errors, which are ``ModelError``s naming the file and the fix."""
    if not path.is_file():
        raise ModelError("missing", file=path, remedy="the model folder is incomplete; re-train or re-copy it")
    if _sha256_of(path) != sha256:
        raise ModelError(
            f"its sha256 does not match {CONFIG}",
            file=path,
            remedy=f"the {what} {'were' if what == 'weights' else 'was'} changed or damaged; re-train or re-copy "
            "the model folder",
        )
    try:
        with torch.device("meta"):  # shapes only: a hostile architecture allocates nothing here
            expected = {k: tuple(v.shape) for k, v in build().state_dict().items()}
    except (TypeError, ValueError, RuntimeError, KeyError, IndexError, OverflowError) as exc:
        raise ModelError(f"cannot build {architecture} ({exc})", file=path.parent / CONFIG) from None
    try:
        with safe_open(str(path), framework="pt") as f:  # reads the header only
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(
            f"not a safetensors file ({str(exc)[:200]})", file=path, remedy="re-train or re-copy the model folder"
        ) from None
    if stored != expected:
        raise ModelError(
            f"tensors do not fit {architecture} ({_mismatch(expected, stored)})",
            file=path,
            remedy="re-train or re-copy the model folder",
        )
    try:
        module = build()
        state = load_file(str(path))
        module.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError, TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"tensors do not fit {architecture} ({first})", file=path, remedy="re-train or re-copy the model folder"
        ) from None
    if not all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point()):
        raise ModelError(
            f"some {'' if what == 'weights' else what + ' '}weights are NaN or infinite",
            file=path,
            remedy="re-train the model",
        )
    return module


def output_dim(arch: dict[str, Any]) -> int:
    """The width of a module's embeddings from its ``arch``: ``discriminant`` when it ends with that back-end
    (``training.discriminant``), the flattened feature map's with ``readout`` ``features``, else ``dim`` (−1 when
    it cannot be read from ``arch``)."""
    if not arch.get("discriminant") and arch.get("readout") == "features":
        try:
            return output_width(arch)
        except (KeyError, TypeError, ValueError):
            return -1
    value = arch.get("discriminant") or arch.get("dim", -1)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else -1


def _parse_config(config: dict[str, Any]) -> tuple[str, dict[str, Any], str, Preprocess, int, str]:
    """The fields of ``encoder.json`` that rebuild a model, type-checked (``ValueError`` names the bad one)."""
    family, arch, metric = config["family"], config["arch"], config.get("metric", "l2")
    dim, weights_sha = config["dim"], config["weights_sha256"]
    get_family(family)  # ValueError: unknown family …; known: …
    if not isinstance(arch, dict) or not isinstance(metric, str) or not isinstance(weights_sha, str):
        raise ValueError("'arch' must be an object, 'metric' and 'weights_sha256' strings")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric[:20]!r}; expected one of {', '.join(METRICS)}")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"'dim' must be a positive integer, not {str(dim)[:40]}")
    return family, arch, metric, Preprocess.from_json(config["preprocess"]), dim, weights_sha


def _parse_decoder(config: dict[str, Any], family: str) -> tuple[dict[str, Any], str] | None:
    """Format 2's ``decoder`` entry: ``(arch, sha256)``, or None when there is no decoder (null, or format 1,
    which never had one). ``ValueError`` names what is wrong."""
    if config["format"] == FORMAT_1:
        return None
    entry = config.get("decoder")
    if entry is None:
        return None
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("arch"), dict)
        or not isinstance(entry.get("sha256"), str)
    ):
        raise ValueError("'decoder' must be null or an object with 'arch' (an object) and 'sha256' (a string)")
    if get_family(family).decoder is None:
        raise ValueError(f"'decoder': the {family} family has no decoder")
    return entry["arch"], entry["sha256"]


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``os.umask`` can only swap it)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _mismatch(expected: dict[str, tuple[int, ...]], stored: dict[str, tuple[int, ...]]) -> str:
    """The first difference between the tensors an architecture needs and those a weights file holds."""
    missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing:
        return f"missing {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
    if unexpected:
        return f"unexpected {unexpected[0]}" + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else "")
    name = next(k for k in sorted(expected) if expected[k] != stored[k])
    return f"{name} is {list(stored[name])}, the architecture needs {list(expected[name])}"


def is_model_folder(path: Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def check_model_target(folder: Path) -> None:
    """Refuse to write a model folder where something else is: ``folder`` must not exist, or be empty, or be a
    model folder (its ``encoder.json`` is a simsearch encoder's, and it holds only a model folder's files)."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir() or folder.is_symlink():
        raise ModelError(
            f"'{folder}' exists and is a file or a link, not a folder",
            remedy=f"choose a new {option('out_dir')} folder",
        )
    try:
        names = {entry.name for entry in os.scandir(folder)}
    except OSError as exc:
        raise ModelError(
            f"'{folder}': cannot read it ({exc.strerror or exc})", remedy=f"choose a new {option('out_dir')} folder"
        ) from None
    if not names or (CONFIG in names and names <= set(MODEL_FILES) and _is_encoder_config(folder / CONFIG)):
        return
    others = sorted(names - set(MODEL_FILES)) or sorted(names)
    shown = ", ".join(repr(name) for name in others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
    raise ModelError(
        f"'{folder}' exists and is not a simsearch model folder (it holds {shown})",
        remedy=f"simsearch will not replace it; choose a new {option('out_dir')} folder, such as '{folder / 'model'}'",
    )


def _is_encoder_config(path: Path) -> bool:
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            return False
        config = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(config, dict) and str(config.get("format", "")).startswith("simsearch.encoder/")
