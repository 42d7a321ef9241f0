"""The HTML training report: sections, inline images, escaping, importance per raw column,
figures that fail without sinking the report, and the atomic write."""

from __future__ import annotations

import base64
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression, Ridge

from shipml.config import FeaturesConfig, SplitConfig, ValidationConfig
from shipml.data.coerce import coerce_frame, coerce_target
from shipml.data.infer import infer_schema
from shipml.data.split import split_table
from shipml.data.validate import validate_table
from shipml.evaluation import plots
from shipml.evaluation import report as report_module
from shipml.evaluation.inspection import permutation_importances
from shipml.evaluation.metrics import classification_metrics, regression_metrics
from shipml.evaluation.report import ReportInputs, build_report, write_report
from shipml.features import build_model_pipeline
from shipml.training.leaderboard import CandidateResult, Leaderboard
from tests.conftest import breast_cancer_frame, diabetes_frame, wine_frame

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COMMON_SECTIONS = [
    "Data summary",
    "Validation findings",
    "Leaderboard",
    "Test metrics",
    "Feature importance",
    "Learning curves",
    "Search history",
    "Notes",
]
CLASSIFICATION_SECTIONS = ["Confusion matrix", "ROC curve", "Precision-recall curve", "Calibration"]
REGRESSION_SECTIONS = ["Residuals", "Predicted vs actual"]


def make_inputs(
    df: pd.DataFrame, target: str, estimator: Any, metric: str, **overrides: Any
) -> ReportInputs:
    """Report inputs for ``df`` as a training run would hand them over, with a small budget."""
    features = FeaturesConfig()
    schema = infer_schema(df, target, None, features)
    validation = validate_table(df, target, schema, ValidationConfig())
    train, test = split_table(df, schema, SplitConfig(test_size=0.25, seed=0))
    X_train, X_test = coerce_frame(train, schema), coerce_frame(test, schema)
    y_train = coerce_target(train[target], schema.task)
    y_test = coerce_target(test[target], schema.task)
    pipeline = build_model_pipeline(schema, features, estimator)
    model = clone(pipeline).fit(X_train, y_train)
    if schema.task == "classification":
        proba = model.predict_proba(X_test)
        test_metrics = classification_metrics(
            y_test, model.predict(X_test), proba, list(model.classes_)
        )
        other = "accuracy"
    else:
        test_metrics = regression_metrics(y_test, model.predict(X_test))
        other = "r2"
    results = [
        CandidateResult("baseline", "majority / mean", True, {}, {metric: [0.5, 0.5, 0.5]}),
        CandidateResult(
            "linear",
            "linear model",
            False,
            {"C": 1.0},
            {metric: [0.9, 0.92, 0.94], other: [0.8, 0.82, 0.84]},
            fit_seconds=0.4,
        ),
        CandidateResult("lightgbm", "boosting", False, {}, status="failed", reason="out of time"),
    ]
    history = [
        {"family": "linear", "trial": 0, "value": 0.90, "status": "ok", "elapsed_s": 0.5},
        {"family": "linear", "trial": 1, "value": 0.93, "status": "ok", "elapsed_s": 1.0},
        {"family": "forest", "trial": 0, "value": 0.91, "status": "ok", "elapsed_s": 1.5},
        {"family": "forest", "trial": 1, "value": 0.70, "status": "pruned", "elapsed_s": 1.7},
        {"family": "forest", "trial": 2, "value": None, "status": "failed", "elapsed_s": 1.9},
    ]
    inputs = ReportInputs(
        project="demo",
        version=3,
        created="2025-01-31T12:00:00+00:00",
        schema=schema,
        validation=validation,
        metric=metric,
        leaderboard=Leaderboard(metric, (metric, other), results),
        test_metrics=test_metrics,
        model=model,
        X_train=X_train,
        y_train=y_train,
        X_test=X_test,
        y_test=y_test,
        learning_estimator=pipeline,
        search_history=history,
        seed=0,
        notes=["trained for the tests"],
        max_learning_rows=150,
        importance_repeats=2,
    )
    return replace(inputs, **overrides)


@pytest.fixture(scope="module")
def binary_inputs() -> ReportInputs:
    df = breast_cancer_frame().sample(300, random_state=0).reset_index(drop=True)
    return make_inputs(df, "diagnosis", LogisticRegression(max_iter=500), "roc_auc", threshold=0.4)


@pytest.fixture(scope="module")
def reports(binary_inputs: ReportInputs) -> dict[str, str]:
    multiclass = make_inputs(wine_frame(), "cultivar", LogisticRegression(max_iter=500), "f1_macro")
    regression = make_inputs(diabetes_frame(), "progression", Ridge(), "rmse")
    return {
        "binary": build_report(binary_inputs),
        "multiclass": build_report(multiclass),
        "regression": build_report(regression),
    }


def section(html: str, anchor: str) -> str:
    """The HTML of one section, by its id."""
    match = re.search(rf'<(section|footer) id="{anchor}">(.*?)</\1>', html, re.DOTALL)
    assert match, f"no section {anchor}"
    return match.group(2)


def images(html: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)


@pytest.mark.parametrize("kind", ["binary", "multiclass", "regression"])
def test_report_has_every_section_with_its_figures(reports: dict[str, str], kind: str) -> None:
    html = reports[kind]
    specific = REGRESSION_SECTIONS if kind == "regression" else CLASSIFICATION_SECTIONS
    titles = [*COMMON_SECTIONS[:4], *specific, *COMMON_SECTIONS[4:]]
    positions = []
    for title in titles:
        assert f"<h2>{title}</h2>" in html, title
        assert f">{title}</a></li>" in html, f"{title} is not in the table of contents"
        positions.append(html.index(f"<h2>{title}</h2>"))
    assert positions == sorted(positions), "sections are out of order"
    assert "could not be drawn" not in html and "could not be computed" not in html
    # one figure per plot section: diagnostics, importance, learning curve, search history
    assert len(images(html)) == len(specific) + 3
    assert html.lstrip().startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")


def test_every_image_is_an_inline_png(reports: dict[str, str]) -> None:
    for html in reports.values():
        sources = images(html)
        assert sources and len(sources) == html.count("<img")
        for src in sources:
            assert src.startswith("data:image/png;base64,")
            data = base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True)
            assert data.startswith(PNG_MAGIC)


def test_report_references_nothing_outside(reports: dict[str, str]) -> None:
    for html in reports.values():
        assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
        assert "<script" not in html.lower() and "<link" not in html.lower()
        assert "@import" not in html and "url(" not in html


def test_report_content_binary(reports: dict[str, str]) -> None:
    html = reports["binary"]
    assert "<dt>Decision threshold</dt><dd>0.4 on P(&#39;malignant&#39;)</dd>" in html
    assert "decision threshold 0.4" in section(html, "confusion-matrix")
    balance = section(html, "data")
    assert "Class balance" in balance and "benign" in balance and "malignant" in balance
    board = section(html, "leaderboard")
    # ranked models first (best first), the failed one last with its reason
    assert board.index("linear") < board.index("baseline") < board.index("lightgbm")
    assert "out of time" in board and "0.9200 ± 0.0163" in board
    assert board.index("<th>roc_auc</th>") < board.index("<th>accuracy</th>")
    metrics = section(html, "test-metrics")
    assert metrics.index("roc_auc") < metrics.index("accuracy")
    search = section(html, "search-history")
    assert re.search(r"<td>forest</td>\s*<td class=\"num\">3</td>", search)
    assert "0.9300" in search and "0.9100" in search
    assert "trained for the tests" in section(html, "notes")


def test_importance_is_per_original_column(binary_inputs: ReportInputs, reports: Any) -> None:
    schema = binary_inputs.schema
    assert schema.columns["clinic"].role == "categorical"
    encoded = binary_inputs.model[:-1].get_feature_names_out()
    assert any("clinic_" in str(name) for name in encoded)  # the model sees one-hot columns
    table = permutation_importances(
        binary_inputs.model,
        binary_inputs.X_test,
        binary_inputs.y_test,
        "roc_auc",
        "classification",
        n_repeats=2,
        seed=0,
    )
    assert sorted(table["feature"]) == sorted(schema.input_columns)
    assert list(table.columns) == ["feature", "mean", "std"]
    assert table["mean"].is_monotonic_decreasing
    rows = re.findall(
        r"<tr><td>([^<]*)</td><td class=\"num\">", section(reports["binary"], "importance")
    )
    assert sorted(rows) == sorted(schema.input_columns)
    assert rows.count("clinic") == 1 and not any(r.startswith("clinic_") for r in rows)


def test_user_text_is_escaped(tmp_path: Path) -> None:
    df = diabetes_frame().head(120).rename(columns={"bmi": "<script>alert(1)</script>"})
    inputs = make_inputs(
        df,
        "progression",
        Ridge(),
        "rmse",
        project="<b>demo</b>",
        notes=['<img src="https://example.com/x.png">'],
        learning_estimator=None,
        search_history=[],
    )
    html = build_report(inputs)
    assert "<script>" not in html and "<b>demo" not in html and 'example.com/x.png">' not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;demo&lt;/b&gt;" in html
    importance = section(html, "importance")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in importance
    assert "no unfitted copy of the model" in section(html, "learning-curves")
    assert "no search trials were recorded" in section(html, "search-history")
    assert len(images(html)) == 3  # residuals, predicted vs actual, importance


def test_a_failing_figure_leaves_an_explanation(binary_inputs: ReportInputs) -> None:
    benign = (binary_inputs.y_test == "benign").to_numpy()
    inputs = replace(
        binary_inputs,
        X_test=binary_inputs.X_test[benign].reset_index(drop=True),
        y_test=binary_inputs.y_test[benign].reset_index(drop=True),
        learning_estimator=None,
    )
    html = build_report(inputs)
    for title in [*COMMON_SECTIONS, *CLASSIFICATION_SECTIONS]:
        assert f"<h2>{title}</h2>" in html
    roc = section(html, "roc")
    assert "<img" not in roc
    assert "ROC curve could not be drawn: the test set holds only class" in roc
    assert "could not be drawn" in section(html, "precision-recall")
    assert "permutation importance could not be computed" in section(html, "importance")
    assert "<img" in section(html, "confusion-matrix")  # the rest is still drawn


def test_model_that_cannot_score_is_explained(binary_inputs: ReportInputs) -> None:
    class Broken:
        classes_ = np.array(["benign", "malignant"])

        def predict(self, X: pd.DataFrame) -> np.ndarray:
            raise RuntimeError("model file is damaged")

        predict_proba = predict

    html = build_report(replace(binary_inputs, model=Broken(), learning_estimator=None))
    for anchor in ("confusion-matrix", "roc", "precision-recall", "calibration"):
        assert "the model could not score the test set: model file is damaged" in section(
            html, anchor
        )
    assert "model file is damaged" in section(html, "importance")


def test_write_report_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    html = "<!DOCTYPE html><html><body>é ✓</body></html>\n"
    target = tmp_path / "reports" / "v1" / "report.html"
    assert write_report(html, target) == target
    assert target.read_text(encoding="utf-8") == html
    seen: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        # at the swap, readers still see the old report and the new one is complete beside it
        seen.append((Path(src).read_text(encoding="utf-8"), target.read_text(encoding="utf-8")))
        assert Path(src).parent == Path(dst).parent
        real_replace(src, dst)

    monkeypatch.setattr(report_module.os, "replace", spy)
    assert write_report(html.upper(), target) == target  # replaces an existing report
    assert seen == [(html.upper(), html)]
    assert target.read_text(encoding="utf-8") == html.upper()
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]


def test_write_report_leaves_no_temp_file_on_failure(tmp_path: Path) -> None:
    with pytest.raises(UnicodeEncodeError):
        write_report("bad \udc80 surrogate", tmp_path / "report.html")
    assert list(tmp_path.iterdir()) == []


# --- figures ------------------------------------------------------------------------------------


def test_many_classes_are_capped_and_said_so() -> None:
    rng = np.random.default_rng(0)
    classes = [f"c{i:02d}" for i in range(12)]
    y = rng.choice(classes, 300)
    proba = rng.dirichlet(np.ones(12), 300)
    fig = plots.roc_figure(y, proba, classes)
    assert "10 of 12 classes" in fig.axes[0].get_title()
    assert len(fig.axes[0].get_legend().get_texts()) == 11  # ten classes and chance
    uri = plots.figure_to_data_uri(fig)
    assert base64.b64decode(uri.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert fig.axes == []  # closed: nothing held after conversion


def test_search_history_figure_shows_families_best_and_pruned() -> None:
    history = [
        {"family": "a", "trial": 0, "value": 5.0, "status": "ok", "elapsed_s": 1.0},
        {"family": "b", "trial": 0, "value": 3.0, "status": "ok", "elapsed_s": 2.0},
        {"family": "a", "trial": 1, "value": 4.0, "status": "ok", "elapsed_s": 3.0},
        {"family": "b", "trial": 1, "value": 9.0, "status": "pruned", "elapsed_s": 3.5},
    ]
    fig = plots.search_history_figure(history, "rmse", greater_is_better=False)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["a", "b", "best so far", "pruned"]
    best = next(line for line in ax.get_lines() if line.get_label() == "best so far")
    assert list(best.get_ydata()) == [5.0, 3.0, 3.0]  # lower is better: the running minimum
    assert "lower is better" in ax.get_ylabel()
    with pytest.raises(ValueError, match="no search trial completed"):
        plots.search_history_figure(history[3:], "rmse", greater_is_better=False)


def test_confusion_matrix_cells_show_count_and_row_share() -> None:
    fig = plots.confusion_matrix_figure(["a", "a", "a", "b"], ["a", "a", "b", "b"], ["a", "b"])
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"2\n67%", "1\n33%", "0\n0%", "1\n100%"} <= texts


def test_batched_importance_agrees_with_scikit_learn(binary_inputs: ReportInputs) -> None:
    """One stacked prediction instead of one per shuffle: the same estimates as scikit-learn's
    permutation_importance (up to the shuffles drawn), and exactly zero for a column the model
    ignores."""
    from sklearn.inspection import permutation_importance

    X, y = binary_inputs.X_test, binary_inputs.y_test
    ours = permutation_importances(
        binary_inputs.model, X, y, "accuracy", "classification", n_repeats=30, seed=0
    ).set_index("feature")["mean"]
    theirs = permutation_importance(
        binary_inputs.model, X, y, scoring="accuracy", n_repeats=30, random_state=0
    )["importances_mean"]
    theirs = pd.Series(theirs, index=[str(c) for c in X.columns])
    assert np.abs(ours - theirs[ours.index]).max() < 0.02
    top = theirs.idxmax()
    assert ours[top] > 0 and ours.rank(ascending=False)[top] <= 3

    ignored = X.assign(ignored_column=np.arange(len(X)))

    class Ignoring:
        classes_ = binary_inputs.model.classes_

        def predict(self, df: pd.DataFrame) -> np.ndarray:
            return binary_inputs.model.predict(df.drop(columns="ignored_column"))

        def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
            return binary_inputs.model.predict_proba(df.drop(columns="ignored_column"))

    table = permutation_importances(
        Ignoring(), ignored, y, "roc_auc", "classification", n_repeats=3, seed=0
    ).set_index("feature")
    assert table.loc["ignored_column", "mean"] == 0.0


def test_importance_stacks_a_bounded_number_of_copies(
    binary_inputs: ReportInputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shuffled copies go to the model in stacks of at most BATCH_CELLS cells (one copy at a
    time for a table larger than that), with the same result as all in one stack; past its
    seconds it stops, and the report says so."""
    from shipml.evaluation import inspection, report

    X, y = binary_inputs.X_test, binary_inputs.y_test
    stacked: list[int] = []

    class Counting:
        classes_ = binary_inputs.model.classes_

        def predict(self, df: pd.DataFrame) -> np.ndarray:
            stacked.append(len(df))
            return binary_inputs.model.predict(df)

        def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
            return binary_inputs.model.predict_proba(df)

    def importance() -> pd.DataFrame:
        return permutation_importances(Counting(), X, y, "roc_auc", "classification", 3, 0)

    whole = importance()
    assert stacked == [len(X) * (1 + 3 * X.shape[1])]
    stacked.clear()
    monkeypatch.setattr(inspection, "BATCH_CELLS", 4 * X.size)
    pd.testing.assert_frame_equal(importance(), whole)
    assert max(stacked) == 4 * len(X) and sum(stacked) == len(X) * (1 + 3 * X.shape[1])
    stacked.clear()
    monkeypatch.setattr(inspection, "BATCH_CELLS", 1)
    pd.testing.assert_frame_equal(importance(), whole)
    assert set(stacked) == {len(X)}

    with pytest.raises(inspection.ImportanceTimeout, match="took longer than"):
        permutation_importances(Counting(), X, y, "roc_auc", "classification", 3, 0, seconds=0)
    inputs = replace(binary_inputs, importance_seconds=0.0)
    section, rows = report._importance(inputs, report.importance_table(inputs))
    assert section.uri is None and rows == []
    assert section.error is not None and "permutation importance stopped" in section.error


def test_search_history_zooms_past_a_far_weaker_baseline() -> None:
    from shipml.evaluation import plots

    history = [
        {"family": "majority", "trial": 0, "value": 0.5, "status": "ok", "elapsed_s": 0.1},
        *(
            {
                "family": "lightgbm",
                "trial": i,
                "value": 0.95 + i / 1000,
                "status": "ok",
                "elapsed_s": 1.0 + i,
            }
            for i in range(10)
        ),
    ]
    figure = plots.search_history_figure(history, "roc_auc", greater_is_better=True)
    low, high = figure.axes[0].get_ylim()
    assert 0.9 < low < 0.951 and high > 0.959
    assert "1 weaker off the scale" in figure.axes[0].get_title()
    # Without an outlier the axis is left alone.
    figure = plots.search_history_figure(history[1:], "roc_auc", greater_is_better=True)
    assert "off the scale" not in figure.axes[0].get_title()


def test_learning_curve_ends_early_instead_of_overrunning(binary_inputs: ReportInputs) -> None:
    from shipml.evaluation.inspection import LEARNING_SIZES, learning_curve_scores

    args = (
        binary_inputs.learning_estimator,
        binary_inputs.X_train,
        binary_inputs.y_train,
        "roc_auc",
        "classification",
        150,
        0,
    )
    sizes, train, valid = learning_curve_scores(*args)
    assert len(sizes) == len(LEARNING_SIZES) and train.shape == valid.shape == (5, 3)
    assert list(sizes) == sorted(sizes) and sizes[-1] == 100  # 2/3 of 150 rows
    short, _, short_valid = learning_curve_scores(*args, seconds=0.0)
    assert list(short) == [sizes[0]] and short_valid.shape == (1, 3)
    html = build_report(replace(binary_inputs, learning_seconds=0.0))
    assert f"The curve stops at {sizes[0]} rows" in section(html, "learning-curves")
    assert "The curve stops" not in section(build_report(binary_inputs), "learning-curves")


class _SlowFit(LogisticRegression):
    """Logistic regression whose fit takes 20 ms per row: a curve whose cost is known."""

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> _SlowFit:
        import time

        time.sleep(0.02 * len(X))
        return super().fit(X, y, sample_weight)


def test_learning_curve_does_not_start_a_size_it_cannot_finish(
    binary_inputs: ReportInputs,
) -> None:
    import time

    from shipml.evaluation.inspection import learning_curve_scores

    estimator = clone(binary_inputs.learning_estimator).set_params(model=_SlowFit())
    X, y = binary_inputs.X_train, binary_inputs.y_train
    # 150 rows: 3 folds at sizes 10, 32, 55, ... cost 0.6 s, 1.9 s, 3.3 s, ...: with 4.2 s the
    # third size would end past them (it would start at 2.5 s), so the curve stops after two.
    seconds = 3 * 0.02 * (10 + 32 + 0.5 * 55)
    started = time.monotonic()
    sizes, _, valid = learning_curve_scores(
        estimator, X, y, "roc_auc", "classification", 150, 0, seconds=seconds
    )
    assert list(sizes) == [10, 32] and valid.shape == (2, 3)
    assert time.monotonic() - started < seconds


def test_report_plan_fits_the_time_left() -> None:
    from shipml.training.reporting import plan_report

    roomy = plan_report(60.0, 500, 10, 1e-5, 4000, 0.2)
    assert (roomy.importance_repeats, roomy.importance_rows, roomy.learning_rows) == (5, 500, 4000)
    tight = plan_report(6.0, 500, 10, 1e-5, 4000, 1.2)
    assert 200 <= tight.learning_rows < 4000 and tight.learning_seconds is not None
    assert tight.learning_seconds < 6.0
    hopeless = plan_report(4.0, 500, 10, 1e-5, 4000, 5.0)
    assert hopeless.learning_rows == 0 and "learning curves skipped" in hopeless.learning_skipped


def test_the_search_leaves_the_report_what_the_best_candidate_needs() -> None:
    from shipml.training.leaderboard import CandidateResult
    from shipml.training.reporting import FINISH_FIXED_S, finish_reserve, report_reserve

    def result(name: str, score: float, seconds: float, baseline: bool = False) -> Any:
        r = CandidateResult(name, name, baseline, {}, family=name, fit_seconds=seconds)
        r.fold_scores = {"roc_auc": [score] * 5}
        r.fold_outputs = [np.zeros(2)] * 5
        return r

    # Nothing measured yet: the fixed part, so that a short budget still starts a candidate.
    assert finish_reserve(60.0, [], "roc_auc") == FINISH_FIXED_S < report_reserve(15.0)
    small = result("lightgbm", 0.66, 0.5)  # five folds of a few small trees
    slow = result("random_forest", 0.60, 20.0)
    reserve = finish_reserve(60.0, [slow, small], "roc_auc")
    assert FINISH_FIXED_S < reserve < FINISH_FIXED_S + 1.0
    # The best candidate sets it, and a slow one is capped at the budget's share.
    assert finish_reserve(
        60.0, [small, result("catboost", 0.7, 20.0)], "roc_auc"
    ) == report_reserve(60.0)
    # Baselines (refitted in an instant anyway) do not count.
    lone = finish_reserve(60.0, [slow, result("logistic_regression", 0.9, 0.1, True)], "roc_auc")
    assert lone == report_reserve(60.0)
    # For an error metric, lower is better.
    low = result("ridge", 10.0, 0.5)
    assert finish_reserve(60.0, [low, result("lightgbm", 99.0, 20.0)], "rmse") < 6.0


def test_a_short_budget_keeps_a_share_for_the_finish_not_the_whole_fixed_reserve() -> None:
    # 5 s for the finish and 3 s of bookkeeping fit a minute; of a 10 s budget they would leave
    # the search nothing once the data is read and skops imported, and only baselines would run.
    from shipml.training.reporting import FINISH_FIXED_S, finish_fixed, finish_reserve
    from shipml.training.train import budget_overhead

    assert finish_reserve(10.0, [], "roc_auc") == finish_fixed(10.0) == 3.5
    assert budget_overhead(10.0) == 1.5
    assert 10.0 - budget_overhead(10.0) - finish_fixed(10.0) == 5.0
    # From 20 s on, the fixed parts (and a long budget's 5 % share) are what they were.
    for budget in (20.0, 60.0):
        assert finish_fixed(budget) == FINISH_FIXED_S and budget_overhead(budget) == 3.0
    assert budget_overhead(200.0) == 10.0
