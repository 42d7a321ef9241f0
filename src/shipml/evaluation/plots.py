"""Figures for the training report: each builder returns a labelled matplotlib ``Figure``.

Figures are made with ``matplotlib.figure.Figure`` and drawn by the Agg canvas directly, so no
pyplot state or global backend switch is involved: safe in servers, threads and notebooks.
A builder raises ValueError, with a sentence a reader understands, when the data cannot make
its plot (e.g. a class missing from the test set); the report shows that sentence instead.
"""

from __future__ import annotations

import base64
import io
import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "MAX_CURVE_CLASSES",
    "MAX_IMPORTANCE_BARS",
    "calibration_figure",
    "confusion_matrix_figure",
    "figure_to_data_uri",
    "importance_figure",
    "learning_curve_figure",
    "precision_recall_figure",
    "predicted_vs_actual_figure",
    "residuals_figure",
    "roc_figure",
    "search_history_figure",
]

MAX_CURVE_CLASSES = 10  # more one-vs-rest curves than this are unreadable on one axis
MAX_IMPORTANCE_BARS = 20
_SIZE = (6.0, 4.5)
_DPI = 100
_CHANCE: dict[str, Any] = {"color": "0.6", "linestyle": "--", "linewidth": 1}


def new_figure(size: tuple[float, float] = _SIZE) -> tuple[Figure, Axes]:
    fig = Figure(figsize=size, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _label(value: Any, limit: int = 30) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def figure_to_data_uri(fig: Figure) -> str:
    """The figure as ``data:image/png;base64,...``; the figure is closed afterwards."""
    buffer = io.BytesIO()
    try:
        # No metadata: the PNG then holds no version strings or links, and is a bit smaller.
        fig.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:  # only figures made through pyplot are registered there
            pyplot.close(fig)
        fig.clear()
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --- classification -------------------------------------------------------------------------------


def misclassified_figure(
    images: np.ndarray, truth: Sequence[Any], predicted: Sequence[Any], limit: int = 24
) -> Figure:
    """Up to ``limit`` misclassified test images (n, height, width, channels), each titled
    'true → predicted'."""
    n = min(len(images), limit)
    if n == 0:
        raise ValueError("no test image was misclassified")
    cols = min(n, 8)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(1.3 * cols, 1.5 * rows), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        image = images[i]
        gray = image.shape[-1] == 1
        shown = image[..., 0] if gray else np.clip(image / 255.0, 0, 1)
        ax.imshow(shown, cmap="gray_r" if gray else None, interpolation="nearest")
        ax.set_title(f"{_label(truth[i], 8)} → {_label(predicted[i], 8)}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def confusion_matrix_figure(y_true: Any, y_pred: Any, labels: Sequence[Any]) -> Figure:
    """Counts and the share of each true class (row-normalised) in every cell."""
    from sklearn.metrics import confusion_matrix

    labels = list(labels)
    counts = confusion_matrix(np.asarray(y_true), np.asarray(y_pred), labels=labels)
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    n = len(labels)
    side = min(4.5 + 0.25 * max(0, n - 4), 9.0)
    fig, ax = new_figure((side + 1.5, side))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the true class")
    names = [_label(c, 20) for c in labels]
    ax.set_xticks(range(n), names, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix (test set)")
    if n <= 20:  # beyond that the numbers overlap; the colours still tell the story
        size = 10 if n <= 6 else 7
        for i in range(n):
            for j in range(n):
                colour = "white" if share[i, j] > 0.5 else "black"
                text = f"{counts[i, j]}\n{100 * share[i, j]:.0f}%"
                ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=size)
    return fig


def _one_vs_rest(
    y_true: Any, proba: Any, classes: Sequence[Any], curve: str
) -> tuple[list[tuple[Any, np.ndarray, np.ndarray]], str]:
    """``(class, is_class, score)`` per class to draw, and a note for the title.

    Binary: the positive class (``classes[1]``) only. Multiclass: the most frequent classes in
    ``y_true``, at most MAX_CURVE_CLASSES. A class needs both positive and negative rows.
    """
    y = np.asarray(y_true)
    scores = np.asarray(proba, dtype=float)
    classes = list(classes)
    if scores.ndim != 2 or scores.shape[1] != len(classes):
        raise ValueError(f"{curve}: expected one probability column per class")
    if len(classes) == 2:
        positive = y == classes[1]
        if positive.all() or not positive.any():
            present = classes[1] if positive.any() else classes[0]
            raise ValueError(
                f"the test set holds only class '{present}'; a {curve} needs rows of both classes"
            )
        return [(classes[1], positive, scores[:, 1])], f"positive class '{_label(classes[1])}'"
    usable = [
        (c, y == c, scores[:, i]) for i, c in enumerate(classes) if 0 < int(np.sum(y == c)) < len(y)
    ]
    if not usable:
        raise ValueError(f"no class of the test set has both its own and other rows for a {curve}")
    usable.sort(key=lambda item: -int(item[1].sum()))
    shown = usable[:MAX_CURVE_CLASSES]
    if len(shown) < len(classes):
        return shown, f"one-vs-rest, {len(shown)} of {len(classes)} classes"
    return shown, "one-vs-rest"


def roc_figure(y_true: Any, proba: Any, classes: Sequence[Any]) -> Figure:
    """ROC curve(s) with the area under each in the legend, and the chance diagonal."""
    from sklearn.metrics import auc, roc_curve

    curves, note = _one_vs_rest(y_true, proba, classes, "ROC curve")
    fig, ax = new_figure()
    for cls, is_class, score in curves:
        fpr, tpr, _ = roc_curve(is_class, score)
        name = "ROC" if len(curves) == 1 and len(classes) == 2 else _label(cls)
        ax.plot(fpr, tpr, linewidth=1.8, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], label="chance", **_CHANCE)
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC curve ({note})")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def precision_recall_figure(y_true: Any, proba: Any, classes: Sequence[Any]) -> Figure:
    """Precision-recall curve(s) with average precision in the legend; the chance level is the
    positive share (binary only: one-vs-rest curves each have their own)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    curves, note = _one_vs_rest(y_true, proba, classes, "precision-recall curve")
    fig, ax = new_figure()
    for cls, is_class, score in curves:
        precision, recall, _ = precision_recall_curve(is_class, score)
        ap = average_precision_score(is_class, score)
        name = "model" if len(classes) == 2 else _label(cls)
        ax.step(recall, precision, where="post", linewidth=1.8, label=f"{name} (AP {ap:.3f})")
    if len(classes) == 2:
        prevalence = float(np.mean(curves[0][1]))
        ax.axhline(prevalence, label=f"chance ({prevalence:.2f})", **_CHANCE)
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.05))
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"Precision-recall curve ({note})")
    ax.legend(loc="lower left", fontsize="small")
    return fig


def calibration_figure(y_true: Any, proba: Any, classes: Sequence[Any]) -> Figure:
    """Reliability diagram. Binary: P(positive class) against the observed positive share;
    multiclass: the confidence in the predicted class against how often it is right."""
    from sklearn.calibration import calibration_curve

    y = np.asarray(y_true)
    scores = np.asarray(proba, dtype=float)
    classes = list(classes)
    if len(y) == 0:
        raise ValueError("the test set is empty")
    if len(classes) == 2:
        hits, confidence = y == classes[1], scores[:, 1]
        xlabel, ylabel = (
            f"predicted probability of '{_label(classes[1])}'",
            f"observed share of '{_label(classes[1])}'",
        )
    else:
        predicted = np.asarray(classes, dtype=object)[scores.argmax(axis=1)]
        hits, confidence = predicted == y, scores.max(axis=1)
        xlabel, ylabel = "confidence in the predicted class", "share predicted correctly"
    observed, predicted_mean = calibration_curve(hits, confidence, n_bins=10, strategy="uniform")
    fig, ax = new_figure()
    ax.plot([0, 1], [0, 1], label="perfectly calibrated", **_CHANCE)
    ax.plot(predicted_mean, observed, marker="o", linewidth=1.8, label="model")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("Calibration (test set, 10 bins)")
    ax.legend(loc="upper left", fontsize="small")
    return fig


# --- any task -------------------------------------------------------------------------------------


def importance_figure(importances: pd.DataFrame, metric: str = "score") -> Figure:
    """Horizontal bars of mean importance with std error bars, the top MAX_IMPORTANCE_BARS."""
    if importances.empty:
        raise ValueError("there are no feature importances to show")
    top = importances.sort_values("mean", ascending=False).head(MAX_IMPORTANCE_BARS)
    fig, ax = new_figure((6.0, max(3.0, 1.0 + 0.3 * len(top))))
    positions = np.arange(len(top))
    ax.barh(positions, top["mean"], xerr=top["std"], color="tab:blue", alpha=0.8, capsize=2)
    ax.set_yticks(positions, [_label(f, 35) for f in top["feature"]])
    ax.invert_yaxis()  # most important at the top
    ax.axvline(0.0, color="0.3", linewidth=0.8)
    ax.set_xlabel(f"how much worse {metric} gets when the column is shuffled")
    shown = f"top {len(top)} of {len(importances)}" if len(top) < len(importances) else "all"
    ax.set_title(f"Permutation importance ({shown} columns)")
    return fig


def learning_curve_figure(
    sizes: Any, train_scores: Any, valid_scores: Any, metric_label: str
) -> Figure:
    """Mean score against training rows, with ± one standard deviation bands."""
    sizes = np.asarray(sizes, dtype=float)
    fig, ax = new_figure()
    for scores, name, colour in (
        (train_scores, "training", "tab:blue"),
        (valid_scores, "cross-validation", "tab:orange"),
    ):
        values = np.asarray(scores, dtype=float)
        if np.isnan(values).all():
            raise ValueError(f"every {name} score failed to compute")
        mean, std = np.nanmean(values, axis=1), np.nanstd(values, axis=1)
        ax.plot(sizes, mean, marker="o", color=colour, label=name)
        ax.fill_between(sizes, mean - std, mean + std, color=colour, alpha=0.2)
    ax.set_xlabel("training rows")
    ax.set_ylabel(metric_label)
    ax.set_title("Learning curve (mean ± std over folds)")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    return fig


# --- regression -----------------------------------------------------------------------------------


def _regression_values(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    actual = np.asarray(y_true, dtype=float)
    predicted = np.asarray(y_pred, dtype=float)
    keep = np.isfinite(actual) & np.isfinite(predicted)
    if not keep.any():
        raise ValueError("no test row has both an actual and a predicted value")
    return actual[keep], predicted[keep]


def _alpha(n: int) -> float:
    return float(min(0.8, max(0.15, 30 / math.sqrt(max(n, 1)))))


def residuals_figure(y_true: Any, y_pred: Any) -> Figure:
    """Residual (actual − predicted) against predicted, with the zero line."""
    actual, predicted = _regression_values(y_true, y_pred)
    fig, ax = new_figure()
    ax.scatter(predicted, actual - predicted, s=14, alpha=_alpha(len(actual)), label="test row")
    ax.axhline(0.0, label="no error", **_CHANCE)
    ax.set_xlabel("predicted value")
    ax.set_ylabel("residual (actual − predicted)")
    ax.set_title("Residuals (test set)")
    ax.legend(loc="best", fontsize="small")
    return fig


def predicted_vs_actual_figure(y_true: Any, y_pred: Any) -> Figure:
    """Predicted against actual, with the identity line where predictions are exact."""
    actual, predicted = _regression_values(y_true, y_pred)
    low = float(min(actual.min(), predicted.min()))
    high = float(max(actual.max(), predicted.max()))
    fig, ax = new_figure()
    ax.scatter(actual, predicted, s=14, alpha=_alpha(len(actual)), label="test row")
    ax.plot([low, high], [low, high], label="predicted = actual", **_CHANCE)
    ax.set_xlabel("actual value")
    ax.set_ylabel("predicted value")
    ax.set_title("Predicted vs actual (test set)")
    ax.legend(loc="upper left", fontsize="small")
    return fig


# --- search ---------------------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def search_history_figure(
    history: Sequence[dict[str, Any]], metric: str, greater_is_better: bool
) -> Figure:
    """Each completed trial's score (the metric's own value) against elapsed seconds, one colour
    per model family, with the best-so-far as a step line; pruned trials as faint crosses."""
    scored = [t for t in history if _finite(t.get("value")) and _finite(t.get("elapsed_s"))]
    done = sorted((t for t in scored if t.get("status") == "ok"), key=lambda t: t["elapsed_s"])
    if not done:
        raise ValueError("no search trial completed with a score")
    pruned = [t for t in scored if t.get("status") == "pruned"]
    families = list(dict.fromkeys(str(t.get("family")) for t in [*done, *pruned]))
    colours = {f: f"C{i % 10}" for i, f in enumerate(families)}
    fig, ax = new_figure((7.0, 4.5))
    for family in families:
        mine = [t for t in done if str(t.get("family")) == family]
        if mine:
            ax.scatter(
                [t["elapsed_s"] for t in mine],
                [t["value"] for t in mine],
                s=22,
                color=colours[family],
                label=_label(family),
            )
        cut = [t for t in pruned if str(t.get("family")) == family]
        if cut:
            ax.scatter(
                [t["elapsed_s"] for t in cut],
                [t["value"] for t in cut],
                s=22,
                marker="x",
                color=colours[family],
                alpha=0.3,
            )
    values = np.array([t["value"] for t in done], dtype=float)
    best = np.maximum.accumulate(values) if greater_is_better else np.minimum.accumulate(values)
    ax.step([t["elapsed_s"] for t in done], best, where="post", color="black", label="best so far")
    if pruned:  # one neutral legend entry for every family's pruned trials
        ax.scatter([], [], marker="x", color="0.5", alpha=0.5, label="pruned")
    ax.set_xlabel("elapsed seconds")
    ax.set_ylabel(f"{metric} ({'higher' if greater_is_better else 'lower'} is better)")
    title = f"Search history ({len(done)} completed trials)"
    # A baseline far below the rest flattens every other point into one line: zoom on the
    # competitive range and say how many trials fall outside it.
    all_values = np.array([t["value"] for t in scored], dtype=float)
    q1, q3 = np.percentile(values, [25, 75])
    spread = max(q3 - q1, 1e-3 * max(abs(q3), 1.0))
    if greater_is_better:
        lo, hi = max(values.min(), q1 - 3 * spread), values.max()
    else:
        lo, hi = values.min(), min(values.max(), q3 + 3 * spread)
    pad = 0.05 * (hi - lo) or 0.01
    outside = int(np.sum((all_values < lo - pad) | (all_values > hi + pad)))
    if outside:  # Tukey's far-out fence, a little wider
        ax.set_ylim(lo - pad, hi + pad)
        title += f"; {outside} weaker off the scale"
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    ax.grid(alpha=0.3)
    return fig
