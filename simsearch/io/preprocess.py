"""How a decoded image becomes an encoder input: ``Preprocess`` (size, channels, resize mode, inversion, mean, std),
letterboxing and trimming, and the float32 array.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

# The longest side of an encoder input (the largest --size).
MAX_SIDE = 1024


#: The largest ``Preprocess.gamma``.
MAX_GAMMA = 4.0
#: How an image is fitted to the encoder's input size (see ``Preprocess``).
RESIZE_MODES = ("letterbox", "trim")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes an encoder input: ``(channels, H, W)`` float32 ``((x/255 [inverted])^gamma - mean) / std``.

    ``resize`` is ``letterbox``: scale to fit inside H×W keeping the aspect ratio, pad the rest with the
    median colour of the image's border; or ``trim``: first crop away the margin of that border colour (see
    ``trim``), then letterbox — the drawing, not the sheet it is on, fills the input.

    ``gamma`` (0 < gamma ≤ 4, default 1: the intensities as they are) raises the [0, 1] intensities to a power:
    0.5, the square root, makes a faint mark nearly as present as a strong one, so that distances weigh where
    there is something more than how bright it is (``train --gamma``).
    """

    size: tuple[int, int]
    channels: int = 1
    invert: bool = False
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    resize: str = "letterbox"
    gamma: float = 1.0

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {self.channels}")
        if len(self.size) != 2 or not all(1 <= side <= MAX_SIDE for side in self.size):
            raise ValueError(f"size must be (H, W) with sides 1..{MAX_SIDE}, not {self.size}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {self.resize!r}; expected one of {', '.join(RESIZE_MODES)}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels) or not all(math.isfinite(v) for v in values):
                raise ValueError(f"{name} must be 1 or {self.channels} finite numbers, not {values}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, not {self.std}")
        if not (math.isfinite(self.gamma) and 0 < self.gamma <= MAX_GAMMA):
            raise ValueError(f"gamma must be above 0 and at most {MAX_GAMMA:g}, not {self.gamma}")

    def to_json(self) -> dict[str, object]:
        return {
            "size": list(self.size),
            "channels": self.channels,
            "resize": self.resize,
            "invert": self.invert,
            "mean": list(self.mean),
            "std": list(self.std),
            # Written only when it does something: every model made before gamma existed keeps its JSON, and
            # so its fingerprint.
            **({"gamma": self.gamma} if self.gamma != 1.0 else {}),
        }

    @classmethod
    def from_json(cls, data: object) -> Preprocess:
        """The spec stored in ``encoder.json``; ``ValueError`` says which field is malformed."""
        if not isinstance(data, dict):
            raise ValueError("preprocess must be an object")
        size, channels = data.get("size"), data.get("channels")
        mean, std = data.get("mean", [0.0]), data.get("std", [1.0])
        invert, resize = data.get("invert", False), data.get("resize", "letterbox")
        gamma = data.get("gamma", 1.0)
        if not _is_number(gamma):
            raise ValueError(f"preprocess.gamma must be a number, not {str(gamma)[:40]}")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(side) for side in size)):
            raise ValueError(f"preprocess.size must be [H, W], not {str(size)[:40]}")
        if not _is_int(channels):
            raise ValueError(f"preprocess.channels must be 1 or 3, not {str(channels)[:40]}")
        for name, values in (("mean", mean), ("std", std)):
            if not (isinstance(values, list) and all(_is_number(v) for v in values)):
                raise ValueError(f"preprocess.{name} must be a list of numbers, not {str(values)[:40]}")
        if not isinstance(invert, bool) or not isinstance(resize, str):
            raise ValueError("preprocess.invert must be true or false, and preprocess.resize a name")
        return cls(
            size=(size[0], size[1]),
            channels=channels,  # type: ignore[arg-type]
            invert=invert,
            mean=tuple(float(m) for m in mean),
            std=tuple(float(s) for s in std),
            resize=resize,
            gamma=float(gamma),
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def border_colour(arr: np.ndarray) -> np.ndarray:
    """The median colour of an image array's outermost rows and columns: its background, usually."""
    border = np.concatenate(
        [
            arr[0].reshape(-1, *arr.shape[2:]),
            arr[-1].reshape(-1, *arr.shape[2:]),
            arr[:, 0].reshape(-1, *arr.shape[2:]),
            arr[:, -1].reshape(-1, *arr.shape[2:]),
        ]
    )
    # np.median's result (the mean of the two middle values, truncated), by partition alone: several times faster
    n = len(border)
    middle = n // 2
    if n % 2:
        return np.partition(border, middle, axis=0)[middle].astype(np.uint8)
    part = np.partition(border, (middle - 1, middle), axis=0)
    return ((part[middle - 1].astype(np.uint16) + part[middle]) // 2).astype(np.uint8)


def trim(img: Image.Image, tolerance: int = 64, pad: float = 0.03) -> Image.Image:
    """Crop ``img`` to the box around every pixel that differs from the border colour by more than
    ``tolerance`` (of 255) in some channel, widened by ``pad`` × the image's long side (at least one pixel) on
    each side. An image with nothing on its background is returned as it is."""
    arr = np.asarray(img)
    colour = border_colour(arr).astype(np.int16)
    # |pixel − colour| > tolerance, as two comparisons on the bytes (clipped bounds no byte can pass)
    high, low = np.minimum(colour + tolerance, 255).astype(np.uint8), np.maximum(colour - tolerance, 0).astype(np.uint8)
    differs = np.asarray((arr > high) | (arr < low))
    if differs.ndim == 3:
        differs = np.any(differs, axis=2)
    rows, cols = np.flatnonzero(differs.any(axis=1)), np.flatnonzero(differs.any(axis=0))
    if len(rows) == 0:
        return img
    margin = max(1, round(pad * max(img.size)))
    top, bottom = max(0, rows[0] - margin), min(arr.shape[0], rows[-1] + 1 + margin)
    left, right = max(0, cols[0] - margin), min(arr.shape[1], cols[-1] + 1 + margin)
    return img.crop((int(left), int(top), int(right), int(bottom)))


def letterbox(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Fit ``img`` inside ``size`` = (H, W) keeping its aspect ratio; pad with its border's median colour."""
    return Image.fromarray(letterbox_array(img, size), img.mode)


def letterbox_array(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """``letterbox``'s pixels: (H, W) or (H, W, 3) uint8."""
    height, width = size
    w, h = img.size
    scale = min(width / w, height / h)
    new_w, new_h = max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale)))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    arr = np.asarray(img)
    if (new_w, new_h) == (width, height):
        return arr
    canvas = np.empty((height, width, *arr.shape[2:]), np.uint8)
    canvas[...] = border_colour(arr)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = arr
    return canvas


def to_array(img: Image.Image, spec: Preprocess) -> np.ndarray:
    """Preprocess a decoded image: ``(channels, H, W)`` float32, normalised as ``spec`` says."""
    mode = "L" if spec.channels == 1 else "RGB"
    img = img if img.mode == mode else img.convert(mode)
    arr = letterbox_array(trim(img) if spec.resize == "trim" else img, spec.size).astype(np.float32) / 255.0
    arr = arr[None, :, :] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if spec.invert:
        arr = 1.0 - arr
    return normalise(arr, spec)


def normalise(unit: np.ndarray, spec: Preprocess) -> np.ndarray:
    """[0, 1] intensities, inverted already where ``spec`` inverts, ``(C, H, W)`` or ``(n, C, H, W)`` → the
    encoder's input: ``(x^gamma - mean) / std``, float32."""
    x = np.asarray(unit, np.float32)
    if spec.gamma != 1.0:
        x = np.power(np.maximum(x, 0.0), np.float32(spec.gamma), dtype=np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def denormalise(inputs: np.ndarray, spec: Preprocess) -> np.ndarray:
    """``normalise``'s inverse: the encoder's input space (a decoder's output too) → intensities, not clipped (a
    decoder may overshoot; below 0, where the power has no real inverse, gamma's undoing gives 0)."""
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    unit = np.asarray(inputs, np.float32) * std + mean
    if spec.gamma != 1.0:
        unit = np.power(np.maximum(unit, 0.0), np.float32(1.0 / spec.gamma), dtype=np.float32)
    return unit
