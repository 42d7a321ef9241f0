"""The fast inference path: a registered model scored without pandas or scikit-learn.

A registered ``BaggedEnsemble`` predicts through scikit-learn: a ColumnTransformer on a one-row
DataFrame, then each member's ``predict_proba``. That costs milliseconds per row, almost all of
it per-call overhead. ``FastPredictor`` scores the same model in tens of microseconds:

* each fitted preprocessor is *compiled* to plain numpy (median/constant imputation, scaling,
  one-hot lookups, datetime parts) that takes per-column arrays (``{column: values}``), so a
  JSON request never becomes a DataFrame;
* tree models (random forests, extra trees, histogram gradient boosting, LightGBM, CatBoost)
  become one ONNX graph run by onnxruntime. The graph is written here from the fitted trees
  with the ``ai.onnx.ml`` ``TreeEnsemble`` operator in double precision, comparing each
  feature exactly as the library does (scikit-learn forests and CatBoost compare float32
  values, the boosters float64), so it reproduces the library's predictions rather than
  approximating them. (The ready-made converters output float32: skl2onnx 1.20's forests,
  onnxmltools' LightGBM and CatBoost's own ONNX export are off by ~1e-4 on regression targets
  of size 100, and skl2onnx fails on scikit-learn 1.9's histogram gradient boosting.) Trees on
  float32 features may also run in float32 (``build(single=True)``: splits rounded down to
  float32, so every comparison is kept; leaf values summed in float32), which onnxruntime runs
  5–10 % faster; ``build_verified`` keeps that graph only where it passes ``verify``.
* linear and constant models (logistic regression, ridge, the baselines) are a matrix product
  or a constant in numpy; a log-transformed target is undone in numpy.

A model converts only if every part does; ``FastPredictor.build`` returns ``(None, reason)``
otherwise, and ``verify`` must then show, on held-out rows, identical labels and outputs within
1e-5 (for regression, 1e-5 relative to the size of the value) before the copy may serve.
``to_bytes``/``from_bytes`` store it next to the model: JSON plus raw arrays and the ONNX model,
never pickle.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from shipml.data.coerce import BOOL_FALSE, BOOL_TRUE, COERCERS, category_str, coerce_datetime
from shipml.data.schema import Schema
from shipml.errors import InputSchemaError
from shipml.models.bagged import BaggedEnsemble, labels_for

__all__ = [
    "TOLERANCE",
    "CompiledPreprocessor",
    "FastPredictor",
    "VerifyResult",
    "build_verified",
    "compile_preprocessor",
    "datetime_parts",
    "frame_columns",
    "record_columns",
    "verify",
]

TOLERANCE = 1e-5
FORMAT = "shipml-fastpath"
FORMAT_VERSION = 1
_MAGIC = b"SHIPMLFP"
_UNSEEN = "\x00shipml-fastpath: a category never seen\x00"
# ONNX: ai.onnx.ml opset 5 has TreeEnsemble with double outputs. IR version 10: onnx 1.23 writes
# 14 by default, newer than onnxruntime 1.31 reads (13).
_IR_VERSION = 10
_OPSETS = (("", 21), ("ai.onnx.ml", 5))
_LEQ, _GT = 0, 3  # TreeEnsemble node modes: x <= split, x > split


def _expit(x: np.ndarray) -> np.ndarray:
    """The logistic function as scipy.special.expit computes it in double precision,
    1 / (1 + exp(-x)), the same bits, without importing scipy.special (a measured part of
    `shipml predict`'s start-up); exp overflowing to inf gives 0, as there."""
    with np.errstate(over="ignore"):
        return np.asarray(1.0 / (1.0 + np.exp(-x)))


Columns = Mapping[str, Any]  # column name -> 1-D array or sequence of values, one per row


class Unsupported(Exception):
    """A step or model the fast path does not reproduce; the message says which and why."""


# -- the compiled preprocessor ------------------------------------------------------------------


@dataclass
class _Numeric:
    """Numeric and boolean columns: median imputation, then (x - mean) / scale."""

    columns: list[str]
    fill: np.ndarray
    mean: np.ndarray
    scale: np.ndarray

    @property
    def width(self) -> int:
        return len(self.columns)

    def transform(self, columns: Columns, n: int, out: np.ndarray) -> None:
        for j, name in enumerate(self.columns):
            out[:, j] = _column(columns, name, n, np.float64)
        _finish_numeric(out, self.fill, self.mean, self.scale)

    @cached_property
    def _as_floats(self) -> tuple[list[float], list[float], list[float]]:
        return self.fill.tolist(), self.mean.tolist(), self.scale.tolist()

    def transform_one(self, row: Mapping[str, Any], out: np.ndarray) -> bool:
        """One validated row (None, booleans and numbers) into ``out`` (1-D), with the float64
        operations of ``transform``; False for a value of another kind."""
        fill, mean, scale = self._as_floats
        values = []
        for j, name in enumerate(self.columns):
            value = row[name]
            kind = value.__class__
            if value is None:
                x = fill[j]
            elif kind is float:
                x = fill[j] if value != value else value
                if x in _INFINITIES:
                    raise InputSchemaError(
                        "a numeric value is infinite",
                        "give finite numbers, or leave the cell empty",
                    )
            elif kind is bool:
                x = 1.0 if value else 0.0
            elif kind is int:
                x = float(value)
            else:
                return False
            values.append((x - mean[j]) / scale[j])
        out[:] = values
        return True

    def transform_lists(self, values: Mapping[str, list[Any]], n: int, out: np.ndarray) -> bool:
        """``transform`` of ``value_columns``' input as the strict request decoder gives it
        (numbers as floats, booleans, None): all columns in one numpy call; False where one
        holds a value numpy cannot read as a number. (Unchecked, for speed: numpy reads a
        number written as text, which the strict decoder never gives.)"""
        try:
            block = np.array([values[name] for name in self.columns], dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            return False
        if block.shape != (len(self.columns), n):
            return False
        # One row per column: the same operations as transform's on contiguous memory.
        _finish_numeric(block, self.fill[:, None], self.mean[:, None], self.scale[:, None])
        out[:] = block.T
        return True


def _category_key(value: Any, fill: str) -> str | None:
    """The category a validated value (string, number, boolean, None) is looked up as, as
    ``value_columns`` then ``transform`` convert it; None for a value of another kind."""
    kind = value.__class__
    if kind is str:
        return value if value.strip() else fill
    if value is None or (kind is float and value != value):
        return fill
    if kind is int or kind is float or kind is bool:
        return category_str(value)
    return None


@dataclass
class _Categorical:
    """Categorical columns: missing -> fill value, then one-hot through per-column lookups.

    ``lookups[j]`` maps a category to its output column within this block; a category it does
    not hold goes to ``unknown[j]`` (the infrequent column, or -1: all zeros)."""

    columns: list[str]
    fill: list[str]
    lookups: list[dict[str, int]]
    unknown: list[int]
    width: int

    def transform(self, columns: Columns, n: int, out: np.ndarray) -> None:
        out[:] = 0.0
        for j, name in enumerate(self.columns):
            values = _column(columns, name, n, None)
            lookup, unknown, fill = self.lookups[j], self.unknown[j], self.fill[j]
            if n > 1 and set(map(type, values)) <= {str, float}:
                # Strings and NaN (as value_columns gives them): each distinct value looked
                # up once. (Only these kinds: 1 == 1.0 == True as keys, not as categories.)
                index_of = {
                    value: lookup.get(
                        value if value.__class__ is str else _float_category(value, fill),
                        unknown,
                    )
                    for value in set(values)
                }
                indices = np.fromiter(map(index_of.__getitem__, values), np.intp, count=n)
                hit = np.flatnonzero(indices >= 0)
                out[hit, indices[hit]] = 1.0
                continue
            for row, value in enumerate(values):
                if value.__class__ is not str:
                    value = fill if _missing(value) else category_str(value)
                index = lookup.get(value, unknown)
                if index >= 0:
                    out[row, index] = 1.0

    def transform_one(self, row: Mapping[str, Any], out: np.ndarray) -> bool:
        """One validated row (strings, numbers, None) into ``out`` (1-D), as ``transform``
        after ``value_columns``; False for a value of another kind."""
        out[:] = 0.0
        for j, name in enumerate(self.columns):
            key = _category_key(row[name], self.fill[j])
            if key is None:
                return False
            index = self.lookups[j].get(key, self.unknown[j])
            if index >= 0:
                out[index] = 1.0
        return True

    def transform_lists(self, values: Mapping[str, list[Any]], n: int, out: np.ndarray) -> bool:
        """``transform`` of ``value_columns``' input as the strict request decoder gives it
        (strings, numbers, None): each distinct value converted and looked up once, as
        ``transform_one`` converts it; False for a value of another kind."""
        out[:] = 0.0
        for j, name in enumerate(self.columns):
            column = values[name]
            if len(column) != n:
                return False
            lookup, unknown, fill = self.lookups[j], self.unknown[j], self.fill[j]
            index_of: dict[Any, int] = {}
            for value in set(column):  # (1 and 1.0 are one key: both are the category '1')
                key = _category_key(value, fill)
                if key is None or value.__class__ is bool:  # (True and 1: one key, two categories)
                    return False
                index_of[value] = lookup.get(key, unknown)
            indices = np.fromiter(map(index_of.__getitem__, column), np.intp, count=n)
            hit = np.flatnonzero(indices >= 0)
            out[hit, indices[hit]] = 1.0
        return True


@dataclass
class _Datetime:
    """Datetime columns: year, month, day, day of week and hour, imputed and scaled."""

    columns: list[str]
    fill: np.ndarray
    mean: np.ndarray
    scale: np.ndarray

    @property
    def width(self) -> int:
        return 5 * len(self.columns)

    def transform(self, columns: Columns, n: int, out: np.ndarray) -> None:
        for j, name in enumerate(self.columns):
            values = np.asarray(_column(columns, name, n, None))
            if values.dtype.kind != "M":
                try:
                    values = values.astype("datetime64[ns]")
                except (TypeError, ValueError):
                    raise InputSchemaError(
                        f"column '{name}' holds values that are not datetimes",
                        "pass datetime64 values (parse dates first, see record_columns)",
                    ) from None
            out[:, 5 * j : 5 * j + 5] = datetime_parts(values)
        _finish_numeric(out, self.fill, self.mean, self.scale)


_Block = _Numeric | _Categorical | _Datetime


def _finish_numeric(out: np.ndarray, fill: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> None:
    """Impute, centre and scale in place, with the operations scikit-learn applies."""
    if not np.isfinite(out).all():
        if np.isinf(out).any():
            raise InputSchemaError(
                "a numeric value is infinite", "give finite numbers, or leave the cell empty"
            )
        np.copyto(out, np.broadcast_to(fill, out.shape), where=np.isnan(out))
    out -= mean
    out /= scale


_INFINITIES = (math.inf, -math.inf)


def _float_category(value: float, fill: str) -> str:
    return fill if value != value else category_str(value)


def _missing(value: Any) -> bool:
    return (
        value is None
        or value is pd.NA
        or value is pd.NaT
        or (isinstance(value, float | np.floating) and value != value)
    )


def _column(columns: Columns, name: str, n: int, dtype: Any) -> Any:
    try:
        values = columns[name]
    except KeyError:
        raise InputSchemaError(
            f"missing column '{name}' that the model needs",
            "add the column; the model expects the columns of the training table",
        ) from None
    if dtype is not None:
        values = np.asarray(values, dtype=dtype)
    if len(values) != n:
        raise InputSchemaError(
            f"column '{name}' has {len(values)} values, other columns {n}",
            "give every column one value per row",
        )
    return values


_NS_PER_DAY = 86_400_000_000_000
_NS_PER_HOUR = 3_600_000_000_000
_NAT = np.iinfo(np.int64).min


def datetime_parts(values: np.ndarray) -> np.ndarray:
    """(n, 5) float64: year, month, day, day of week (Monday 0) and hour; NaN where NaT.

    The values pandas' ``.dt`` accessors give for datetime64[ns] values (shipml's DatetimeParts).
    """
    stamps = np.asarray(values).astype("datetime64[ns]")
    if len(stamps) <= 8:  # a few rows: plain integer arithmetic beats a dozen numpy calls
        out = np.empty((len(stamps), 5), dtype=np.float64)
        for i, ns in enumerate(stamps.view(np.int64).tolist()):
            if ns == _NAT:
                out[i] = np.nan
                continue
            days, rest = divmod(ns, _NS_PER_DAY)
            out[i] = (*_civil_from_days(days), (days + 3) % 7, rest // _NS_PER_HOUR)
        return out
    missing = np.isnat(stamps)
    stamps = np.where(missing, np.datetime64(0, "ns"), stamps)
    days = stamps.astype("datetime64[D]")
    months = stamps.astype("datetime64[M]")
    out = np.empty((len(stamps), 5), dtype=np.float64)
    out[:, 0] = stamps.astype("datetime64[Y]").astype(np.int64) + 1970
    out[:, 1] = months.astype(np.int64) % 12 + 1
    out[:, 2] = (days - months.astype("datetime64[D]")).astype(np.int64) + 1
    out[:, 3] = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    out[:, 4] = (stamps - days).astype("timedelta64[h]").astype(np.int64)
    out[missing] = np.nan
    return out


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day count from 1970-01-01, proleptic Gregorian (H. Hinnant)."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


@dataclass
class CompiledPreprocessor:
    """A fitted shipml preprocessor as numpy: the same float64 matrix, from per-column values.

    ``columns`` gives each value list or array for one column: numbers as floats (NaN or None for
    missing), categories as strings (None or NaN for missing), datetimes as datetime64."""

    blocks: list[_Block]
    n_features: int

    @property
    def input_columns(self) -> dict[str, str]:
        """Each input column and its kind: numeric, categorical or datetime."""
        kinds = {_Numeric: "numeric", _Categorical: "categorical", _Datetime: "datetime"}
        return {c: kinds[type(b)] for b in self.blocks for c in b.columns}

    def transform_one(self, row: Mapping[str, Any]) -> np.ndarray | None:
        """The (1, n_features) matrix of one validated row by name, as ``transform`` makes it
        from ``value_columns``; None where that needs the general path (datetimes, a value of
        an unexpected kind)."""
        out = np.empty((1, self.n_features), dtype=np.float64)
        start = 0
        for block in self.blocks:
            stop = start + block.width
            if isinstance(block, _Datetime) or not block.transform_one(row, out[0, start:stop]):
                return None
            start = stop
        return out

    def transform_lists(self, values: Mapping[str, list[Any]], n: int) -> np.ndarray | None:
        """The (n, n_features) matrix of ``n`` rows given as one list per column, values as the
        strict request decoder gives them (numbers as floats, booleans, strings, None), as
        ``transform`` makes it from ``value_columns``, several times faster; None where that
        needs the general path (datetimes, a value of another kind)."""
        out = np.empty((n, self.n_features), dtype=np.float64)
        start = 0
        for block in self.blocks:
            stop = start + block.width
            if isinstance(block, _Datetime) or not block.transform_lists(
                values, n, out[:, start:stop]
            ):
                return None
            start = stop
        return out

    def transform(self, columns: Columns, n_rows: int | None = None) -> np.ndarray:
        if n_rows is None:
            n_rows = _n_rows(columns)
        out = np.empty((n_rows, self.n_features), dtype=np.float64)
        start = 0
        for block in self.blocks:
            stop = start + block.width
            part = out[:, start:stop]
            block.transform(columns, n_rows, part)
            start = stop
        return out


def _n_rows(columns: Columns) -> int:
    for values in columns.values():
        return len(values)
    raise InputSchemaError("no columns given", "give the model's input columns")


def compile_preprocessor(preprocessor: Any) -> tuple[CompiledPreprocessor | None, str]:
    """The numpy version of a fitted ``build_preprocessor`` pipeline, or None and why not."""
    try:
        return _compile(preprocessor), ""
    except Unsupported as e:
        return None, str(e)


def _compile(preprocessor: Any) -> CompiledPreprocessor:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    from shipml.features import DerivedFeatures

    if type(preprocessor) is not Pipeline or len(preprocessor.steps) != 2:
        raise Unsupported(f"preprocessor {type(preprocessor).__name__} is not shipml's pipeline")
    (_, derive), (_, columns) = preprocessor.steps
    if type(derive) is not DerivedFeatures or type(columns) is not ColumnTransformer:
        raise Unsupported("preprocessor steps are not DerivedFeatures then ColumnTransformer")
    if derive.expressions:
        raise Unsupported("derived features (expressions) are not compiled")
    if getattr(columns, "sparse_output_", False):
        raise Unsupported("the column transformer returns a sparse matrix")
    blocks: list[_Block] = []
    position = 0
    for name, transformer, selected in columns.transformers_:
        if isinstance(transformer, str):
            if transformer == "drop":
                continue
            raise Unsupported(f"column transformer step '{name}' is '{transformer}'")
        if not selected:
            continue
        if type(transformer) is not Pipeline:
            raise Unsupported(f"column transformer step '{name}' is not a Pipeline")
        names = [str(c) for c in selected]
        if len(names) != len(selected) or any(not isinstance(c, str) for c in selected):
            raise Unsupported(f"column transformer step '{name}' selects columns by position")
        block = _compile_block(name, transformer, names)
        span = columns.output_indices_[name]
        if span.start != position or span.stop - span.start != block.width:
            raise Unsupported(f"column transformer step '{name}' output width differs")
        position = span.stop
        blocks.append(block)
    if not blocks:
        raise Unsupported("the preprocessor has no columns")
    return CompiledPreprocessor(blocks, position)


def _compile_block(name: str, pipeline: Any, columns: list[str]) -> _Block:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from shipml.features import DatetimeParts

    kinds = [type(step) for _, step in pipeline.steps]
    steps = [step for _, step in pipeline.steps]
    if kinds == [SimpleImputer, StandardScaler]:
        fill = _numeric_fill(steps[0], len(columns))
        mean, scale = _scaler(steps[1], len(columns))
        return _Numeric(columns, fill, mean, scale)
    if kinds == [DatetimeParts, SimpleImputer, StandardScaler]:
        if [str(c) for c in steps[0].feature_names_in_] != columns:
            raise Unsupported(f"step '{name}': datetime columns differ from those fitted")
        fill = _numeric_fill(steps[1], 5 * len(columns))
        mean, scale = _scaler(steps[2], 5 * len(columns))
        return _Datetime(columns, fill, mean, scale)
    if kinds == [SimpleImputer, OneHotEncoder]:
        return _categorical(name, steps[0], steps[1], columns)
    raise Unsupported(f"step '{name}' ({' -> '.join(k.__name__ for k in kinds)}) is not compiled")


def _numeric_fill(imputer: Any, width: int) -> np.ndarray:
    missing = imputer.missing_values
    if imputer.add_indicator or not (isinstance(missing, float) and np.isnan(missing)):
        raise Unsupported("an imputer adds indicators or imputes other values than NaN")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fill = np.asarray(imputer.transform(np.full((1, width), np.nan)), dtype=np.float64)
    if fill.shape != (1, width) or not np.isfinite(fill).all():
        raise Unsupported("an imputer drops columns or has no value for one")
    return fill[0].copy()


def _scaler(scaler: Any, width: int) -> tuple[np.ndarray, np.ndarray]:
    mean = np.zeros(width)
    scale = np.ones(width)
    if scaler.with_mean:
        mean = np.asarray(scaler.mean_, dtype=np.float64).copy()
    if scaler.with_std and scaler.scale_ is not None:
        scale = np.asarray(scaler.scale_, dtype=np.float64).copy()
    if mean.shape != (width,) or scale.shape != (width,):
        raise Unsupported("a scaler was fitted on another number of columns")
    return mean, scale


def _categorical(name: str, imputer: Any, encoder: Any, columns: list[str]) -> _Categorical:
    missing = imputer.missing_values
    if imputer.strategy != "constant" or imputer.add_indicator:
        raise Unsupported(f"step '{name}': categories are imputed other than with a constant")
    if not (isinstance(missing, float) and np.isnan(missing)):
        raise Unsupported(f"step '{name}': the imputer imputes other values than NaN")
    fills = [str(v) for v in imputer.statistics_]
    if len(fills) != len(columns) or any(not isinstance(v, str) for v in imputer.statistics_):
        raise Unsupported(f"step '{name}': the imputer's fill values are not strings")
    if encoder.handle_unknown not in ("ignore", "infrequent_if_exist", "warn"):
        raise Unsupported(f"step '{name}': unknown categories raise (handle_unknown='error')")
    if getattr(encoder, "sparse_output", False):
        raise Unsupported(f"step '{name}': the encoder returns a sparse matrix")
    categories = encoder.categories_
    if any(not isinstance(c, str) for cats in categories for c in cats):
        raise Unsupported(f"step '{name}': a category is not a string")
    # Ask the fitted encoder itself where each category (and one it never saw) goes: one
    # probe row per category of each column (the other columns at their first category), all
    # in one transform call (one call per column cost ~25 ms each: seconds on a wide table).
    probes = [[*cats, _UNSEEN] for cats in categories]
    grid = np.empty((sum(map(len, probes)), len(columns)), dtype=object)
    for k, other in enumerate(categories):
        grid[:, k] = other[0]
    starts = np.cumsum([0, *map(len, probes)])
    for j, values in enumerate(probes):
        grid[starts[j] : starts[j + 1], j] = values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoded = np.asarray(encoder.transform(grid), dtype=np.float64)
    width = encoded.shape[1]
    offsets = np.cumsum([0, *encoder._n_features_outs])
    lookups: list[dict[str, int]] = []
    unknown: list[int] = []
    for j, cats in enumerate(categories):
        cells = encoded[starts[j] : starts[j + 1], offsets[j] : offsets[j + 1]]
        if ((cells != 0) & (cells != 1)).any() or (cells.sum(axis=1) > 1).any():
            raise Unsupported(f"step '{name}': the encoder does not output one-hot columns")
        where = [int(offsets[j] + np.argmax(row)) if row.any() else -1 for row in cells]
        lookups.append({str(c): w for c, w in zip(cats, where[:-1], strict=True)})
        unknown.append(where[-1])
    if width != int(sum(encoder._n_features_outs)):
        raise Unsupported(f"step '{name}': the encoder's output width differs")
    return _Categorical(columns, fills, lookups, unknown, width)


# -- models as ONNX trees or numpy --------------------------------------------------------------


def float32_at_or_below(values: np.ndarray) -> np.ndarray:
    """The largest float32 at or below each float64 value: for a float32 ``x``,
    ``x <= result`` exactly where ``x <= value``."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore"):
        out = values.astype(np.float32)
    above = out.astype(np.float64) > values
    out[above] = np.nextafter(out[above], np.float32(-np.inf))
    return out


@dataclass
class _Trees:
    """TreeEnsemble (ai.onnx.ml opset 5) attributes for one part, built tree by tree."""

    float32: bool  # whether the library compares float32 features (forests, CatBoost)
    n_targets: int
    feature: list[np.ndarray] = field(default_factory=list)
    split: list[np.ndarray] = field(default_factory=list)
    mode: list[np.ndarray] = field(default_factory=list)
    true_id: list[np.ndarray] = field(default_factory=list)
    true_leaf: list[np.ndarray] = field(default_factory=list)
    false_id: list[np.ndarray] = field(default_factory=list)
    false_leaf: list[np.ndarray] = field(default_factory=list)
    leaf_target: list[np.ndarray] = field(default_factory=list)
    leaf_weight: list[np.ndarray] = field(default_factory=list)
    roots: list[int] = field(default_factory=list)
    n_nodes: int = 0
    n_leaves: int = 0

    def add(
        self,
        left: np.ndarray,
        right: np.ndarray,
        feature: np.ndarray,
        split: np.ndarray,
        mode: int,
        value: np.ndarray,
        target: int,
    ) -> None:
        """One tree as node arrays (node 0 the root, ``left[i] < 0`` for a leaf): an interior
        node sends x[feature] <mode> split to ``left`` (no missing x reaches it: see ``node``);
        a leaf adds ``value`` to output ``target``."""
        is_leaf = np.asarray(left) < 0
        leaf_at = np.cumsum(is_leaf) - 1 + self.n_leaves
        node_at = np.cumsum(~is_leaf) - 1 + self.n_nodes
        n_leaves = int(is_leaf.sum())
        if is_leaf[0]:  # a tree that is one leaf: a node whose branches both lead to it
            self.feature.append(np.zeros(1, np.int64))
            self.split.append(np.zeros(1))
            self.mode.append(np.full(1, _LEQ, np.uint8))
            for ids, leafs in ((self.true_id, self.true_leaf), (self.false_id, self.false_leaf)):
                ids.append(np.array([self.n_leaves], np.int64))
                leafs.append(np.ones(1, np.int64))
            self.roots.append(self.n_nodes)
            self.n_nodes += 1
        else:
            inner = ~is_leaf
            lchild, rchild = np.asarray(left)[inner], np.asarray(right)[inner]
            self.feature.append(np.asarray(feature, np.int64)[inner])
            self.split.append(np.asarray(split, np.float64)[inner])
            self.mode.append(np.full(int(inner.sum()), mode, np.uint8))
            for child, ids, leafs in (
                (lchild, self.true_id, self.true_leaf),
                (rchild, self.false_id, self.false_leaf),
            ):
                ids.append(np.where(is_leaf[child], leaf_at[child], node_at[child]))
                leafs.append(is_leaf[child].astype(np.int64))
            self.roots.append(int(node_at[0]))
            self.n_nodes += int(inner.sum())
        self.leaf_target.append(np.full(n_leaves, target, np.int64))
        self.leaf_weight.append(np.asarray(value, np.float64)[is_leaf])
        self.n_leaves += n_leaves

    def node(self, source: str, output: str, single: bool = False) -> Any:
        """The TreeEnsemble node. ``single`` (only for float32 features): splits and leaf
        values in float32, the splits rounded down, so ``x <= split`` holds for a float32 ``x``
        exactly where it holds against the float64 split (5–10 % faster in onnxruntime; the sum of
        the leaf values is float32's, which ``verify`` checks)."""
        from onnx import helper, numpy_helper

        def ints(parts: list[np.ndarray]) -> list[int]:
            return [int(v) for v in np.concatenate(parts)]

        splits = np.concatenate(self.split)
        weights = np.concatenate(self.leaf_weight)
        if single:
            splits = float32_at_or_below(splits)
            weights = weights.astype(np.float32)

        return helper.make_node(
            "TreeEnsemble",
            [source],
            [output],
            domain="ai.onnx.ml",
            n_targets=self.n_targets,
            aggregate_function=1,  # SUM
            post_transform=0,  # NONE
            tree_roots=self.roots,
            nodes_featureids=ints(self.feature),
            nodes_splits=numpy_helper.from_array(splits, "splits"),
            nodes_modes=numpy_helper.from_array(np.concatenate(self.mode), "modes"),
            nodes_truenodeids=ints(self.true_id),
            nodes_trueleafs=ints(self.true_leaf),
            nodes_falsenodeids=ints(self.false_id),
            nodes_falseleafs=ints(self.false_leaf),
            # The trees only ever see a compiled preprocessor's output, imputed and finite:
            # no NaN reaches them, so where each library sends one is moot, and with no node
            # tracking it onnxruntime walks the trees without a NaN test per node (7-10 %
            # faster).
            nodes_missing_value_tracks_true=[0] * self.n_nodes,
            leaf_targetids=ints(self.leaf_target),
            leaf_weights=numpy_helper.from_array(weights, "weights"),
        )


@dataclass
class _Part:
    """One fitted part: how its raw output is computed, and what turns it into predictions."""

    member: str
    preprocessor: int
    kind: str  # "trees" (ONNX), "linear" or "constant"
    post: dict[str, Any]  # divide, scale, base, link (+ alpha), log_target
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # linear: coef, intercept
    trees: _Trees | None = None
    output: str = ""  # the ONNX output name of a "trees" part


def _convert(estimator: Any, task: str, classes: np.ndarray | None) -> _Part:
    """A part for ``estimator`` (member and preprocessor filled in by the caller)."""
    from sklearn.compose import TransformedTargetRegressor

    from shipml.models.catalog import LogTarget

    if type(estimator) is TransformedTargetRegressor:
        transformer = getattr(estimator, "transformer_", None)
        if type(transformer) is not LogTarget or estimator.func is not None:
            raise Unsupported("a transformed target other than shipml's log target")
        if task != "regression":
            raise Unsupported("a transformed target on a classifier")
        part = _convert(estimator.regressor_, task, classes)
        if "log_target" in part.post:
            raise Unsupported("a log target inside a log target")
        # [low, high, shift]: LogTarget's clip bounds and its out-of-fold bias correction
        shift = float(getattr(transformer, "shift", 0.0))
        part.post["log_target"] = [float(transformer.low_), float(transformer.high_), shift]
        return part
    if task == "classification":
        own = getattr(estimator, "classes_", None)
        if own is None or classes is None or [str(c) for c in own] != [str(c) for c in classes]:
            raise Unsupported(f"{type(estimator).__name__} has other classes than the ensemble")
    name = type(estimator).__name__
    module = type(estimator).__module__.split(".")[0]
    if module == "sklearn" and name in (
        "RandomForestClassifier",
        "RandomForestRegressor",
        "ExtraTreesClassifier",
        "ExtraTreesRegressor",
    ):
        return _forest(estimator, task)
    if module == "sklearn" and name in (
        "HistGradientBoostingClassifier",
        "HistGradientBoostingRegressor",
    ):
        return _hist_gradient_boosting(estimator, task)
    if module == "lightgbm" and name in ("LGBMClassifier", "LGBMRegressor"):
        return _lightgbm(estimator, task)
    if module == "catboost" and name in ("CatBoostClassifier", "CatBoostRegressor"):
        return _catboost(estimator, task)
    if module == "sklearn" and name in ("LogisticRegression", "Ridge", "LinearRegression"):
        return _linear(estimator, task)
    if module == "sklearn" and name in ("DummyClassifier", "DummyRegressor"):
        return _constant(estimator, task)
    raise Unsupported(f"{name} has no fast version")


def _part(kind: str, post: dict[str, Any], **kwargs: Any) -> _Part:
    return _Part(member="", preprocessor=-1, kind=kind, post=post, **kwargs)


def _classifier_link(n_classes: int) -> dict[str, Any]:
    return {"link": "binary"} if n_classes == 2 else {"link": "softmax"}


def _forest(forest: Any, task: str) -> _Part:
    """Random forests and extra trees: the mean of the trees' leaf class shares (values)."""
    if forest.n_outputs_ != 1:
        raise Unsupported("a forest with several outputs")
    n_classes = len(forest.classes_) if task == "classification" else 1
    # Two classes: one output, the second class's share; the first is 1 minus it.
    targets = list(range(1, 2)) if n_classes == 2 else list(range(n_classes))
    trees = _Trees(float32=True, n_targets=len(targets))
    for estimator in forest.estimators_:
        tree = estimator.tree_
        values = np.asarray(tree.value[:, 0, :], dtype=np.float64)
        if task == "classification":
            total = values.sum(axis=1, keepdims=True)
            total[total == 0.0] = 1.0
            values = values / total
        for t, c in enumerate(targets):
            trees.add(
                tree.children_left,
                tree.children_right,
                tree.feature,
                tree.threshold,
                _LEQ,
                values[:, c],
                t,
            )
    post: dict[str, Any] = {"divide": float(len(forest.estimators_))}
    if task == "classification":
        post["link"] = "complement" if n_classes == 2 else "identity"
    return _part("trees", post, trees=trees)


def _hist_gradient_boosting(model: Any, task: str) -> _Part:
    if getattr(model, "is_categorical_", None) is not None and np.any(model.is_categorical_):
        raise Unsupported("histogram gradient boosting with categorical features")
    link = type(model._loss.link).__name__
    links = {"IdentityLink": "identity", "LogLink": "exp", "LogitLink": "binary"}
    links["MultinomialLogit"] = "softmax"
    if link not in links:
        raise Unsupported(f"histogram gradient boosting with a {link} link")
    n_targets = model.n_trees_per_iteration_
    trees = _Trees(float32=False, n_targets=n_targets)
    for iteration in model._predictors:
        for k, predictor in enumerate(iteration):
            nodes = predictor.nodes
            if nodes["is_categorical"].any():
                raise Unsupported("histogram gradient boosting with categorical splits")
            leaf = nodes["is_leaf"].astype(bool)
            trees.add(
                np.where(leaf, -1, nodes["left"].astype(np.int64)),
                nodes["right"].astype(np.int64),
                nodes["feature_idx"],
                nodes["num_threshold"],
                _LEQ,
                nodes["value"],
                k,
            )
    base = np.asarray(model._baseline_prediction, dtype=np.float64).reshape(-1)
    return _part("trees", {"base": base.tolist(), "link": links[link]}, trees=trees)


def _lightgbm(model: Any, task: str) -> _Part:
    params = model.get_params()
    if params.get("linear_tree") or params.get("boosting_type", "gbdt") == "rf":
        raise Unsupported("LightGBM linear trees or random-forest mode")
    dump = model.booster_.dump_model()
    objective = str(dump.get("objective", "")).split()
    name = objective[0] if objective else ""
    identity = ("regression", "regression_l1", "huber", "fair", "quantile", "mape")
    post: dict[str, Any]
    if name in identity:
        post = {"link": "identity"}
    elif name in ("poisson", "gamma", "tweedie"):
        post = {"link": "exp"}
    elif name == "binary":
        sigmoid = [float(p.split(":")[1]) for p in objective[1:] if p.startswith("sigmoid:")]
        post = {"link": "binary", "alpha": sigmoid[0] if sigmoid else 1.0}
    elif name in ("multiclass", "softmax"):
        post = {"link": "softmax"}
    else:
        raise Unsupported(f"LightGBM objective '{dump.get('objective')}'")
    if dump.get("average_output"):
        raise Unsupported("LightGBM averaging its trees")
    per_iteration = int(dump["num_tree_per_iteration"])
    trees = _Trees(float32=False, n_targets=per_iteration)
    for info in dump["tree_info"]:
        left, right, feature, threshold, value = _lightgbm_tree(info["tree_structure"])
        target = int(info["tree_index"]) % per_iteration
        trees.add(left, right, feature, threshold, _LEQ, value, target)
    return _part("trees", post, trees=trees)


def _lightgbm_tree(
    root: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """left, right, feature, threshold, value of one dumped LightGBM tree."""
    nodes: list[dict[str, Any]] = [root]
    left: list[int] = []
    right: list[int] = []
    i = 0
    while i < len(nodes):
        node = nodes[i]
        if "leaf_value" in node or "split_feature" not in node:
            if "leaf_coeff" in node:
                raise Unsupported("LightGBM linear trees")
            left.append(-1)
            right.append(-1)
        else:
            if node.get("decision_type") != "<=":
                raise Unsupported("LightGBM categorical splits")
            if node.get("missing_type") not in ("None", "NaN"):
                raise Unsupported(f"LightGBM missing values as '{node.get('missing_type')}'")
            left.append(len(nodes))
            nodes.append(node["left_child"])
            right.append(len(nodes))
            nodes.append(node["right_child"])
        i += 1
    feature = [int(n.get("split_feature", 0)) for n in nodes]
    threshold = [float(n.get("threshold", 0.0)) for n in nodes]
    value = [float(n.get("leaf_value", 0.0)) for n in nodes]
    return (
        np.asarray(left),
        np.asarray(right),
        np.asarray(feature),
        np.asarray(threshold),
        np.asarray(value),
    )


def _catboost(model: Any, task: str) -> _Part:
    loss = str(model.get_all_params().get("loss_function", ""))
    links = {"RMSE": "identity", "Logloss": "binary", "MultiClass": "softmax"}
    if loss not in links:
        raise Unsupported(f"CatBoost loss '{loss}'")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.json")
        model.save_model(path, format="json")
        with open(path, encoding="utf-8") as f:
            dump = json.load(f)
    if dump.get("features_info", {}).get("categorical_features") or "non_symmetric" in str(
        dump.keys()
    ):
        raise Unsupported("CatBoost with categorical features or non-symmetric trees")
    flat = {
        f["feature_index"]: f["flat_feature_index"] for f in dump["features_info"]["float_features"]
    }
    scale, bias = dump.get("scale_and_bias", [1.0, [0.0]])
    bias = np.atleast_1d(np.asarray(bias, dtype=np.float64))
    n_targets = len(bias)
    trees = _Trees(float32=True, n_targets=n_targets)
    for tree in dump["oblivious_trees"]:
        splits = tree.get("splits") or []
        if any(s.get("split_type") != "FloatFeature" for s in splits):
            raise Unsupported("CatBoost splits on other than numeric features")
        depth = len(splits)
        values = np.asarray(tree["leaf_values"], dtype=np.float64).reshape(2**depth, n_targets)
        # A full binary tree: level d tests split d; taking its true branch (x > border) sets
        # bit d of the leaf index, as CatBoost indexes the leaves of a symmetric tree.
        n_inner = 2**depth - 1
        left = np.full(n_inner + 2**depth, -1)
        right = np.full(n_inner + 2**depth, -1)
        feature = np.zeros(n_inner + 2**depth, np.int64)
        border = np.zeros(n_inner + 2**depth)
        leaf_of = np.zeros(n_inner + 2**depth, np.int64)
        prefix = {0: 0}  # node -> leaf bits chosen on the way to it
        for d, split in enumerate(splits):
            first = 2**d - 1
            for node in range(first, first + 2**d):
                feature[node] = flat[split["float_feature_index"]]
                border[node] = float(np.float32(split["border"]))
                # true (x > border) first: ``left`` is the branch TreeEnsemble takes when true
                true_child, false_child = 2 * node + 1, 2 * node + 2
                left[node], right[node] = true_child, false_child
                prefix[true_child] = prefix[node] | (1 << d)
                prefix[false_child] = prefix[node]
        for node in range(n_inner, n_inner + 2**depth):
            leaf_of[node] = prefix[node]
        for k in range(n_targets):
            trees.add(left, right, feature, border, _GT, values[leaf_of, k], k)
    post = {"scale": float(scale), "base": bias.tolist(), "link": links[loss]}
    return _part("trees", post, trees=trees)


def _linear(model: Any, task: str) -> _Part:
    coef = np.asarray(model.coef_, dtype=np.float64)
    intercept = np.atleast_1d(np.asarray(model.intercept_, dtype=np.float64))
    if coef.ndim == 1:
        coef = coef[None, :]
    if coef.shape[0] != len(intercept):
        raise Unsupported(f"{type(model).__name__} with several outputs")
    if task == "classification":
        post = _classifier_link(len(model.classes_))
        if post["link"] == "softmax" and coef.shape[0] != len(model.classes_):
            raise Unsupported("a one-vs-rest logistic regression")
    else:
        post = {"link": "identity"}
    return _part("linear", post, arrays={"coef": coef, "intercept": intercept})


def _constant(model: Any, task: str) -> _Part:
    if getattr(model, "strategy", "") == "stratified" or getattr(model, "n_outputs_", 1) != 1:
        raise Unsupported("a random or multi-output baseline")
    one = np.zeros((1, int(getattr(model, "n_features_in_", 1))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = model.predict_proba(one) if task == "classification" else model.predict(one)
    values = np.asarray(value, dtype=np.float64).reshape(-1)
    return _part("constant", {"link": "identity"}, arrays={"values": values})


def _apply_post(raw: np.ndarray, post: Mapping[str, Any], task: str) -> np.ndarray:
    """Raw scores (n, k) -> the estimator's predict_proba (n, classes) or predict (n,)."""
    out = raw
    if "scale" in post:
        out = out * post["scale"]
    if "divide" in post:
        out = out / post["divide"]
    if "base" in post:
        out = out + np.asarray(post["base"], dtype=np.float64)
    link = post.get("link", "identity")
    if link == "binary":
        alpha = post.get("alpha", 1.0)
        p = _expit(out[:, 0] if alpha == 1.0 else alpha * out[:, 0])
        out = np.column_stack([1 - p, p])
    elif link == "complement":
        out = np.column_stack([1 - out[:, 0], out[:, 0]])
    elif link == "softmax":
        out = out - out.max(axis=1, keepdims=True)
        np.exp(out, out=out)
        out /= out.sum(axis=1, keepdims=True)
    elif link == "exp":
        out = np.exp(out)
    if task == "regression":
        out = out[:, 0]
        if "log_target" in post:
            low, high, *shift = post["log_target"]  # a copy built before the shift has none
            out = np.clip(out, low, high)
            out = np.expm1(out + shift[0] if shift and shift[0] else out)
    return out


# -- the fast predictor -------------------------------------------------------------------------


@dataclass(eq=False)
class FastPredictor:
    """A BaggedEnsemble as compiled preprocessors, one ONNX graph and numpy parts."""

    task: str
    classes: np.ndarray | None
    threshold: float | None
    weights: dict[str, float]
    preprocessors: list[CompiledPreprocessor]
    parts: list[_Part]
    onnx_model: bytes | None
    inputs: dict[str, tuple[int, bool]]  # ONNX input name -> (preprocessor, float32 values)
    threads: int = 1
    _session: Any = field(default=None, init=False, repr=False)  # onnxruntime.InferenceSession

    @classmethod
    def build(
        cls, ensemble: BaggedEnsemble, schema: Schema, threads: int = 1, single: bool = False
    ) -> tuple[FastPredictor | None, str]:
        """The fast copy of ``ensemble``, or (None, why not). It still needs ``verify``.
        ``single``: trees on float32 features in float32 (see ``_Trees.node``)."""
        if schema.derived:
            return None, "derived features (expressions) are not compiled"
        if getattr(ensemble, "stack", None):
            return None, "a second layer (stacking) is not compiled"
        if ensemble.task not in ("classification", "regression"):
            return None, f"task '{ensemble.task}'"
        classes = getattr(ensemble, "classes_", None)
        if ensemble.task == "classification" and classes is None:
            return None, "the classifier has no classes"
        used = sorted({index for _, index, _ in ensemble.parts})
        preprocessors: list[CompiledPreprocessor] = []
        renumber: dict[int, int] = {}
        for index in used:
            compiled, reason = compile_preprocessor(ensemble.preprocessors[index])
            if compiled is None:
                return None, f"preprocessor {index}: {reason}"
            roles = {"numeric": ("numeric", "boolean"), "categorical": ("categorical",)}
            roles["datetime"] = ("datetime",)
            for column, kind in compiled.input_columns.items():
                info = schema.columns.get(column)
                if info is None or info.role not in roles[kind]:
                    return None, f"column '{column}' is not a {kind} input of the schema"
            renumber[index] = len(preprocessors)
            preprocessors.append(compiled)
        parts: list[_Part] = []
        for member, index, estimator in ensemble.parts:
            try:
                part = _convert(estimator, ensemble.task, classes)
            except Unsupported as e:
                return None, f"{member}: {e}"
            except Exception as e:  # a library's internals differ from what is read here
                return None, f"{member}: {type(estimator).__name__} did not convert ({e})"
            part.member, part.preprocessor = member, renumber[index]
            parts.append(part)
        if set(ensemble.weights) != {p.member for p in parts}:
            return None, "the ensemble's weights name other members than its parts"
        onnx_model, inputs = _onnx_model(parts, preprocessors, single)
        fast = cls(
            task=ensemble.task,
            classes=None if classes is None else np.asarray(classes),
            threshold=None if ensemble.threshold is None else float(ensemble.threshold),
            weights={name: float(w) for name, w in ensemble.weights.items()},
            preprocessors=preprocessors,
            parts=parts,
            onnx_model=onnx_model,
            inputs=inputs,
            threads=threads,
        )
        try:
            fast._start()
        except Exception as e:
            return None, f"onnxruntime cannot run the graph ({e})"
        return fast, ""

    @property
    def input_columns(self) -> dict[str, str]:
        """Every input column and its kind (numeric, categorical or datetime)."""
        out: dict[str, str] = {}
        for pre in self.preprocessors:
            out.update(pre.input_columns)
        return out

    def _start(self) -> None:
        for part in self.parts:
            part.trees = None  # kept in the ONNX model only
        self._session = None if self.onnx_model is None else self._new_session(self.threads)

    def _new_session(self, threads: int) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        if threads > 1:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(self.onnx_model, options, providers=["CPUExecutionProvider"])

    def outputs(self, columns: Columns) -> np.ndarray:
        """Class probabilities (n, classes) in ``classes`` order, or predictions (n,)."""
        n = _n_rows(columns)
        return self._outputs(self.matrices(columns, n), n)

    def outputs_one(self, row: Mapping[str, Any]) -> np.ndarray | None:
        """``outputs`` of one row given as {column: value}, values as the request models
        validate them (numbers, booleans, strings, None), without building columns first: the
        same numbers, in a fraction of the time. None where the row needs ``outputs``."""
        matrices = []
        for pre in self.preprocessors:
            matrix = pre.transform_one(row)
            if matrix is None:
                return None
            matrices.append(matrix)
        return self._outputs(matrices, 1)

    # ``outputs`` in three steps, for a caller that scores the trees of a large batch on
    # several threads: ``matrices`` and ``combine`` on its own, ``tree_outputs`` on slices of
    # the rows at once (onnxruntime releases the GIL; one session serves concurrent calls).

    def matrices(self, columns: Columns, n: int) -> list[np.ndarray]:
        """Each preprocessor's (n, features) matrix of ``columns``."""
        return [pre.transform(columns, n) for pre in self.preprocessors]

    def matrices_of_lists(self, values: Mapping[str, list[Any]], n: int) -> list[np.ndarray] | None:
        """``matrices`` of ``value_columns``' input as the strict request decoder gives it
        (``CompiledPreprocessor.transform_lists``), or None where that needs ``matrices``."""
        out = []
        for pre in self.preprocessors:
            matrix = pre.transform_lists(values, n)
            if matrix is None:
                return None
            out.append(matrix)
        return out

    def tree_inputs(self, matrices: list[np.ndarray]) -> dict[str, np.ndarray] | None:
        """The ONNX trees' inputs for all rows, or None where the predictor has no trees."""
        if self._session is None:
            return None
        return {
            name: matrices[index].astype(np.float32) if f32 else matrices[index]
            for name, (index, f32) in self.inputs.items()
        }

    def tree_outputs(
        self, inputs: dict[str, np.ndarray], start: int = 0, stop: int | None = None
    ) -> list[np.ndarray]:
        """The trees' raw scores for rows ``start:stop`` of ``tree_inputs``."""
        names = [p.output for p in self.parts if p.kind == "trees"]
        return list(self._session.run(names, {k: v[start:stop] for k, v in inputs.items()}))

    def _outputs(self, matrices: list[np.ndarray], n: int) -> np.ndarray:
        inputs = self.tree_inputs(matrices)
        return self.combine(matrices, None if inputs is None else self.tree_outputs(inputs), n)

    def combine(
        self, matrices: list[np.ndarray], tree_scores: list[np.ndarray] | None, n: int
    ) -> np.ndarray:
        """``outputs`` from the matrices and the trees' raw scores (``tree_outputs``, all rows)."""
        names = [p.output for p in self.parts if p.kind == "trees"]
        raw = dict(zip(names, tree_scores or [], strict=True))
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        for part in self.parts:
            if part.kind == "trees":
                scores = raw[part.output]
            elif part.kind == "linear":
                scores = matrices[part.preprocessor] @ part.arrays["coef"].T
                scores += part.arrays["intercept"]
            else:
                scores = np.tile(part.arrays["values"], (n, 1))
            out = _apply_post(scores, part.post, self.task)
            sums[part.member] = sums[part.member] + out if part.member in sums else out
            counts[part.member] = counts.get(part.member, 0) + 1
        total: np.ndarray = sum(  # type: ignore[assignment]
            self.weights[m] * sums[m] / counts[m] for m in self.weights
        )
        return total

    def predict(self, columns: Columns) -> np.ndarray:
        """Class labels (with the ensemble's threshold) or regression predictions."""
        out = self.outputs(columns)
        if self.task != "classification" or self.classes is None:
            return out
        return labels_for(out, self.classes, self.threshold)

    # -- storage --------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """JSON, raw little-endian arrays and the ONNX model; loads with ``from_bytes``."""
        blobs: list[bytes] = []

        def blob(data: bytes) -> int:
            blobs.append(data)
            return len(blobs) - 1

        def array(values: np.ndarray) -> dict[str, Any]:
            values = np.ascontiguousarray(values)
            if values.dtype.kind not in "biuf":
                raise TypeError(f"cannot store a {values.dtype} array")
            dtype = values.dtype.newbyteorder("<")
            return {
                "blob": blob(values.astype(dtype).tobytes()),
                "dtype": dtype.str,
                "shape": list(values.shape),
            }

        def block(b: _Block) -> dict[str, Any]:
            if isinstance(b, _Categorical):
                return {
                    "kind": "categorical",
                    "columns": b.columns,
                    "fill": b.fill,
                    "lookups": b.lookups,
                    "unknown": b.unknown,
                    "width": b.width,
                }
            kind = "numeric" if isinstance(b, _Numeric) else "datetime"
            return {
                "kind": kind,
                "columns": b.columns,
                "fill": array(b.fill),
                "mean": array(b.mean),
                "scale": array(b.scale),
            }

        classes = None
        if self.classes is not None:
            classes = {
                "values": [_plain(v) for v in self.classes.tolist()],
                "dtype": self.classes.dtype.str if self.classes.dtype != object else "object",
            }
        header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "task": self.task,
            "classes": classes,
            "threshold": self.threshold,
            "weights": self.weights,
            "preprocessors": [
                {"n_features": p.n_features, "blocks": [block(b) for b in p.blocks]}
                for p in self.preprocessors
            ],
            "parts": [
                {
                    "member": p.member,
                    "preprocessor": p.preprocessor,
                    "kind": p.kind,
                    "post": p.post,
                    "output": p.output,
                    "arrays": {k: array(v) for k, v in p.arrays.items()},
                }
                for p in self.parts
            ],
            "inputs": {k: [i, f32] for k, (i, f32) in self.inputs.items()},
            "onnx": None if self.onnx_model is None else blob(self.onnx_model),
        }
        text = json.dumps(header, allow_nan=False).encode("utf-8")
        chunks = [_MAGIC, struct.pack("<Q", len(text)), text, struct.pack("<Q", len(blobs))]
        for data in blobs:
            chunks += [struct.pack("<Q", len(data)), data]
        return b"".join(chunks)

    @classmethod
    def from_bytes(cls, data: bytes, threads: int = 1) -> FastPredictor:
        if data[: len(_MAGIC)] != _MAGIC:
            raise ValueError("not a shipml fast-path file")
        offset = len(_MAGIC)

        def take(size: int) -> bytes:
            nonlocal offset
            if offset + size > len(data):
                raise ValueError("the fast-path file is truncated")
            chunk = data[offset : offset + size]
            offset += size
            return chunk

        (length,) = struct.unpack("<Q", take(8))
        header = json.loads(take(length).decode("utf-8"))
        if header.get("format") != FORMAT or header.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported fast-path format {header.get('version')!r}")
        (count,) = struct.unpack("<Q", take(8))
        blobs = []
        for _ in range(count):
            (size,) = struct.unpack("<Q", take(8))
            blobs.append(take(size))

        def array(spec: Mapping[str, Any]) -> np.ndarray:
            raw = np.frombuffer(blobs[spec["blob"]], dtype=np.dtype(spec["dtype"]))
            return raw.reshape(spec["shape"]).astype(raw.dtype.newbyteorder("="))

        def block(spec: Mapping[str, Any]) -> _Block:
            if spec["kind"] == "categorical":
                return _Categorical(
                    list(spec["columns"]),
                    list(spec["fill"]),
                    [dict(lookup) for lookup in spec["lookups"]],
                    list(spec["unknown"]),
                    int(spec["width"]),
                )
            kind = _Numeric if spec["kind"] == "numeric" else _Datetime
            return kind(
                list(spec["columns"]),
                array(spec["fill"]),
                array(spec["mean"]),
                array(spec["scale"]),
            )

        classes = None
        if header["classes"] is not None:
            dtype = header["classes"]["dtype"]
            values = header["classes"]["values"]
            classes = np.array(values, dtype=object if dtype == "object" else np.dtype(dtype))
        fast = cls(
            task=header["task"],
            classes=classes,
            threshold=header["threshold"],
            weights={k: float(v) for k, v in header["weights"].items()},
            preprocessors=[
                CompiledPreprocessor([block(b) for b in p["blocks"]], int(p["n_features"]))
                for p in header["preprocessors"]
            ],
            parts=[
                _Part(
                    member=p["member"],
                    preprocessor=int(p["preprocessor"]),
                    kind=p["kind"],
                    post=dict(p["post"]),
                    arrays={k: array(v) for k, v in p["arrays"].items()},
                    output=p["output"],
                )
                for p in header["parts"]
            ],
            onnx_model=None if header["onnx"] is None else blobs[header["onnx"]],
            inputs={k: (int(v[0]), bool(v[1])) for k, v in header["inputs"].items()},
            threads=threads,
        )
        fast._start()
        return fast


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _onnx_model(
    parts: list[_Part], preprocessors: list[CompiledPreprocessor], single: bool = False
) -> tuple[bytes | None, dict[str, tuple[int, bool]]]:
    """One ONNX model for every tree part: an input per preprocessor (float32 for libraries
    that compare float32 features), an output per part (double). Trees on float32 features
    run in double on the input cast to double, or with ``single`` in float32 (``_Trees.node``)
    with their output cast to double."""
    tree_parts = [p for p in parts if p.kind == "trees" and p.trees is not None]
    if not tree_parts:
        return None, {}
    from onnx import TensorProto, helper

    inputs: dict[str, tuple[int, bool]] = {}
    graph_inputs = []
    nodes = []
    outputs = []
    for j, part in enumerate(tree_parts):
        trees = part.trees
        assert trees is not None
        width = preprocessors[part.preprocessor].n_features
        name = f"x{part.preprocessor}" + ("_f32" if trees.float32 else "")
        if name not in inputs:
            inputs[name] = (part.preprocessor, trees.float32)
            kind = TensorProto.FLOAT if trees.float32 else TensorProto.DOUBLE
            graph_inputs.append(helper.make_tensor_value_info(name, kind, [None, width]))
            if trees.float32 and not single:
                nodes.append(helper.make_node("Cast", [name], [name + "_d"], to=TensorProto.DOUBLE))
        part.output = f"p{j}"
        if trees.float32 and single:
            nodes.append(trees.node(name, part.output + "_f32", single=True))
            nodes.append(
                helper.make_node(
                    "Cast", [part.output + "_f32"], [part.output], to=TensorProto.DOUBLE
                )
            )
        else:
            source = name + "_d" if trees.float32 else name
            nodes.append(trees.node(source, part.output))
        outputs.append(
            helper.make_tensor_value_info(part.output, TensorProto.DOUBLE, [None, trees.n_targets])
        )
    graph = helper.make_graph(nodes, "shipml_fastpath", graph_inputs, outputs)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(domain, version) for domain, version in _OPSETS],
        ir_version=_IR_VERSION,
        producer_name="shipml",
    )
    return model.SerializeToString(), inputs


# -- input: frames and JSON records to columns --------------------------------------------------


def frame_columns(df: pd.DataFrame, kinds: Mapping[str, str]) -> dict[str, np.ndarray]:
    """A coerced input frame (``coerce_frame``) as ``{column: array}`` for ``kinds``' columns
    (``FastPredictor.input_columns``)."""
    out: dict[str, np.ndarray] = {}
    for column, kind in kinds.items():
        values = df[column]
        if kind == "numeric":
            out[column] = values.to_numpy(dtype=np.float64, na_value=np.nan)
        elif kind == "datetime":
            out[column] = values.to_numpy(dtype="datetime64[ns]")
        else:
            out[column] = values.to_numpy(dtype=object)
    return out


# Naive ISO 8601 dates and times that numpy parses as pandas does; other text (time zones,
# other layouts) goes through shipml's own parsing.
_ISO_DATE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?)?"
)


def record_columns(records: Sequence[Mapping[str, Any]], schema: Schema) -> dict[str, np.ndarray]:
    """JSON records (one dict per row) as ``{column: array}``, converted as ``coerce_frame``
    converts them, without a DataFrame for plain values (numbers, true/false, strings, null,
    ISO dates); a column holding anything else goes through shipml's coercion, which also
    raises its usual InputSchemaError for a bad value."""
    if not records:
        raise InputSchemaError("input: no rows", "give at least one data row")
    missing = [c for c in schema.input_columns if any(c not in r for r in records)]
    if missing:
        raise InputSchemaError(
            f"input: missing column '{missing[0]}' that the model needs",
            "add the column; `shipml` expects the columns of the training table",
        )
    return value_columns({c: [r[c] for r in records] for c in schema.input_columns}, schema)


def value_columns(values: Mapping[str, list[Any]], schema: Schema) -> dict[str, np.ndarray]:
    """One list of JSON values per input column as ``{column: array}``, converted as
    ``record_columns`` converts records (the serving path gets its values column-wise)."""
    out: dict[str, np.ndarray] = {}
    for column in schema.input_columns:
        info = schema.columns[column]
        role = info.role
        fast = _fast_values(values[column], role)
        if fast is None and role == "datetime":  # read in the column's own date format
            coerced = coerce_datetime(pd.Series(values[column]), column, "input", info.date_format)
            fast = coerced.to_numpy(dtype="datetime64[ns]")
        elif fast is None:
            coerced = COERCERS[role](pd.Series(values[column]), column, "input")
            dtype: Any = {"categorical": object, "datetime": "datetime64[ns]"}.get(role, np.float64)
            fast = coerced.to_numpy(dtype=dtype)
        out[column] = fast
    return out


_NUMBER_TYPES = frozenset({float, int, type(None)})
_FLAG_TYPES = frozenset({bool, type(None)})
_CATEGORY_TYPES = frozenset({str, int, float, bool, type(None)})


def _fast_values(values: Sequence[Any], role: str) -> np.ndarray | None:
    """``values`` converted without pandas, or None when one needs shipml's full coercion.

    A column of plain numbers (or of plain booleans) becomes an array in one numpy call, and a
    categorical column is converted once per distinct value; anything else goes value by value
    in ``_values_one_by_one``, which gives the same arrays."""
    if role == "datetime":
        return _values_one_by_one(values, role)
    kinds = set(map(type, values))
    if role == "categorical":
        if not kinds <= _CATEGORY_TYPES or (bool in kinds and kinds & {int, float}):
            # (True == 1 as dict keys, yet they are the categories 'True' and '1')
            return _values_one_by_one(values, role)
        distinct = {v: v for v in set(values)}
        if kinds != {str} or not all(v.strip() for v in distinct):
            for value in distinct:
                converted = _values_one_by_one([value], role)
                if converted is None:  # pragma: no cover - every kind above converts
                    return None
                distinct[value] = converted[0]
            values = [distinct[v] for v in values]
        return np.array(values, dtype=object)
    if kinds <= _FLAG_TYPES or (role == "numeric" and kinds <= _NUMBER_TYPES):
        try:
            return np.array(values, dtype=np.float64)  # None becomes NaN
        except OverflowError:  # an int past float's range: as the loop reports it
            return _values_one_by_one(values, role)
    return _values_one_by_one(values, role)


def _values_one_by_one(values: Sequence[Any], role: str) -> np.ndarray | None:
    n = len(values)
    if role == "categorical":
        cats = np.empty(n, dtype=object)
        for i, v in enumerate(values):
            if isinstance(v, str):
                cats[i] = v if v.strip() else np.nan
            elif _missing(v):
                cats[i] = np.nan
            elif isinstance(v, bool | int | float):
                cats[i] = category_str(v)
            else:
                return None
        return cats
    if role == "datetime":
        stamps = np.empty(n, dtype="datetime64[ns]")
        for i, v in enumerate(values):
            if v is None:
                stamps[i] = np.datetime64("NaT")
            elif isinstance(v, str) and _ISO_DATE.fullmatch(v) and 1678 <= int(v[:4]) <= 2261:
                # (numpy wraps datetime64[ns] around silently outside 1677-2262)
                try:
                    stamps[i] = np.datetime64(v.replace(" ", "T"), "ns")
                except ValueError:
                    return None
            else:
                return None
        return stamps
    numbers = np.empty(n, dtype=np.float64)
    for i, v in enumerate(values):
        if v is None:
            numbers[i] = np.nan
        elif isinstance(v, bool):
            numbers[i] = 1.0 if v else 0.0
        elif role == "boolean" and isinstance(v, str) and v.strip().lower() in BOOL_TRUE:
            numbers[i] = 1.0
        elif role == "boolean" and isinstance(v, str) and v.strip().lower() in BOOL_FALSE:
            numbers[i] = 0.0
        elif isinstance(v, int | float) and (role == "numeric" or v in (0, 1) or v != v):
            numbers[i] = float(v)
        else:
            return None
    return numbers


# -- verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    max_abs_diff: float
    labels_equal: bool
    reason: str
    rows: int = 0


def build_verified(
    ensemble: BaggedEnsemble, schema: Schema, X_test: pd.DataFrame, tolerance: float = TOLERANCE
) -> tuple[FastPredictor | None, str, VerifyResult | None]:
    """The fast copy of ``ensemble`` that matches it on ``X_test`` (``verify``), with its trees
    on float32 features in float32 where that matches and in double otherwise: (copy, how,
    check), or (None, why not, the failed check or None)."""
    check: VerifyResult | None = None
    for single in (True, False):
        fast, reason = FastPredictor.build(ensemble, schema, single=single)
        if fast is None:
            return None, reason, None
        check = verify(fast, ensemble, X_test, tolerance)
        if check.ok:
            return fast, "float32 trees" if single else "double-precision trees", check
        if not any(f32 for _, f32 in fast.inputs.values()):
            break  # no trees on float32 features: the double-precision graph is this one
    assert check is not None
    return None, f"the fast copy differs on the test split: {check.reason}", check


def verify(
    fast: FastPredictor,
    ensemble: BaggedEnsemble,
    X_test: pd.DataFrame,
    tolerance: float = TOLERANCE,
) -> VerifyResult:
    """Whether ``fast`` predicts like ``ensemble`` on held-out rows (a coerced input frame):
    identical labels and probabilities within ``tolerance``; for regression, predictions
    within ``tolerance`` times max(1, |prediction|)."""
    if len(X_test) == 0:
        return VerifyResult(False, float("nan"), False, "no held-out rows to verify on")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        native = np.asarray(
            ensemble.predict_proba(X_test)
            if ensemble.task == "classification"
            else ensemble.predict(X_test),
            dtype=np.float64,
        )
    try:
        got = fast.outputs(frame_columns(X_test, fast.input_columns))
    except Exception as e:
        return VerifyResult(False, float("nan"), False, f"the fast path failed: {e}", len(X_test))
    if got.shape != native.shape:
        reason = f"output shape {got.shape} differs from the model's {native.shape}"
        return VerifyResult(False, float("nan"), False, reason, len(X_test))
    both_nan = np.isnan(got) & np.isnan(native)
    diff = np.where(both_nan, 0.0, np.abs(got - native))
    max_diff = float(np.nan_to_num(diff, nan=np.inf).max()) if diff.size else 0.0
    if ensemble.task == "classification":
        classes = ensemble.classes_
        labels_equal = bool(
            np.array_equal(
                labels_for(got, classes, ensemble.threshold),
                labels_for(native, classes, ensemble.threshold),
            )
        )
        close = max_diff <= tolerance
    else:
        labels_equal = True
        allowed = tolerance * np.maximum(1.0, np.abs(np.nan_to_num(native)))
        close = bool((np.nan_to_num(diff, nan=np.inf) <= allowed).all())
    if not labels_equal:
        return VerifyResult(False, max_diff, False, "labels differ from the model's", len(X_test))
    if not close:
        reason = f"outputs differ by up to {max_diff:.3g} (allowed {tolerance:g})"
        return VerifyResult(False, max_diff, True, reason, len(X_test))
    return VerifyResult(True, max_diff, True, "", len(X_test))
