"""The channel rule: what happens to an image whose colour differs from a model's input (a colour photo for a
model trained on grey images, a grey scan for a colour one). One rule for every path that fits images to an
existing model — ``query``, ``verify``, ``eval``, ``index`` into a collection, the service's uploads, the latent
tools — so that one file is treated the same whichever command reads it:

- ``convert`` (the default): colour becomes grey by luminance (ITU-R 601-2: 0.299 R + 0.587 G + 0.114 B), grey
  becomes colour by repeating its channel. Each conversion is counted, and a front end says how many in one note
  (``ChannelTally.note``).
- ``strict``: such an image is refused, with an ``ImageError`` (``refusal``) — skipped and listed like any file
  that cannot be used, or fatal where one bad file is (a named file, ``strict``).

Loading takes the rule as an argument (``load_images(..., channels=...)``) or, when given none, from the
innermost ``channel_rule`` block of the calling thread: a front end wraps a command's work in one, whichever
library path does the embedding, and reads the tally it yields afterwards::

    with channel_rule("convert") as tally:
        results = searcher.query_files(paths, k=9)
    if tally.note():
        print("Note:", tally.note())
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field

from simsearch.errors import ImageError, UsageError, option

#: The rules, the default first.
CHANNEL_RULES = ("convert", "strict")


@dataclass
class ChannelTally:
    """What a ``channel_rule`` block did: its ``rule``, and how many distinct images (by content) it converted
    each way — an image loaded twice in the block (``eval`` reads the model's images again for the baselines) is
    counted once."""

    rule: str = "convert"
    to_grey: int = 0  # colour images made grey for a grey model
    to_colour: int = 0  # grey images made colour for a colour model
    refused: int = 0  # images refused (``strict``)
    seen: set[str] = field(default_factory=set, repr=False)  # the sha256 of each image counted

    def count(self, model_channels: int, sha256: str) -> None:
        """The image of content ``sha256`` was converted for a model of ``model_channels`` channels."""
        if sha256 in self.seen:
            return
        self.seen.add(sha256)
        if model_channels == 1:
            self.to_grey += 1
        else:
            self.to_colour += 1

    @property
    def converted(self) -> int:
        return self.to_grey + self.to_colour

    def note(self) -> str | None:
        """The one line that says what was converted (options named with ``errors.option``), or None."""
        parts = []
        if self.to_grey:
            parts.append(f"{_images(self.to_grey, 'colour')} converted to grey (by luminance) for a grey model")
        if self.to_colour:
            parts.append(f"{_images(self.to_colour, 'grey')} converted to colour (channel repeated) for a colour model")
        if not parts:
            return None
        return f"{' and '.join(parts)}; {option('channels', 'strict')} refuses such images instead"

    def refusals(self) -> str | None:
        """The one line that says how many images ``strict`` refused, with the remedy, or None."""
        if not self.refused:
            return None
        n = self.refused
        return (
            f"{n:,} image{'' if n == 1 else 's'} whose colour differs from the model's {'was' if n == 1 else 'were'} "
            f"refused ({option('channels', 'strict')}); {option('channels', 'convert')} converts such images instead"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "converted_to_grey": self.to_grey,
            "converted_to_colour": self.to_colour,
            "refused": self.refused,
        }


def _images(n: int, kind: str) -> str:
    return f"{n} {kind} image was" if n == 1 else f"{n:,} {kind} images were"


def check_rule(rule: str) -> str:
    """``rule``, if it is one of ``CHANNEL_RULES``; else a usage error."""
    if rule not in CHANNEL_RULES:
        raise UsageError(f"{option('channels')} must be {' or '.join(CHANNEL_RULES)}, not {rule!r}")
    return rule


def mismatch(model_channels: int, grey: bool) -> bool:
    """Whether an image (``grey``: it carries no colour) differs in colour from a model's input."""
    return (model_channels == 1) != grey


class ChannelRefused(ImageError):
    """An image that the ``strict`` channel rule refuses: its colour differs from the model's input."""


#: What ``strict`` says of an image refused for a grey model, and for a colour model.
REFUSED = {
    1: "a colour image, but the model takes grey images (1 channel)",
    3: "a grey image, but the model takes colour images (3 channels)",
}


def refusal(model_channels: int, name: str) -> ChannelRefused:
    """Why ``strict`` refuses the image of the file ``name`` for a model of ``model_channels`` channels."""
    if model_channels == 1:
        return ChannelRefused(
            REFUSED[1],
            file=name,
            remedy=f"pass {option('channels', 'convert')} to convert it to grey by luminance, or use a model trained "
            "on colour images",
        )
    return ChannelRefused(
        REFUSED[3],
        file=name,
        remedy=f"pass {option('channels', 'convert')} to repeat its channel, or use a model trained on grey images",
    )


_scope: contextvars.ContextVar[ChannelTally | None] = contextvars.ContextVar("simsearch_channel_rule", default=None)


@contextlib.contextmanager
def channel_rule(rule: str = "convert") -> Iterator[ChannelTally]:
    """Within the block (in this thread), images loaded for a model without a rule of their own follow ``rule``,
    and the conversions are counted in the ``ChannelTally`` it yields."""
    tally = ChannelTally(check_rule(rule))
    token = _scope.set(tally)
    try:
        yield tally
    finally:
        _scope.reset(token)


def current_rule(rule: str | None = None) -> str:
    """``rule`` when one is given, else the rule of the innermost ``channel_rule`` block, else ``convert``."""
    if rule is not None:
        return check_rule(rule)
    tally = _scope.get()
    return tally.rule if tally is not None else CHANNEL_RULES[0]


def current_tally() -> ChannelTally | None:
    """The tally of the innermost ``channel_rule`` block of this thread, or None outside one."""
    return _scope.get()
