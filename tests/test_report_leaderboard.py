"""The report's leaderboard: each family's best few trials, the rest folded per family, and a
table that fits the page at 1,400 px in a real (headless) Chromium."""

from __future__ import annotations

import html as htmllib
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from sklearn.linear_model import LogisticRegression

from shipml.evaluation.report import LEADERBOARD_PER_FAMILY, build_report
from shipml.training.leaderboard import CandidateResult, Leaderboard
from tests.conftest import breast_cancer_frame
from tests.test_report import make_inputs, section

METRICS = ("roc_auc", "accuracy", "balanced_accuracy", "f1_macro", "log_loss")

# Writes the page's widths into its title, for --dump-dom to hand back.
PROBE = """<script>document.title = JSON.stringify({
  page: document.documentElement.scrollWidth,
  section: document.querySelector('#leaderboard').getBoundingClientRect().width,
  tables: Array.from(document.querySelectorAll('#leaderboard table'))
    .map(t => Math.ceil(t.getBoundingClientRect().width)),
});</script>"""


def page_widths(page: str, width: int = 1400) -> dict[str, object]:
    """The widths Chromium lays ``page`` out at in a ``width`` px window."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:  # `make test` installs it where apt-get can: a failure, not a skip
        pytest.fail("headless Chromium is not installed: `apt-get install -y chromium` (Debian)")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "report.html"
        path.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
        dumped = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={folder}/profile",
                f"--window-size={width},900",
                "--dump-dom",
                path.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    title = re.search(r"<title>(.*?)</title>", dumped, re.DOTALL)
    assert title, dumped[-2000:]
    return json.loads(htmllib.unescape(title.group(1)))


def scores(base: float, spread: float = 0.01) -> dict[str, list[float]]:
    return {m: [base - spread, base, base + spread] for m in METRICS}


def crowded_board() -> Leaderboard:
    """What a long search on a binary table leaves: 40 near-identical LightGBM trials, a few
    of other families, a failure with a long reason and an ensemble of many members."""
    results = [
        CandidateResult("dummy", "majority", True, {}, scores(0.5), family="dummy"),
        CandidateResult(
            "logistic_regression",
            "linear",
            True,
            {},
            scores(0.90),
            family="logistic_regression",
        ),
    ]
    for trial in range(40):
        name = "lightgbm" if trial == 0 else f"lightgbm#{trial}"
        results.append(
            CandidateResult(
                name,
                "boosting",
                False,
                {},
                scores(0.93 + trial * 1e-4),
                fit_seconds=1.5,
                family="lightgbm",
                trial=trial,
            )
        )
    for trial in range(6):
        name = "extra_trees" if trial == 0 else f"extra_trees#{trial}"
        results.append(
            CandidateResult(
                name, "trees", False, {}, scores(0.92), family="extra_trees", trial=trial
            )
        )
    results.append(
        CandidateResult(
            "catboost",
            "boosting",
            False,
            {},
            status="failed",
            reason="CatBoostError: /very/long/path/to/a/temporary/folder/catboost_info/"
            "learn_error.tsv_could_not_be_written_because_the_disk_was_full_at_the_time",
            family="catboost",
        )
    )
    members = {f"lightgbm#{t}": 2 for t in range(1, 12)} | {"extra_trees#3": 3}
    results.append(
        CandidateResult("ensemble", "greedy ensemble", False, {}, scores(0.95), members=members)
    )
    return Leaderboard("roc_auc", METRICS, results)


@pytest.fixture(scope="module")
def page() -> str:
    df = breast_cancer_frame().sample(200, random_state=0).reset_index(drop=True)
    inputs = make_inputs(
        df,
        "diagnosis",
        LogisticRegression(max_iter=500),
        "roc_auc",
        leaderboard=crowded_board(),
        learning_estimator=None,
    )
    return build_report(inputs)


def test_each_family_shows_its_best_few_and_folds_the_rest(page: str) -> None:
    board = section(page, "leaderboard")
    main, *folded = board.split("<details")
    shown = re.findall(r"<td>(lightgbm(?:#\d+)?)\b", main)
    assert len(shown) == LEADERBOARD_PER_FAMILY == 3
    # the best of the family first: the later trials score higher here
    assert shown == ["lightgbm#39", "lightgbm#38", "lightgbm#37"]
    assert len(re.findall(r"<td>extra_trees", main)) == 3
    summaries = re.findall(r"<summary>\s*(.*?)</summary>", board, re.DOTALL)
    assert [" ".join(s.split()) for s in summaries] == [
        "lightgbm: 37 more trials",
        "extra_trees: 3 more trials",
    ]
    assert len(folded) == 2 and "<td>lightgbm\n" not in main  # its defaults scored lowest
    assert len(re.findall(r"<td>lightgbm", folded[0])) == 37
    # the ensemble's members, by family, on one short line
    assert "12 models: lightgbm ×11, extra_trees ×1" in main
    # the failed candidate's reason is still there
    assert "disk_was_full" in main


def test_the_leaderboard_fits_the_page_at_1400_px(page: str) -> None:
    widths = page_widths(page, 1400)
    assert widths["page"] <= 1400, widths
    assert all(w <= widths["section"] + 1 for w in widths["tables"]), widths  # type: ignore[attr-defined]
