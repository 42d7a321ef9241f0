"""The training report: one self-contained HTML page (inline CSS, PNGs as data URIs).

``build_report`` gathers tables and figures from a finished training run; each figure that the
data cannot make (a class missing from the test set, a model that fails to refit) becomes a
one-line explanation in its section instead of an error, so a report always comes out.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined, Template
from markupsafe import Markup, escape

from shipml.evaluation import plots
from shipml.evaluation.inspection import (
    LEARNING_FOLDS,
    LEARNING_SIZES,
    ImportanceTimeout,
    learning_curve_scores,
    permutation_importances,
)
from shipml.evaluation.metrics import METRICS, metric_spec

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from shipml.data.schema import Schema
    from shipml.data.validate import ValidationReport
    from shipml.training.leaderboard import Leaderboard

__all__ = ["FigureSection", "ReportInputs", "build_report", "importance_table", "write_report"]

_LEVEL_ORDER = {"fatal": 0, "warning": 1, "info": 2}


@dataclass
class ReportInputs:
    """Everything the report shows. ``model`` is fitted and reads the model's input columns;
    ``learning_estimator`` is an unfitted copy of it, refitted for the learning curve."""

    project: str
    version: int | None
    created: str
    schema: Schema
    validation: ValidationReport
    metric: str
    leaderboard: Leaderboard
    test_metrics: dict[str, float]
    model: Any
    X_train: pd.DataFrame
    y_train: pd.Series
    X_test: pd.DataFrame
    y_test: pd.Series
    learning_estimator: Any | None
    search_history: list[dict[str, Any]]
    threshold: float | None = None
    seed: int = 42
    notes: list[str] = field(default_factory=list)
    max_learning_rows: int = 5000
    importance_repeats: int = 5
    max_importance_rows: int = 5000
    learning_skipped: str = ""  # why there is no learning curve, when learning_estimator is None
    learning_seconds: float | None = None  # no larger subset starts after this many seconds
    importance_seconds: float | None = None  # permutation importance stops after this many


@dataclass
class FigureSection:
    """One figure of the report, or why it is missing."""

    anchor: str
    title: str
    uri: str | None = None
    error: str | None = None
    caption: str = ""


# --- sections -------------------------------------------------------------------------------------


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def draw(anchor: str, title: str, build: Callable[[], Figure], caption: str = "") -> FigureSection:
    try:
        uri = plots.figure_to_data_uri(build())
    except Exception as err:  # one figure the data cannot make must not sink the whole report
        return FigureSection(anchor, title, error=f"{title} could not be drawn: {_reason(err)}")
    return FigureSection(anchor, title, uri=uri, caption=caption)


def fmt_num(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4f}"


def _pct(share: float) -> str:
    return f"{100 * share:.1f}%"


def _data_summary(inputs: ReportInputs) -> dict[str, Any]:
    schema = inputs.schema
    columns = [
        {
            "name": c.name,
            "role": c.role,
            "dtype": c.dtype,
            "missing": _pct(c.missing_share),
            "unique": c.n_unique,
        }
        for c in schema.columns.values()
    ]
    balance = []
    if schema.task == "classification":
        train, test = inputs.y_train.value_counts(), inputs.y_test.value_counts()
        classes = dict.fromkeys([*(schema.classes or []), *train.index, *test.index])
        for cls in classes:
            n_train, n_test = int(train.get(cls, 0)), int(test.get(cls, 0))
            balance.append(
                {
                    "cls": cls,
                    "train": f"{n_train} ({_pct(n_train / max(len(inputs.y_train), 1))})",
                    "test": f"{n_test} ({_pct(n_test / max(len(inputs.y_test), 1))})",
                }
            )
    return {
        "n_train": len(inputs.X_train),
        "n_test": len(inputs.X_test),
        "n_inputs": len(schema.input_columns),
        "columns": columns,
        "balance": balance,
    }


def _findings(report: ValidationReport) -> list[dict[str, Any]]:
    ordered = sorted(report.findings, key=lambda f: _LEVEL_ORDER.get(f.level, 3))
    return [
        {"level": f.level, "check": f.check, "column": f.column or "", "message": f.message}
        for f in ordered
    ]


# Trials of one family shown in the leaderboard; the family's others fold away below it.
LEADERBOARD_PER_FAMILY = 3


def _header(metric: str) -> Markup:
    """A metric's column header that may break after its underscores when it is long
    (balanced_accuracy): five metrics side by side otherwise make the table wider than the
    page."""
    if len(metric) <= 10:
        return escape(metric)
    return Markup("_<wbr>").join(escape(part) for part in metric.split("_"))


def _leaderboard(board: Leaderboard) -> dict[str, Any]:
    """The leaderboard's rows, ranked: each family's best ``LEADERBOARD_PER_FAMILY`` trials
    (and every ensemble) in ``rows``; the rest of each family in ``folded``, one group per
    family, for a <details> each."""
    present = {m for r in board.results for m in r.fold_scores}
    metrics = [board.metric] + [m for m in board.metrics if m != board.metric and m in present]
    rank = {id(r): i + 1 for i, r in enumerate(board.ranked())}
    ordered = sorted(board.results, key=lambda r: (id(r) not in rank, rank.get(id(r), 0)))
    rows: list[dict[str, Any]] = []
    folded: dict[str, list[dict[str, Any]]] = {}
    shown: dict[str, int] = {}
    for r in ordered:
        # The spread over folds of the metric that ranks them; the others' in a tooltip (five
        # metrics with theirs make the table wider than the page).
        scores = [
            {
                "text": f"{fmt_num(r.mean(m))}" + (f" ± {fmt_num(r.std(m))}" if i == 0 else ""),
                "title": f"± {fmt_num(r.std(m))} over the folds",
            }
            if m in r.fold_scores
            else {"text": "—", "title": ""}
            for i, m in enumerate(metrics)
        ]
        makeup = ", ".join(f"{family} ×{n}" for family, n in board.makeup(r))
        members = f"{len(r.members)} models: {makeup}" if r.members else ""
        if r.stack_inputs:
            members = "on the columns and the predictions of " + ", ".join(r.stack_inputs)
        row = {
            "rank": rank.get(id(r), "—"),
            "best": rank.get(id(r)) == 1,
            "model": r.name,
            "baseline": r.baseline,
            "members": members,
            "status": r.status,
            "scores": scores,
            "seconds": f"{r.fit_seconds:.1f}",
            "reason": r.reason,
        }
        family = r.family or r.name
        if shown.get(family, 0) < LEADERBOARD_PER_FAMILY:
            shown[family] = shown.get(family, 0) + 1
            rows.append(row)
        else:
            folded.setdefault(family, []).append(row)
    groups = [{"family": f, "rows": more} for f, more in folded.items()]
    return {
        "metrics": metrics,
        "headers": [_header(m) for m in metrics],
        "rows": rows,
        "folded": groups,
        "per_family": LEADERBOARD_PER_FAMILY,
    }


def _test_metrics(metrics: dict[str, float], primary: str) -> list[dict[str, Any]]:
    names = sorted(metrics, key=lambda m: m != primary)  # stable: the rest keep their order
    return [
        {
            "name": name,
            "value": fmt_num(metrics[name]),
            "primary": name == primary,
            "direction": (
                ("higher" if METRICS[name].greater_is_better else "lower") + " is better"
                if name in METRICS
                else ""
            ),
        }
        for name in names
    ]


# (anchor, title, caption) of the test-set figures of each task; {cut} names the decision rule.
_DIAGNOSTICS = {
    "classification": [
        ("confusion-matrix", "Confusion matrix", "Rows: true class; columns: predicted ({cut})."),
        ("roc", "ROC curve", "True vs false positive rate at every threshold; diagonal = chance."),
        ("precision-recall", "Precision-recall curve", "AP is the average precision."),
        ("calibration", "Calibration", "On the diagonal, probabilities mean what they say."),
    ],
    "regression": [
        ("residuals", "Residuals", "A pattern (a curve, a funnel) means missed structure."),
        ("predicted-vs-actual", "Predicted vs actual", "Points on the dashed line are exact."),
    ],
}


def _threshold(inputs: ReportInputs) -> str | None:
    classes = inputs.schema.classes
    if inputs.threshold is None:
        return None
    positive = f" on P('{classes[1]}')" if classes and len(classes) == 2 else ""
    return f"{inputs.threshold:.3g}{positive}"


def _diagnostics(inputs: ReportInputs) -> list[FigureSection]:
    model, y = inputs.model, np.asarray(inputs.y_test)
    classification = inputs.schema.task == "classification"
    specs = _DIAGNOSTICS[inputs.schema.task]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predicted = model.predict(inputs.X_test)
            if classification:
                classes = list(model.classes_)
                proba = model.predict_proba(inputs.X_test)
    except Exception as err:
        why = f"the model could not score the test set: {_reason(err)}"
        return [FigureSection(anchor, title, error=why) for anchor, title, _ in specs]
    builders: dict[str, Callable[[], Figure]] = (
        {
            "confusion-matrix": lambda: plots.confusion_matrix_figure(y, predicted, classes),
            "roc": lambda: plots.roc_figure(y, proba, classes),
            "precision-recall": lambda: plots.precision_recall_figure(y, proba, classes),
            "calibration": lambda: plots.calibration_figure(y, proba, classes),
        }
        if classification
        else {
            "residuals": lambda: plots.residuals_figure(y, predicted),
            "predicted-vs-actual": lambda: plots.predicted_vs_actual_figure(y, predicted),
        }
    )
    threshold = _threshold(inputs)
    cut = f"decision threshold {threshold}" if threshold else "the most probable class"
    sections = [
        draw(anchor, title, builders[anchor], caption.format(cut=cut))
        for anchor, title, caption in specs
    ]
    if classification and inputs.schema.image:
        sections.append(_misclassified(inputs, y, np.asarray(predicted)))
    return sections


def _misclassified(inputs: ReportInputs, y: np.ndarray, predicted: np.ndarray) -> FigureSection:
    """The test images the model got wrong, as pictures: where people would rather look."""
    from shipml.data.images import ImageSpec

    spec = ImageSpec.from_dict(inputs.schema.image or {})
    wrong = np.flatnonzero(y.astype(str) != predicted.astype(str))
    if len(wrong) == 0:
        return FigureSection(
            "misclassified", "Misclassified examples", error="No test image was misclassified."
        )
    pixels = inputs.X_test[spec.columns].to_numpy(dtype=float)[wrong]
    images = pixels.reshape(len(wrong), *spec.shape)
    caption = (
        f"{len(wrong)} of {len(y)} test images misclassified"
        + (f"; the first {min(len(wrong), 24)} shown" if len(wrong) > 24 else "")
        + ", titled true → predicted."
    )
    return draw(
        "misclassified",
        "Misclassified examples",
        lambda: plots.misclassified_figure(images, list(y[wrong]), list(predicted[wrong])),
        caption,
    )


def importance_table(inputs: ReportInputs) -> pd.DataFrame | str:
    """Permutation importance of each input column on the test split (most important first),
    or why there is none."""
    try:
        return permutation_importances(
            inputs.model,
            inputs.X_test,
            inputs.y_test,
            inputs.metric,
            inputs.schema.task,
            inputs.importance_repeats,
            inputs.seed,
            inputs.max_importance_rows,
            inputs.importance_seconds,
        )
    except ImportanceTimeout as err:
        return f"permutation importance stopped: {err}"
    except Exception as err:
        return f"permutation importance could not be computed: {_reason(err)}"


def _importance(
    inputs: ReportInputs, table: pd.DataFrame | str
) -> tuple[FigureSection, list[dict[str, str]]]:
    title = "Feature importance"
    if isinstance(table, str):
        return FigureSection("importance", title, error=table), []
    caption = (
        f"How much the test {inputs.metric} worsens when one input column is shuffled "
        f"({inputs.importance_repeats} shuffles each"
        + (
            f", on {inputs.max_importance_rows} sampled test rows"
            if len(inputs.X_test) > inputs.max_importance_rows
            else ""
        )
        + "); near zero or below means unused."
    )
    section = draw(
        "importance", title, lambda: plots.importance_figure(table, inputs.metric), caption
    )
    rows = [
        {"feature": str(feature), "mean": fmt_num(float(mean)), "std": fmt_num(float(std))}
        for feature, mean, std in zip(table["feature"], table["mean"], table["std"], strict=True)
    ]
    return section, rows


def _learning(inputs: ReportInputs) -> FigureSection:
    title = "Learning curves"
    if inputs.learning_estimator is None:
        why = inputs.learning_skipped or (
            "no learning curve: no unfitted copy of the model was given to refit on subsets"
        )
        return FigureSection("learning-curves", title, error=why)
    task = inputs.schema.task
    n = min(len(inputs.X_train), inputs.max_learning_rows)
    sampled = f" sampled from {len(inputs.X_train)}" if n < len(inputs.X_train) else ""
    kind = "stratified " if task == "classification" else ""
    caption = (
        f"{n} training rows{sampled}, {LEARNING_FOLDS}-fold {kind}cross-validation. "
        "A gap that narrows with more rows suggests more data would help."
    )

    cut_short = ""

    def build() -> Figure:
        nonlocal cut_short
        sizes, train, valid = learning_curve_scores(
            inputs.learning_estimator,
            inputs.X_train,
            inputs.y_train,
            inputs.metric,
            task,
            inputs.max_learning_rows,
            inputs.seed,
            inputs.learning_seconds,
        )
        if len(sizes) < len(LEARNING_SIZES):
            cut_short = (
                f" The curve stops at {sizes[-1]} rows: the time budget had no room for larger "
                "subsets; a larger --time-budget draws all of it."
            )
        return plots.learning_curve_figure(sizes, train, valid, inputs.metric)

    section = draw("learning-curves", title, build, caption)
    section.caption += cut_short
    return section


def _search(inputs: ReportInputs) -> tuple[FigureSection, list[dict[str, Any]]]:
    history, title = inputs.search_history, "Search history"
    if not history:
        return FigureSection("search-history", title, error="no search trials were recorded"), []
    greater = metric_spec(inputs.metric).greater_is_better
    section = draw(
        "search-history",
        title,
        lambda: plots.search_history_figure(history, inputs.metric, greater),
        "Each dot is a completed trial; the black line is the best score found so far.",
    )
    rows = []
    for family in dict.fromkeys(str(t.get("family")) for t in history):
        trials = [t for t in history if str(t.get("family")) == family]
        done = [
            float(t["value"])
            for t in trials
            if t.get("status") == "ok"
            and isinstance(t.get("value"), int | float)
            and math.isfinite(t["value"])
        ]
        best = (max(done) if greater else min(done)) if done else None
        rows.append(
            {
                "family": family,
                "trials": len(trials),
                "completed": sum(t.get("status") == "ok" for t in trials),
                "pruned": sum(t.get("status") == "pruned" for t in trials),
                "failed": sum(t.get("status") not in ("ok", "pruned") for t in trials),
                "best": fmt_num(best),
            }
        )
    return section, rows


# --- the document ---------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def template(name: str = "report.html.j2") -> Template:
    """A report template from the package (they share templates/style.css)."""
    env = Environment(
        loader=PackageLoader("shipml", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(name)


def _contents(*sections: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"anchor": a, "title": t} for group in sections for a, t in group]


def build_report(inputs: ReportInputs, importances: pd.DataFrame | str | None = None) -> str:
    """The whole report as one HTML document with no outside references; ``importances`` is
    ``importance_table(inputs)`` where the caller computed it already."""
    from shipml import __version__

    schema = inputs.schema
    diagnostics = _diagnostics(inputs)
    importance, importance_rows = _importance(
        inputs, importance_table(inputs) if importances is None else importances
    )
    learning = _learning(inputs)
    search, search_rows = _search(inputs)
    contents = _contents(
        [
            ("data", "Data summary"),
            ("validation", "Validation findings"),
            ("leaderboard", "Leaderboard"),
            ("test-metrics", "Test metrics"),
        ],
        [(s.anchor, s.title) for s in (*diagnostics, importance, learning, search)],
        [("notes", "Notes")],
    )
    return template().render(
        project=inputs.project,
        version=inputs.version,
        created=inputs.created,
        task=schema.task,
        target=schema.target,
        metric=inputs.metric,
        threshold=_threshold(inputs),
        contents=contents,
        data=_data_summary(inputs),
        validation=inputs.validation,
        findings=_findings(inputs.validation),
        leaderboard=_leaderboard(inputs.leaderboard),
        test_metrics=_test_metrics(inputs.test_metrics, inputs.metric),
        diagnostics=diagnostics,
        importance=importance,
        importance_rows=importance_rows,
        learning=learning,
        search=search,
        search_rows=search_rows,
        notes=list(inputs.notes),
        shipml_version=__version__,
    )


def write_report(html: str, path: Path) -> Path:
    """Write ``html`` to ``path`` atomically (a temporary file in the same folder, then
    os.replace), creating the folder; readers never see half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(html)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a report is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
