"""``simsearch eval --report DIR``: PNG figures and one self-contained ``report.html`` (figures inlined).

Figures: ROC curves, DET curves, genuine-versus-impostor distance histograms, the confusion matrix of the
k-NN vote, and the worst errors as neighbour grids. matplotlib is imported here only.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np

from simsearch.evaluation.run import EvalReport
from simsearch.evaluation.scoring import EncoderResult
from simsearch.io import decode_image, letterbox, read_file

FIGURES = {
    "roc.png": "ROC curves: share of genuine pairs accepted (TAR) against share of impostor pairs accepted (FAR, "
    "log scale). Higher and further left is better; the dot is the model's stored threshold.",
    "det.png": "DET curves: FRR against FAR on normal-deviate scales. Lower and further left is better; the dashed "
    "diagonal is FAR = FRR, so each curve crosses it at its EER.",
    "distances.png": "Distances of genuine pairs (same label) and impostor pairs (different labels), one panel per "
    "encoder. The less the two overlap, the better the threshold separates them.",
    "confusion.png": "Confusion matrix of the model's k-NN vote: rows are the true labels, columns the voted ones, "
    "each row scaled to 1. A perfect model is a bright diagonal.",
    "errors.png": "The model's worst errors: each row is a query (first, framed blue) answered wrongly, then its "
    "nearest neighbours with their label and distance, framed green when the label equals the query's and red "
    "otherwise.",
}

FIGURE_LABELS = {
    "vote_accuracy": "k-NN vote accuracy",
    "precision_at_1": "1-NN accuracy (precision@1)",
    "vote_ties": "queries whose vote tied",
    "precision_at_k": "precision@k",
    "recall_at_k": "recall@k",
    "r_precision": "R-precision",
    "map_at_r": "MAP@R",
    "roc_auc": "ROC AUC",
    "eer": "EER",
    "far_at_threshold": "FAR at threshold",
    "frr_at_threshold": "FRR at threshold",
    "open_set_accuracy": "open-set accuracy",
    "known_accuracy": "known-label accuracy (open set)",
    "unknown_rejected": "unknown labels rejected (open set)",
    "unfamiliar_queries": "queries flagged unfamiliar",
}


def figure_rows(report: EvalReport) -> list[tuple[str, list[str]]]:
    """(metric label, one cell per encoder) for every metric any encoder has: "value [low, high]" or "–"."""
    rows = []
    for key, label in FIGURE_LABELS.items():
        cells = [format_figure(r.figures.get(key)) for r in report.results]
        if any(cell != "–" for cell in cells):
            rows.append((label[:-1] + str(report.k) if label.endswith("@k") else label, cells))
    return rows


def format_figure(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, tuple):
        v, low, high = value
        return "–" if np.isnan(v) else f"{v:.3f} [{low:.3f}, {high:.3f}]"
    return str(value)


def write_report(report: EvalReport, folder: Path) -> Path:
    """Write the PNGs and ``report.html`` into ``folder``; return the HTML's path."""
    import matplotlib

    matplotlib.use("Agg")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = report.results[0]
    plot_roc(report.results, folder / "roc.png")
    plot_det(report.results, folder / "det.png")
    plot_distances(report.results, folder / "distances.png")
    plot_confusion(model, folder / "confusion.png")
    if model.errors:
        plot_errors(report, model, folder / "errors.png")
    page = folder / "report.html"
    page.write_text(render_html(report, folder))
    return page


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)


def plot_roc(results: list[EncoderResult], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in results:
        far, tar = r.roc.far[1:], r.roc.tar[1:]
        auc = r.figures["roc_auc"][0]
        (line,) = ax.plot(np.maximum(far, 1e-5), tar, label=f"{r.name} (AUC {auc:.3f})")
        if r.threshold is not None:
            i = int(np.searchsorted(r.roc.thresholds, r.threshold.threshold, side="right")) - 1
            ax.plot(max(r.roc.far[i], 1e-5), r.roc.tar[i], "o", color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("FAR (impostor pairs accepted)")
    ax.set_ylabel("TAR (genuine pairs accepted)")
    ax.set_title("ROC")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_det(results: list[EncoderResult], path: Path) -> None:
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    ticks = np.array([0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95])
    fig, ax = plt.subplots(figsize=(5.5, 5))
    lo, hi = norm.ppf(5e-4), norm.ppf(0.99)
    for r in results:
        far = np.clip(r.roc.far, 5e-4, 0.99)
        frr = np.clip(r.roc.frr, 5e-4, 0.99)
        ax.plot(norm.ppf(far), norm.ppf(frr), label=f"{r.name} (EER {r.figures['eer'][0]:.3f})")
    ax.plot([lo, hi], [lo, hi], "k--", linewidth=0.8)
    ax.set_xticks(norm.ppf(ticks), [f"{t:.1%}" for t in ticks])
    ax.set_yticks(norm.ppf(ticks), [f"{t:.1%}" for t in ticks])
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("FAR")
    ax.set_ylabel("FRR")
    ax.set_title("DET")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    _save(fig, path)


def plot_distances(results: list[EncoderResult], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(6.5, 2.4 * len(results)), squeeze=False)
    for ax, r in zip(axes[:, 0], results, strict=True):
        bins = np.linspace(0, max(r.genuine.max(), r.impostor.max()) * 1.02, 60)
        ax.hist(r.impostor, bins=bins, alpha=0.6, density=True, label=f"impostor pairs ({len(r.impostor)})")
        ax.hist(r.genuine, bins=bins, alpha=0.6, density=True, label=f"genuine pairs ({len(r.genuine)})")
        if r.threshold is not None:
            ax.axvline(r.threshold.threshold, color="k", linestyle="--", label=f"threshold ({r.threshold.name})")
        ax.set_title(r.name)
        ax.set_xlabel("distance")
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_confusion(result: EncoderResult, path: Path) -> None:
    import matplotlib.pyplot as plt

    matrix = result.confusion.astype(np.float64)
    rows = matrix.sum(1, keepdims=True)
    scaled = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    n_rows, n_cols = scaled.shape
    side = min(12, 3 + 0.3 * n_cols)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(scaled, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046)
    columns = [*result.classes, "unknown"][:n_cols]
    if n_cols <= 40:
        ax.set_xticks(range(n_cols), columns, rotation=90, fontsize=7)
        ax.set_yticks(range(n_rows), result.classes, fontsize=7)
        if n_cols <= 12:
            for i in range(n_rows):
                for j in range(n_cols):
                    if matrix[i, j]:
                        ax.text(
                            j,
                            i,
                            str(int(matrix[i, j])),
                            ha="center",
                            va="center",
                            color="w" if scaled[i, j] < 0.5 else "k",
                            fontsize=7,
                        )
    ax.set_xlabel("voted label")
    ax.set_ylabel("true label")
    ax.set_title(f"{result.name}: k-NN vote")
    _save(fig, path)


def thumbnail(path: Path, size: int = 96) -> np.ndarray:
    img = decode_image(read_file(path), str(path)).convert("RGB")
    return np.asarray(letterbox(img, (size, size)))


def plot_errors(report: EvalReport, result: EncoderResult, path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    cases = result.errors
    width = 1 + max(len(c.neighbours) for c in cases)
    fig, axes = plt.subplots(len(cases), width, figsize=(1.3 * width, 1.55 * len(cases)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, case in enumerate(cases):
        cells = [(case.query, f"query: {case.truth}\nvoted: {case.predicted}", "tab:blue")]
        for n, d in zip(case.neighbours, case.distances, strict=True):
            label = report.image_labels[n]
            cells.append((n, f"{label}\nd={d:.3f}", "tab:green" if label == case.truth else "tab:red"))
        for col, (image_row, title, colour) in enumerate(cells):
            ax = axes[row, col]
            ax.imshow(thumbnail(report.paths[image_row]))
            ax.add_patch(Rectangle((0, 0), 95, 95, fill=False, edgecolor=colour, linewidth=4))
            ax.set_title(title, fontsize=6)
    _save(fig, path)


def render_html(report: EvalReport, folder: Path) -> str:
    e = html.escape
    head = "".join(f"<th>{e(r.name)}</th>" for r in report.results)
    body = "".join(
        f"<tr><td>{e(label)}</td>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>"
        for label, cells in figure_rows(report)
    )
    model = report.results[0]
    threshold = (
        f"threshold {model.threshold.threshold:.4f} ({e(model.threshold.name)})"
        if model.threshold
        else "no stored threshold"
    )
    figures = ""
    for name, caption in FIGURES.items():
        file = folder / name
        if file.exists():
            data = base64.b64encode(file.read_bytes()).decode()
            figures += f'<figure><img src="data:image/png;base64,{data}" alt="{e(name)}"><figcaption>{e(caption)}</figcaption></figure>'
    notes = "".join(f"<li>{e(n)}</li>" for n in report.notes)
    unknown = (
        f"<li>Labels kept out of the gallery (unknown): {e(', '.join(report.unknown_labels))}</li>"
        if report.unknown_labels
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>simsearch eval — {e(report.folder)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }}
th {{ background: #f0f0f0; }} figure {{ margin: 2em 0; }} img {{ max-width: 100%; }}
figcaption {{ color: #555; font-size: 0.9em; max-width: 800px; }}
</style></head><body>
<h1>simsearch eval</h1>
<ul>
<li>Folder: {e(report.folder)} — {report.images} images, {report.labels} labels
({report.unlabelled} unlabelled images and {len(report.skipped)} files that could not be used left out)</li>
<li>Protocol: {e(report.mode)}; {report.queries} queries against a gallery of {report.gallery}; k = {report.k}</li>
<li>Model: {e(model.name)} ({e(model.family)}), {threshold}</li>
<li>Verification pairs: {model.figures["pairs"]["genuine"]} genuine, {model.figures["pairs"]["impostor"]} impostor</li>
{unknown}{notes}
</ul>
<p>Each figure is the point estimate with its 95% bootstrap interval (queries or pairs resampled).</p>
<table><tr><th>metric</th>{head}</tr>{body}</table>
{figures}
</body></html>
"""
