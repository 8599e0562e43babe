"""Everything the CLI prints, rendered as text: file names, labels, paths and error messages are user data, so
they are never parsed as rich markup and their control characters are escaped (``\\x1b``), never sent to the
terminal raw. The consoles here do that for every string they render; the progress bar and the JSON output,
which rich renders by other paths, call ``shown`` (or ``_json_text``) themselves.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from rich.style import Style

    from simsearch.indexing import IndexReport
    from simsearch.search import QueryResult


def shown(value: object) -> str:
    """``value`` as text that a terminal shows as it is: each control or other non-printable character (ESC,
    BEL, newline, DEL, C1 controls, bidi overrides, bytes that are not UTF-8) written as its escape (``\\x1b``,
    ``\\n``, ``\\u202e``, ``\\xff``); every other character, é and 中 included, kept."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    if "\udc80" <= char <= "\udcff":  # a byte of a file name that is not UTF-8 (os.fsdecode): show the byte
        return f"\\x{ord(char) - 0xDC00:02x}"
    return char.encode("unicode_escape").decode("ascii")


class TextConsole(Console):
    """A console that renders every string as text, through ``shown``: no markup, emoji codes or highlighting,
    and no raw control characters, whatever a file name holds. Tables' cells and titles, printed lines and
    error lines all reach the terminal this way."""

    def render_str(
        self,
        text: str,
        *,
        style: str | Style = "",
        justify: Any = None,
        overflow: Any = None,
        emoji: bool | None = None,
        markup: bool | None = None,
        highlight: bool | None = None,
        highlighter: Any = None,
    ) -> Text:
        return Text(shown(text), style=style, justify=justify, overflow=overflow)


out = TextConsole(highlight=False, soft_wrap=True)


err = TextConsole(stderr=True, highlight=False, soft_wrap=True)


def _json_text(data: Any) -> str:
    """``data`` as indented JSON whose strings hold printable characters only: ``json`` escapes the C0 controls
    itself; DEL, C1 controls, bidi overrides and lone surrogates are escaped here as ``\\uXXXX``, so a parser
    still reads back the exact names."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if text.replace("\n", "").isprintable():  # raw newlines lie only between tokens, never inside strings
        return text
    return "".join(c if c.isprintable() or c == "\n" else _json_escape(c) for c in text)


def _json_escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # beyond the basic plane: a UTF-16 surrogate pair, as JSON spells it
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _print_json(data: Any) -> None:
    """Print ``data`` for scripts: what ``Console.print_json`` prints, but with ``_json_text``'s escapes."""
    from rich.highlighter import JSONHighlighter

    text = JSONHighlighter()(_json_text(data))
    text.no_wrap = True
    text.overflow = None
    out.print(text, soft_wrap=True)


#: A task whose steps are epochs: the training loop's (``training autoencoder``, ``fold 2/4: training siamese …``).
_EPOCHS = re.compile(r"(?:^|: )training ")


class _PlainProgress:
    """Progress as plain lines, for a stderr that is no terminal (a log, CI): ``training autoencoder: epoch 3/60 ·
    loss 0.0123``. A task gets a line when it starts, then one every ``seconds``, or sooner when another
    1/``steps`` of it is done (but never two within ``gap`` seconds), and always one for its last step."""

    def __init__(self, seconds: float = 10.0, steps: int = 10, gap: float = 2.0, clock: Any = None) -> None:
        self.seconds, self.steps, self.gap = seconds, steps, gap
        self.clock = clock or time.monotonic
        self.last: dict[str, tuple[float, int, int]] = {}  # task → (time, bucket, done) of its last line

    def __call__(self, task: str, done: int, total: int | None, note: str = "") -> None:
        now = self.clock()
        finished = total is not None and done >= total
        bucket = done * self.steps // total if total else 0
        previous = self.last.get(task)
        if previous is not None:
            at, last_bucket, last_done = previous
            if done == last_done:
                return
            waited = now - at
            restarted = done < last_done  # the same task again (a second batch of queries, say)
            if not (finished or restarted or waited >= self.seconds or (bucket > last_bucket and waited >= self.gap)):
                return
        self.last[task] = (now, bucket, done)
        err.print(self.line(task, done, total, note), soft_wrap=True)

    @staticmethod
    def line(task: str, done: int, total: int | None, note: str = "") -> str:
        """``task: [epoch ]done/total · note``, or ``task: done · note`` when the total is not known."""
        unit = "epoch " if _EPOCHS.search(task) else ""
        count = f"{unit}{done}/{total}" if total is not None else f"{unit}{done}"
        return f"{task}: {count}" + (f" · {note}" if note else "")


#: ``SIMSEARCH_PROGRESS``: ``auto`` (bars on a terminal, plain lines elsewhere), ``lines`` or ``off``.
PROGRESS_MODES = ("auto", "lines", "off")


def progress_mode() -> str:
    """How progress is shown, from ``SIMSEARCH_PROGRESS`` (an unknown value is ``auto``)."""
    mode = os.environ.get("SIMSEARCH_PROGRESS", "auto").strip().lower()
    return mode if mode in PROGRESS_MODES else "auto"


class _RichProgress:
    """Renders the library's progress callbacks on stderr: as rich bars on a terminal, as occasional plain lines
    elsewhere (``_PlainProgress``: a log, CI), or not at all, as ``SIMSEARCH_PROGRESS`` says (``progress_mode``)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        mode = progress_mode()
        bars = mode == "auto" and err.is_terminal
        self.plain = _PlainProgress() if mode == "lines" or (mode == "auto" and not bars) else None

        self.bar = Progress(  # its text columns build their Text themselves: markup off, values through shown
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}", markup=False),
            console=err,
            transient=True,
            disable=not bars,
        )
        self.tasks: dict[str, Any] = {}

    def __call__(self, task: str, done: int, total: int | None, note: str = "") -> None:
        if self.plain is not None:
            self.plain(task, done, total, note)
        if self.plain is not None or self.bar.disable:
            return
        if task not in self.tasks:
            self.tasks[task] = self.bar.add_task(shown(task), total=total, note=shown(note))
        self.bar.update(self.tasks[task], completed=done, total=total, note=shown(note))

    def __enter__(self) -> _RichProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(None, None, None)


def with_article(word: str) -> str:
    """``word`` after "a" or "an" as it is read: ``an autoencoder``, ``a vae`` (vee-ay-ee), ``a siamese``."""
    return f"{'an' if word[:1].lower() in 'aeio' else 'a'} {word}"


def _describe_training(family: str, dim: int, shape: tuple[int, ...], t: dict[str, Any]) -> str:
    size = "×".join(map(str, shape))
    if family == "pixels":
        return f"Using raw pixels as embeddings (input {size}, d={dim})."
    if family == "pca":
        return f"Fitted PCA (input {size}, d={dim}) on {t.get('images')} images."
    validated = (
        f"best {t.get('validation_metric')} {t['best_validation']:.4f}"
        if t.get("best_validation") is not None
        else "not validated: no held-out images to measure it on (add more images per label)"
    )
    return (
        f"Trained {with_article(family)} encoder (input {size}, d={dim}) on {t.get('images')} images: {t.get('epochs_run')} "
        f"epochs in {t.get('seconds', 0):.0f} s on {t.get('device')}, {validated}."
    )


def _render_index_report(report: IndexReport) -> None:
    if report.discarded_rebuild:
        out.print("An unfinished rebuild made with another encoder was dropped; this rebuild started over.")
    if report.resumed:
        out.print("Resumed the unfinished rebuild: the images it had committed were not embedded again.")
    if report.moved_from:
        out.print(
            f"{report.moved} images of {report.moved_from} (a path that is gone) were found under {report.root}: "
            "the folder was moved, so they were kept, not indexed again."
        )
    if report.trained:
        if report.training.get("resumed_from"):
            out.print(f"Resumed an interrupted training from its checkpoint ({report.training['resumed_from']}).")
        out.print(_describe_training(report.encoder_family, report.encoder_dim, report.input_shape, report.training))
    if report.baselines is not None:
        from simsearch.cli.options import cli_spelling
        from simsearch.errors import spell

        for line in report.baselines.lines():
            out.print(spell(line, cli_spelling))
    if report.embedded == 0 and not report.removed:
        out.print(f"Nothing to embed: all {report.unchanged} images are unchanged.")
    table = Table(title=f"Collection {report.collection}", show_header=False, title_justify="left")
    for key, value in (
        ("found", report.found),
        ("added", report.added),
        ("updated", report.updated),
        ("removed", report.removed),
        ("unchanged", report.unchanged),
        ("skipped", len(report.skipped)),
        ("images in collection", report.count),
        ("encoder", f"{report.encoder_family} {report.encoder_fingerprint[:12]} on {report.device}"),
        ("time", f"{report.seconds:.1f} s"),
    ):
        table.add_row(key, str(value))
    out.print(table)
    if report.skipped:
        skipped = Table("skipped file", "reason", title="Skipped (not indexed)", title_justify="left")
        for s in report.skipped[:20]:
            skipped.add_row(s.rel, s.reason)
        out.print(skipped)
        if len(report.skipped) > 20:
            out.print(f"… and {len(report.skipped) - 20} more: see 'simsearch info --skipped'.")
    if report.rebuild_waiting:
        out.print("An unfinished rebuild waits beside this collection: run 'index … --rebuild' again to finish it.")
    if report.channels is not None:
        _print_channel_notes(report.channels, refusals=True)


def _render_result(result: QueryResult) -> None:
    if result.unknown and result.threshold is not None:
        caption = "vote: unknown (unfamiliar input)" if result.unfamiliar else f"vote: unknown ({result.reason})"
    elif result.tie:
        shown_n = len(result.neighbours)
        each = "equal weight" if result.weights is not None else f"{result.votes[result.tie[0]]}/{shown_n} each"
        caption = f"vote: tie between {', '.join(result.tie)} ({each}); the nearest of them: {result.vote}"
    elif result.vote is not None:
        caption = f"vote: {result.vote} ({result.votes[result.vote]}/{len(result.neighbours)})"
        caption += f", {result.vote_share:.0%} of the weight" if result.weights is not None else ""
    else:
        caption = "vote: none (no labelled neighbours)"
    query = result.query if result.query_id is None else f"id {result.query_id} ({result.query})"
    table = Table("rank", "distance", "path", "label", title=f"{query} — {caption}", title_justify="left")
    for n in result.neighbours:
        table.add_row(str(n.rank), f"{n.distance:.4f}", n.path, n.label or "")
    out.print(table)
    if result.unfamiliar:
        from simsearch.models.novelty import REMEDY, unfamiliar_text

        out.print(f"{unfamiliar_text(result.query)}: its neighbours mean little — {REMEDY}.")


def _describe_index(info: dict[str, Any]) -> str:
    kind = info.get("type", "?")
    if info.get("exact", kind == "flat"):
        return f"{kind} (exact)"
    knobs = ", ".join(
        f"{k} {info[k]}"
        for k in ("nlist", "pq_m", "pq_bits", "hnsw_m", "nprobe", "ef", "ef_cpu", "refine")
        if k in info
    )
    recall = info.get("recall_at_10")
    measured = (
        f"; recall@10 {recall:.3f} on {info.get('recall_queries')} held-out vectors" if recall is not None else ""
    )
    if "recall_at_10_cpu" in info:
        measured += f" ({info['recall_at_10_cpu']:.3f} searched on a CPU)"
    return f"{kind} ({knobs}{measured})"


def _point_text(verdict: Any) -> str:
    point = verdict.point
    if point.name == "manual":
        return "threshold given with --threshold"
    name = "EER point" if point.name == "eer" else point.name.upper().replace("FAR=", "FAR ≤ ")
    if point.far is None or point.frr is None:
        return f"{name} of held-out images of the training identities: not calibrated on unseen identities"
    return f"{name}: FAR {point.far:.2%}, FRR {point.frr:.2%} on held-out pairs"


def _render_verdict(verdict: Any) -> None:
    if verdict.unfamiliar:
        out.print(f"NO MATCH: {verdict.a} ↔ {verdict.b}")
        out.print(f"{verdict.reason}.")
        out.print(
            f"distance {verdict.distance:.4f}, threshold {verdict.point.threshold:.4f} ({_point_text(verdict)}): "
            "not compared, as an unfamiliar input is never a match"
        )
        return
    sign = "≤" if verdict.match else ">"
    word = "MATCH" if verdict.match else "NO MATCH"
    probability = f"; match probability {verdict.probability:.3f}" if verdict.probability is not None else ""
    out.print(f"{word}: {verdict.a} ↔ {verdict.b}")
    out.print(
        f"distance {verdict.distance:.4f} {sign} threshold {verdict.point.threshold:.4f} ({_point_text(verdict)})"
        f"{probability}"
    )


def _render_pairs(verdicts: list[Any], summary: dict[str, Any] | None, limit: int = 50) -> None:
    table = Table("a", "b", "distance", "verdict", "probability", "label", title="Pairs", title_justify="left")
    for v in verdicts[:limit]:
        probability = f"{v.probability:.3f}" if v.probability is not None else "–"
        label = "" if v.label is None else ("same" if v.label else "different")
        verdict = "unfamiliar" if v.unfamiliar else "match" if v.match else "no match"
        table.add_row(v.a, v.b, f"{v.distance:.4f}", verdict, probability, label)
    out.print(table)
    if len(verdicts) > limit:
        out.print(f"… and {len(verdicts) - limit} more pairs: use --json for all of them.")
    matches = sum(v.match for v in verdicts)
    out.print(
        f"{matches} of {len(verdicts)} pairs match at threshold {verdicts[0].point.threshold:.4f} "
        f"({_point_text(verdicts[0])})."
    )
    flagged = list(dict.fromkeys(name for v in verdicts for name in v.unfamiliar or ()))
    if flagged:
        from simsearch.models.novelty import REMEDY

        shown_names = ", ".join(flagged[:3]) + (f" and {len(flagged) - 3} more" if len(flagged) > 3 else "")
        n = sum(bool(v.unfamiliar) for v in verdicts)
        out.print(
            f"{n} {'pair was' if n == 1 else 'pairs were'} not compared (unfamiliar input): {shown_names} "
            f"{'is' if len(flagged) == 1 else 'are'} unlike the images this model was trained on — {REMEDY}."
        )
    if summary:
        lines = [
            f"accuracy {summary['accuracy']:.3f}",
            f"FAR {summary['far']:.3f}" if summary["far"] is not None else None,
            f"FRR {summary['frr']:.3f}" if summary["frr"] is not None else None,
        ]
        for key, label in (("roc_auc", "ROC AUC"), ("eer", "EER")):
            if key in summary:
                value, low, high = summary[key]
                lines.append(f"{label} {value:.3f} [{low:.3f}, {high:.3f}]")
        out.print(
            f"Labelled pairs ({summary['genuine']} same, {summary['impostor']} different): "
            + ", ".join(x for x in lines if x)
        )


def _render_eval(result: Any, source: str) -> None:
    from simsearch.evaluation.report import figure_rows

    pairs = result.results[0].figures["pairs"]
    out.print(
        f"{result.folder}: {result.images} images, {result.labels} labels; {result.mode}; {result.queries} queries, "
        f"gallery {result.gallery}; {pairs['genuine']} genuine and {pairs['impostor']} impostor pairs. Encoder: {source}. "
        f"Votes: {result.vote}."
    )
    table = Table(
        "metric", *(r.name for r in result.results), title="Value [95% bootstrap interval]", title_justify="left"
    )
    for label, cells in figure_rows(result):
        table.add_row(label, *cells)
    out.print(table, width=None if out.is_terminal else 200)  # piped: one line per metric, not wrapped at 80
    model = result.results[0]
    if model.threshold is not None:
        out.print(f"Threshold {model.threshold.threshold:.4f} ({model.threshold.name}).")
    for note in result.notes:
        out.print(note)
    if result.skipped or result.unlabelled:
        files = f"{len(result.skipped)} file{'' if len(result.skipped) == 1 else 's'} that could not be used"
        out.print(
            f"Left out: {files}, {result.unlabelled} image{'' if result.unlabelled == 1 else 's'} without a label."
        )
        for skipped in result.skipped[:5]:
            out.print(f"  {skipped.rel}: {skipped.reason}")
        if len(result.skipped) > 5:
            out.print(f"  … and {len(result.skipped) - 5} more (--json lists them all: skipped_files)")


def _print_skipped(errors: list[Any]) -> None:
    """List the files under folders that could not be used (on stderr), at most 20, then how many in all."""
    from simsearch.cli.options import cli_spelling

    for error in errors[:20]:
        err.print(f"Skipped {error.render(cli_spelling)}")
    if len(errors) > 20:
        err.print(f"… {len(errors)} files skipped in all.")


class _ChannelNote:
    """``with _ChannelNote(rule):`` — the command's images follow the channel rule ``rule`` (``io.channel_rule``)
    inside the block, and when it ends cleanly (``typer.Exit`` included: ``verify``'s verdict) one ``Note:`` line on
    stderr says how many were converted, the same words for every command."""

    def __init__(self, rule: str) -> None:
        from simsearch.io import channel_rule

        self.scope = channel_rule(rule)

    def __enter__(self) -> _ChannelNote:
        self.tally = self.scope.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        import click

        self.scope.__exit__(kind, exc, tb)
        if exc is None or isinstance(exc, click.exceptions.Exit):
            _print_channel_notes(self.tally)


def _print_channel_notes(tally: Any, refusals: bool = False) -> None:
    """The ``Note:`` lines (stderr) of a channel rule's tally (``io.ChannelTally``): how many images were converted,
    and with ``refusals`` how many were refused (where the refused files are listed without the remedy)."""
    from simsearch.cli.options import cli_spelling
    from simsearch.errors import spell

    for note in (tally.note(), tally.refusals() if refusals else None):
        if note:
            err.print(f"Note: {spell(note, cli_spelling)}.")
