"""Per-column drift tests over summaries, with Evidently's default choice of test.

Default logic (Evidently 0.7's, so results agree with it):
- reference of at most 1,000 rows: Kolmogorov–Smirnov for numeric columns, chi-squared for
  categorical ones, a two-proportion z-test where the column has at most two values; drift at
  p < 0.05 (KS: p <= 0.05);
- larger references: the Wasserstein distance normed by the reference's standard deviation for
  numeric columns, the Jensen–Shannon distance of the value frequencies for categorical ones
  (and numeric ones with at most five values); drift at a distance >= 0.1.
Numeric columns with at most five distinct values are tested like categories. PSI is reported
for every column as well. Missing values (and ±inf) are left out of every test, as Evidently does.

The dataset drifts when at least ``drift_share`` of the tested columns drift (Evidently's rule),
or when one of the model's ``important_columns`` most important columns drifts (shipml's: a
shifted income column matters more than a shifted row id). The importance is the permutation
importance measured on the test split at training, stored with the version.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from shipml.monitoring.profile import Finding, Profile, infer_kinds, profile_table
from shipml.monitoring.summary import CategoricalSummary, NumericSummary, Summary, scale_for

P_VALUE_METHODS = ("ks", "chisquare", "z")
DISTANCE_METHODS = ("wasserstein", "jensenshannon", "psi")
METHODS = P_VALUE_METHODS + DISTANCE_METHODS
METHOD_NAMES = {
    "ks": "Kolmogorov–Smirnov p-value",
    "chisquare": "chi-squared p-value",
    "z": "z-test p-value",
    "wasserstein": "Wasserstein distance (normed)",
    "jensenshannon": "Jensen–Shannon distance",
    "psi": "PSI",
}
SMALL_REFERENCE = 1000  # rows; at most this many and drift is judged by a statistical test
_KS_EXACT_MAX = 10_000  # scipy's ks_2samp computes exact p-values up to this many rows


@dataclass
class DriftSettings:
    """How drift is judged: thresholds, the dataset-drift share, per-column overrides."""

    distance_threshold: float = 0.1
    p_value: float = 0.05
    drift_share: float = 0.5
    important_columns: int = 3  # the drift of any of the model's N most important columns counts
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> method, threshold

    @classmethod
    def from_config(cls, monitoring: Any) -> DriftSettings:
        return cls(
            distance_threshold=monitoring.drift_threshold,
            p_value=monitoring.p_value,
            drift_share=monitoring.drift_share,
            important_columns=monitoring.important_columns,
            columns={
                name: rule.model_dump(exclude_none=True)
                for name, rule in monitoring.columns.items()
            },
        )

    def threshold_for(self, method: str) -> float:
        return self.p_value if method in P_VALUE_METHODS else self.distance_threshold


@dataclass
class ColumnDrift:
    """The drift test of one column."""

    column: str
    kind: str
    method: str
    score: float
    threshold: float
    drift: bool
    psi: float
    n_reference: int
    n_current: int
    missing_reference: float  # share of rows
    missing_current: float

    @property
    def method_name(self) -> str:
        return METHOD_NAMES[self.method]

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "kind": self.kind,
            "method": self.method,
            "score": _finite_or_none(self.score),
            "threshold": self.threshold,
            "drift": self.drift,
            "psi": _finite_or_none(self.psi),
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "missing_reference": self.missing_reference,
            "missing_current": self.missing_current,
        }


@dataclass
class DriftResult:
    """Drift of every tested column, and whether the dataset as a whole drifted."""

    columns: dict[str, ColumnDrift]
    drift_share: float
    n_reference: int
    n_current: int
    findings: list[Finding] = field(default_factory=list)
    prediction: ColumnDrift | None = None
    target: ColumnDrift | None = None
    # The model's most important tested columns, most important first (empty: none known).
    important: list[str] = field(default_factory=list)
    important_columns: int = 0  # how many the rule asked for (0: importance does not count)

    @property
    def drifted_columns(self) -> list[str]:
        return [name for name, c in self.columns.items() if c.drift]

    @property
    def share_drifted(self) -> float:
        return len(self.drifted_columns) / len(self.columns) if self.columns else 0.0

    @property
    def important_drifted(self) -> list[str]:
        return [name for name in self.important if self.columns[name].drift]

    @property
    def dataset_drift(self) -> bool:
        return bool(self.columns) and (
            self.share_drifted >= self.drift_share or bool(self.important_drifted)
        )

    @property
    def rule(self) -> str:
        """The dataset-drift rule in words, as it was applied."""
        share = f"at least {100 * self.drift_share:.0f}% of the {len(self.columns)} columns drift"
        if self.important:
            return f"{share}, or one of the {len(self.important)} most important drifts " + (
                f"({', '.join(self.important)})"
            )
        if self.important_columns:
            return f"{share} (no feature importance is stored with this version)"
        return share

    @property
    def reasons(self) -> list[str]:
        """Why the dataset drifted, one line per part of the rule that fired."""
        out = []
        if self.columns and self.share_drifted >= self.drift_share:
            out.append(
                f"{len(self.drifted_columns)} of {len(self.columns)} columns drifted "
                f"({100 * self.share_drifted:.0f}% ≥ {100 * self.drift_share:.0f}%)"
            )
        for name in self.important_drifted:
            rank = self.important.index(name) + 1
            out.append(f"'{name}' drifted, the model's most important column no. {rank}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_drift": self.dataset_drift,
            "rule": self.rule,
            "reasons": self.reasons,
            "share_drifted": self.share_drifted,
            "drift_share": self.drift_share,
            "important_columns": self.important,
            "important_drifted": self.important_drifted,
            "drifted_columns": self.drifted_columns,
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "columns": [c.to_dict() for c in self.columns.values()],
            "prediction": None if self.prediction is None else self.prediction.to_dict(),
            "target": None if self.target is None else self.target.to_dict(),
            "findings": [f.to_dict() for f in self.findings],
        }


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


# --- the statistics, on summaries -------------------------------------------------------------


def _keys(ref: Summary, cur: Summary) -> Any:
    if isinstance(ref, NumericSummary) and isinstance(cur, NumericSummary):
        return np.union1d(ref.values, cur.values)
    assert isinstance(ref, CategoricalSummary) and isinstance(cur, CategoricalSummary)
    return sorted(set(ref.counts) | set(cur.counts))


def _counts(summary: Summary, keys: Any) -> np.ndarray:
    if isinstance(summary, NumericSummary):
        out = np.zeros(len(keys))
        out[np.searchsorted(keys, summary.values)] = summary.counts
        return out
    return np.array([summary.counts.get(k, 0) for k in keys], dtype="float64")


def distinct_union(ref: Summary, cur: Summary) -> int:
    return len(_keys(ref, cur))


def _step_cdfs(ref: NumericSummary, cur: NumericSummary) -> tuple[np.ndarray, ...]:
    support = np.union1d(ref.values, cur.values)
    cdf_ref = np.cumsum(_counts(ref, support)) / ref.n
    cdf_cur = np.cumsum(_counts(cur, support)) / cur.n
    return support, cdf_ref, cdf_cur


def wasserstein_normed(ref: NumericSummary, cur: NumericSummary) -> float:
    """First Wasserstein distance divided by the reference's std (at least 0.001). Both are
    taken in units of ``scale_for`` the values, so values near the float64 limit give a finite
    ratio where the distance and the std alone would overflow."""
    support, cdf_ref, cdf_cur = _step_cdfs(ref, cur)
    scale = scale_for(support)
    gaps = np.diff(support / scale) if scale != 1.0 else np.diff(support)
    distance_ = float(np.sum(np.abs(cdf_ref[:-1] - cdf_cur[:-1]) * gaps))
    return distance_ / max(ref.std_over(scale), 0.001 / scale)


def ks_p_value(ref: NumericSummary, cur: NumericSummary) -> float:
    """Two-sided two-sample KS p-value, as scipy's ks_2samp(method='auto') computes it."""
    from scipy import stats  # here: scipy.stats alone costs 60 MB of memory to import

    if ref.exact and cur.exact and max(ref.n, cur.n) <= _KS_EXACT_MAX:
        finite = (s.sample()[: s.n] for s in (ref, cur))
        return float(stats.ks_2samp(*finite).pvalue)
    _, cdf_ref, cdf_cur = _step_cdfs(ref, cur)
    d = float(np.max(np.abs(cdf_ref - cdf_cur)))
    m, n = sorted([float(ref.n), float(cur.n)], reverse=True)
    return float(np.clip(stats.kstwo.sf(d, np.round(m * n / (m + n))), 0.0, 1.0))


def chisquare_p_value(ref: Summary, cur: Summary) -> float:
    from scipy import stats

    keys = _keys(ref, cur)
    expected = _counts(ref, keys) * (cur.n / ref.n)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(stats.chisquare(_counts(cur, keys), expected).pvalue)


def z_p_value(ref: Summary, cur: Summary) -> float:
    """Two-proportion z-test on the share of the first (sorted) value."""
    keys = _keys(ref, cur)
    if len(keys) <= 1:
        return 1.0
    p1 = 1.0 - _counts(ref, keys)[0] / ref.n
    p2 = 1.0 - _counts(cur, keys)[0] / cur.n
    pooled = (p1 * ref.n + p2 * cur.n) / (ref.n + cur.n)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / ref.n + 1.0 / cur.n))
    from scipy.special import ndtr  # the standard normal CDF (what scipy.stats.norm.cdf calls)

    return float(2 * (1 - ndtr(np.abs(z))))


def _binned(ref: Summary, cur: Summary, fill_zeroes: bool) -> tuple[np.ndarray, np.ndarray]:
    """Reference and current shares per bin: Sturges bins over both samples' range for numeric
    columns with more than 20 distinct reference values, otherwise one bin per value."""
    edges = None
    if isinstance(ref, NumericSummary) and isinstance(cur, NumericSummary) and ref.distinct > 20:
        scale = scale_for(ref.values, cur.values)  # a range past the float64 limit is inf
        low = min(ref.values[0], cur.values[0]) / scale
        high = max(ref.values[-1], cur.values[-1]) / scale
        edges = _bin_edges(low, high, int(np.ceil(np.log2(ref.n + cur.n)) + 1))
    if edges is not None:
        assert isinstance(ref, NumericSummary) and isinstance(cur, NumericSummary)
        p = np.histogram(ref.values / scale, edges, weights=ref.counts)[0] / ref.n
        q = np.histogram(cur.values / scale, edges, weights=cur.counts)[0] / cur.n
    else:
        keys = _keys(ref, cur)
        p, q = _counts(ref, keys) / ref.n, _counts(cur, keys) / cur.n
    if fill_zeroes:
        p, q = _fill_zeroes(p), _fill_zeroes(q)
    return p, q


def _bin_edges(low: float, high: float, bins: int) -> np.ndarray | None:
    """Equal-width edges over [low, high], or None where the range is too narrow for that many
    distinct float64 edges (values packed within a few units of the last place, as a range
    near 1e308 can be): the values are then compared one bin per value."""
    try:
        return np.histogram_bin_edges([low, high], bins=bins)
    except ValueError:
        return None


def _fill_zeroes(shares: np.ndarray) -> np.ndarray:
    smallest = shares[shares > 0].min()
    return np.where(shares == 0, smallest / 1e6 if smallest <= 1e-4 else 1e-4, shares)


def _relative_entropy(p: np.ndarray, m: np.ndarray) -> float:
    """sum(p * log(p / m)) with 0 log 0 = 0 (m > 0 wherever p > 0): scipy.special.rel_entr's
    definition, summed."""
    present = p > 0
    return float(np.sum(p[present] * np.log(p[present] / m[present])))


def jensenshannon_distance(ref: Summary, cur: Summary) -> float:
    """Jensen–Shannon distance (natural log), as scipy.spatial.distance.jensenshannon computes
    it. In numpy: importing scipy.spatial (or scipy.special) would cost more memory (26 MB,
    14 MB) than a whole drift check of 200,000 rows."""
    p, q = _binned(ref, cur, fill_zeroes=False)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2.0
    return float(np.sqrt((_relative_entropy(p, m) + _relative_entropy(q, m)) / 2.0))


def psi(ref: Summary, cur: Summary) -> float:
    p, q = _binned(ref, cur, fill_zeroes=True)
    return float(np.sum((p - q) * np.log(p / q)))


def _score(method: str, ref: Summary, cur: Summary) -> float:
    if method == "ks":
        assert isinstance(ref, NumericSummary) and isinstance(cur, NumericSummary)
        return ks_p_value(ref, cur)
    if method == "wasserstein":
        assert isinstance(ref, NumericSummary) and isinstance(cur, NumericSummary)
        return wasserstein_normed(ref, cur)
    if method == "chisquare":
        return chisquare_p_value(ref, cur)
    if method == "z":
        return z_p_value(ref, cur)
    if method == "jensenshannon":
        return jensenshannon_distance(ref, cur)
    return psi(ref, cur)


def default_method(ref: Summary, cur: Summary) -> str:
    """Evidently's default test for a column (see the module docstring)."""
    few = distinct_union(ref, cur)
    numeric = isinstance(ref, NumericSummary)
    if ref.n <= SMALL_REFERENCE:
        if numeric and few > 5:
            return "ks"
        return "chisquare" if few > 2 else "z"
    if numeric and few > 5:
        return "wasserstein"
    return "jensenshannon"


def is_drift(method: str, score: float, threshold: float) -> bool:
    if math.isnan(score):
        return False  # no evidence either way (cannot happen with two non-empty samples)
    if method == "ks":
        return score <= threshold
    if method in P_VALUE_METHODS:
        return score < threshold
    return score >= threshold


def test_column(
    name: str, ref: Summary, cur: Summary, settings: DriftSettings, kind: str
) -> ColumnDrift:
    rule = settings.columns.get(name, {})
    method = rule.get("method") or default_method(ref, cur)
    if method in ("ks", "wasserstein") and not isinstance(ref, NumericSummary):
        method = "chisquare" if ref.n <= SMALL_REFERENCE else "jensenshannon"
    threshold = float(rule.get("threshold", settings.threshold_for(method)))
    score = _score(method, ref, cur)
    return ColumnDrift(
        column=name,
        kind=kind,
        method=method,
        score=score,
        threshold=threshold,
        drift=is_drift(method, score, threshold),
        psi=psi(ref, cur),
        n_reference=ref.n,
        n_current=cur.n,
        missing_reference=ref.missing / max(ref.rows, 1),
        missing_current=cur.missing / max(cur.rows, 1),
    )


def compare(
    reference: Profile, current: Profile, settings: DriftSettings | None = None
) -> DriftResult:
    """Drift of ``current`` against ``reference``, column by column."""
    settings = settings or DriftSettings()
    columns: dict[str, ColumnDrift] = {}
    for name, kind in reference.kinds.items():
        ref, cur = reference.columns.get(name), current.columns.get(name)
        if ref is None or cur is None or ref.n == 0 or cur.n == 0:
            continue
        columns[name] = test_column(name, ref, cur, settings, kind)
    result = DriftResult(
        columns=columns,
        drift_share=settings.drift_share,
        n_reference=reference.rows,
        n_current=current.rows,
        findings=list(current.findings),
        important=most_important(reference, columns, settings.important_columns),
        important_columns=settings.important_columns,
    )
    kind = "numeric" if reference.meta.get("task") == "regression" else "categorical"
    for attr in ("prediction", "target"):
        ref_s, cur_s = getattr(reference, attr), getattr(current, attr)
        if ref_s is not None and cur_s is not None and ref_s.n and cur_s.n:
            setattr(result, attr, test_column(attr, ref_s, cur_s, settings, kind))
    return result


IMPORTANCE_META = "importance"  # reference.meta key: [[column, importance], ...], largest first


def most_important(reference: Profile, tested: dict[str, ColumnDrift], top: int) -> list[str]:
    """The ``top`` tested columns the model relies on most (positive importance only), by the
    importance stored in the reference profile's meta; empty where none is stored."""
    ranked = reference.meta.get(IMPORTANCE_META) or []
    named = [str(c) for c, value in ranked if str(c) in tested and float(value) > 0]
    return named[:top]


def detect_drift(
    reference: pd.DataFrame | Profile,
    current: pd.DataFrame | Iterable[pd.DataFrame] | Profile,
    settings: DriftSettings | None = None,
    kinds: dict[str, str] | None = None,
) -> DriftResult:
    """Data drift of ``current`` against ``reference`` (DataFrames, an iterable of DataFrame
    chunks for the current data, or profiles). Column kinds come from the reference's dtypes
    unless given: numbers are numeric, datetimes are skipped, the rest is categorical."""
    if not isinstance(reference, Profile):
        kinds = kinds or infer_kinds(reference)
        reference = profile_table(reference, kinds)
        reference.findings = []
    if not isinstance(current, Profile):
        current = profile_table(current, reference.kinds)
    return compare(reference, current, settings)
