"""``simsearch verify``: is this pair the same identity?"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from simsearch.cli.core import _errors, _unchanged, app
from simsearch.cli.options import (
    FAR_HELP,
    MODEL_HELP,
    SOURCE_NAME_HELP,
    THRESHOLD_HELP,
    _channels_option,
    _home_option,
)
from simsearch.cli.render import _ChannelNote, _print_json, _render_pairs, _render_verdict, _RichProgress, out


@app.command()
def verify(
    images: list[Path] | None = typer.Argument(None, help="Two images: are they the same identity?"),
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    name: str | None = typer.Option(None, "--name", "-n", help=SOURCE_NAME_HELP),
    home: Path = _home_option(),
    threshold: str = typer.Option("auto", "--threshold", help=THRESHOLD_HELP),
    far: float | None = typer.Option(None, "--far", help=FAR_HELP),
    pairs: Path | None = typer.Option(
        None, "--pairs", help="A CSV with columns a,b[,label] (paths relative to the CSV) to verify many pairs."
    ),
    channels: str = _channels_option(),
    convert: bool = typer.Option(False, "--convert", hidden=True, help="The older spelling of --channels convert."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    device: str = typer.Option("auto", "--device", help="Where to run the encoder: auto, cpu or cuda."),
) -> None:
    """Decide whether two images show the same identity (signature, face, character).

    Exit code: 0 match, 1 no match, 2 error. With --pairs: 0 when every pair was verified.

    Example: simsearch verify a.png b.png --model models/sig --far 0.01
    """
    with _errors(_unchanged("verify"), exit_code=2):
        from simsearch.errors import UsageError
        from simsearch.verification import (
            Verifier,
            load_encoder,
            operating_point,
            pair_metrics,
            read_pairs,
            verdict_json,
        )

        images = images or []
        if pairs is None and len(images) != 2:
            raise UsageError(f"verify takes exactly two images (or --pairs FILE), not {len(images)}")
        if pairs is not None and images:
            raise UsageError("give either two images or --pairs FILE, not both")
        encoder, source = load_encoder(model, name, home, device)
        point = operating_point(encoder, threshold, far)
        verifier = Verifier(encoder)
        if pairs is None:
            with _ChannelNote("convert" if convert else channels) as note:
                verdict = verifier.verify(images[0], images[1], point)
            if as_json:
                _print_json(verdict_json(verdict, point, source) | {"channels": note.tally.to_json()})
            else:
                _render_verdict(verdict)
                _render_calibration(encoder.threshold, point)
            raise typer.Exit(0 if verdict.match else 1)
        with _RichProgress(), _ChannelNote("convert" if convert else channels) as note:
            verdicts = verifier.verify_pairs(read_pairs(pairs), point)
        summary = pair_metrics(verdicts)
        if as_json:
            _print_json(
                {
                    "source": source,
                    "calibration": point.calibration,
                    "pairs": [v.to_json() for v in verdicts],
                    "metrics": summary,
                    "channels": note.tally.to_json(),
                }
            )
            return
        _render_pairs(verdicts, summary)
        _render_calibration(encoder.threshold, point)


def _render_calibration(record: dict[str, Any] | None, point: Any) -> None:
    """How the stored threshold was obtained (when it is the one in use) and what the match probability means."""
    from simsearch.verification import describe_calibration

    if record and point.name != "manual":
        out.print(describe_calibration(record))
    if point.prior is not None:
        out.print(
            f"The match probability assumes a prior match rate of {point.prior:.1%}: the one at which threshold "
            f"{point.threshold:.4f} is the break-even point (probability 0.5 there)."
        )
