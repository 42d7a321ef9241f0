"""Mergeable one-pass summaries of a column: what drift tests compare.

A numeric column is summarised by its distinct values and their counts, exactly, up to
``EXACT_DISTINCT`` distinct values; past that, neighbouring values are merged into equal-mass
centroids (value = the weighted mean of what was merged, finer in the tails), a sketch whose
Wasserstein distance stays within about 0.05% of the exact one (tests/test_monitoring.py). A
categorical column is summarised by its category counts. Summaries are built chunk by chunk, so
memory stays bounded however many rows stream through, and they serialise to plain JSON (no
pickle), which is how a model version carries its reference profile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

EXACT_DISTINCT = 20_000  # distinct values kept exactly per numeric column
SKETCH_CENTROIDS = 10_000  # centroids kept once a column has more distinct values
# Below this magnitude sums, differences and squares over a column cannot overflow float64
# (2**500 squared is 2**1000); above it, arithmetic runs on values divided by a power of two.
_SAFE_MAGNITUDE = 2.0**500


def scale_for(*arrays: np.ndarray) -> float:
    """1.0 for ordinary values (so they compute exactly as they always did), else the power of
    two at or above the largest magnitude, at most 2**1023: values divided by it lie within
    [-2, 2] (the division is exact), so sums, differences and squares of them stay finite, where
    values near the float64 limit (1.7e308) overflow to inf and NaN."""
    largest = _largest(*arrays)
    return 1.0 if largest < _SAFE_MAGNITUDE else _power_of_two(largest)


def _largest(*arrays: np.ndarray) -> float:
    return max((float(np.max(np.abs(a))) for a in arrays if len(a)), default=0.0)


def _power_of_two(magnitude: float) -> float:
    return 2.0 ** min(math.ceil(math.log2(magnitude)), 1023) if magnitude > 0 else 1.0


def _mean(data: np.ndarray, scale: float) -> float:
    return float(np.mean(data / scale)) * scale if scale != 1.0 else float(data.mean())


def _distinct(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values and their counts: by hashing when values repeat (one pass), by
    sorting when most are distinct (a continuous column), whichever a probe of 1,024 says."""
    step = max(len(data) // 1024, 1)
    probe = data[::step][:1024]
    if len(data) > 4096 and len(np.unique(probe)) > len(probe) // 2:
        ordered = np.sort(data)
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        return ordered[starts], np.diff(np.r_[starts, len(ordered)])
    counted = pd.Series(data).value_counts(sort=False).sort_index()
    return counted.index.to_numpy(dtype="float64"), counted.to_numpy(dtype="int64")


@dataclass
class NumericSummary:
    """Distinct values (sorted) with counts; ``exact`` is False once merged into centroids."""

    values: np.ndarray = field(default_factory=lambda: np.empty(0))
    counts: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    missing: int = 0
    exact: bool = True
    # Running moments over every finite value (exact even when the values are sketched).
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    kind: str = "numeric"

    @property
    def std(self) -> float:
        """Population standard deviation (ddof=0, as numpy and Evidently compute it)."""
        return self.std_over(1.0)

    def std_over(self, scale: float) -> float:
        """The standard deviation divided by ``scale`` (see scale_for). When the running second
        moment overflowed (values beyond about 1e154), it is computed again from the summarised
        values divided by ``scale``: exact for an exact summary, close for a sketch."""
        if not self.n:
            return 0.0
        if math.isfinite(self.m2):
            return float(np.sqrt(self.m2 / self.n)) / scale
        within = _power_of_two(_largest(self.values, np.array([self.mean])))
        centred = self.values / within - self.mean / within
        spread = float(np.sqrt(np.dot(self.counts, centred * centred) / self.n))
        return spread * (within / scale)

    @property
    def rows(self) -> int:
        return self.n + self.missing

    @property
    def distinct(self) -> int:
        return len(self.values)

    def add(self, chunk: pd.Series | np.ndarray) -> NumericSummary:
        """Fold a chunk of values in (NaN and ±inf count as missing)."""
        data = np.asarray(chunk, dtype="float64")
        finite = np.isfinite(data)
        n_b = int(finite.sum())
        self.missing += len(data) - n_b
        if n_b < len(data):
            data = data[finite]
        if n_b == 0:
            return self
        # Chan et al.'s parallel update of mean and M2: stable, and exact chunk by chunk.
        scale = scale_for(data)
        mean_b = _mean(data, scale)
        centred = data / scale - mean_b / scale if scale != 1.0 else data - mean_b
        with np.errstate(over="ignore"):  # M2 of values past 1e154 is inf: see std_over
            m2_b = float(np.dot(centred, centred)) * scale * scale
        del centred
        self._update_moments(n_b, mean_b, m2_b)
        self._merge(*_distinct(data))
        return self

    def _update_moments(self, n_b: int, mean_b: float, m2_b: float) -> None:
        total = self.n + n_b
        delta = mean_b - self.mean
        step = delta * n_b / total
        if math.isfinite(step):
            self.mean += step
        else:  # means far apart near the float64 limit: a weighted mean cannot overflow
            self.mean = self.mean * (self.n / total) + mean_b * (n_b / total)
        # Past about 1e154 the square overflows to inf (never NaN: every term is >= 0).
        self.m2 += m2_b + (delta * delta * self.n * n_b / total if self.n else 0.0)
        self.n = total

    def _merge(self, values: np.ndarray, counts: np.ndarray) -> None:
        if len(self.values):
            values = np.concatenate([self.values, values])
            counts = np.concatenate([self.counts, counts])
        order = np.argsort(values, kind="stable")
        values, counts = values[order], counts[order]
        starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
        self.values = values[starts]
        self.counts = np.add.reduceat(counts, starts) if len(starts) else counts
        if len(self.values) > EXACT_DISTINCT:
            self._compress()

    def _compress(self) -> None:
        """Merge neighbours into at most SKETCH_CENTROIDS centroids, smaller in the tails (the
        arcsine scale of t-digest), where a heavy tail would otherwise carry most of the error."""
        counts = self.counts.astype("float64")
        middle = (np.cumsum(counts) - counts / 2) / counts.sum()
        scale = np.arcsin(2 * middle - 1) / np.pi + 0.5
        group = np.minimum((scale * SKETCH_CENTROIDS).astype(np.int64), SKETCH_CENTROIDS - 1)
        mass = np.bincount(group, weights=counts)
        scale = scale_for(self.values)
        moment = np.bincount(group, weights=counts * (self.values / scale))
        keep = mass > 0
        self.values = moment[keep] / mass[keep] * scale
        self.counts = np.rint(mass[keep]).astype(np.int64)
        self.exact = False

    def merged(self, other: NumericSummary) -> NumericSummary:
        out = NumericSummary(values=self.values, counts=self.counts, missing=self.missing)
        out.exact = self.exact and other.exact
        out.n, out.mean, out.m2 = self.n, self.mean, self.m2
        if other.n:
            out._update_moments(other.n, other.mean, other.m2)
            out._merge(other.values, other.counts)
        out.missing += other.missing
        return out

    def quantiles(self, probabilities: np.ndarray) -> np.ndarray:
        """Quantiles of the summarised values (lower interpolation over the distinct values)."""
        if not self.n:
            return np.full(len(probabilities), np.nan)
        cumulative = np.cumsum(self.counts)
        ranks = np.clip(np.ceil(np.asarray(probabilities) * self.n), 1, self.n)
        return self.values[np.searchsorted(cumulative, ranks)]

    def sample(self) -> np.ndarray:
        """The summarised values, one per row (exact when ``exact``), missing rows as NaN."""
        return np.concatenate([np.repeat(self.values, self.counts), np.full(self.missing, np.nan)])

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "numeric",
            "exact": self.exact,
            "n": self.n,
            "missing": self.missing,
            "mean": self.mean,
            "m2": self.m2 if math.isfinite(self.m2) else None,  # overflowed: JSON has no inf
            "values": self.values.tolist(),
            "counts": self.counts.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NumericSummary:
        return cls(
            values=np.asarray(data["values"], dtype="float64"),
            counts=np.asarray(data["counts"], dtype="int64"),
            missing=int(data["missing"]),
            exact=bool(data["exact"]),
            n=int(data["n"]),
            mean=float(data["mean"]),
            m2=math.inf if data["m2"] is None else float(data["m2"]),
        )


@dataclass
class CategoricalSummary:
    """Counts per category (as strings, see shipml.data.coerce.category_str)."""

    counts: dict[str, int] = field(default_factory=dict)
    missing: int = 0
    kind: str = "categorical"

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    @property
    def rows(self) -> int:
        return self.n + self.missing

    @property
    def distinct(self) -> int:
        return len(self.counts)

    def add(self, chunk: pd.Series) -> CategoricalSummary:
        """Fold a chunk in: values are counted first (one hashing pass over the rows), then
        only the distinct values are turned into category strings; blanks count as missing."""
        from shipml.data.coerce import category_str

        counted = pd.Series(chunk).value_counts(dropna=False, sort=False)
        for key, count in zip(counted.index, counted.to_numpy(), strict=True):
            if _is_missing(key):
                self.missing += int(count)
                continue
            text = key if isinstance(key, str) else category_str(key)
            self.counts[text] = self.counts.get(text, 0) + int(count)
        return self

    def merged(self, other: CategoricalSummary) -> CategoricalSummary:
        counts = dict(self.counts)
        for key, count in other.counts.items():
            counts[key] = counts.get(key, 0) + count
        return CategoricalSummary(counts=counts, missing=self.missing + other.missing)

    def frequencies(self, keys: list[str]) -> np.ndarray:
        total = max(self.n, 1)
        return np.array([self.counts.get(k, 0) for k in keys], dtype="float64") / total

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "categorical", "missing": self.missing, "counts": self.counts}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CategoricalSummary:
        counts = {str(k): int(v) for k, v in data["counts"].items()}
        return cls(counts=counts, missing=int(data["missing"]))


def _is_missing(value: object) -> bool:
    """None, NaN, NA, NaT, or a blank string (as shipml.data.coerce.blank_to_missing treats it)."""
    if isinstance(value, str):
        return not value.strip()
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float | np.floating) and bool(np.isnan(value))


Summary = NumericSummary | CategoricalSummary


def new_summary(kind: str) -> Summary:
    return NumericSummary() if kind == "numeric" else CategoricalSummary()


def summary_from_dict(data: dict[str, Any]) -> Summary:
    if data["kind"] == "numeric":
        return NumericSummary.from_dict(data)
    return CategoricalSummary.from_dict(data)
