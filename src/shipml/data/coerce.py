"""Value conventions shared by training and predict: type coercion and input checks.

Training (coerce_frame, coerce_target) and predict (check_input) convert values the same way, so a
model sees identical types whichever side calls it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from shipml.errors import InputSchemaError

if TYPE_CHECKING:  # annotations only: monitoring reads data without loading the config models
    from shipml.data.schema import Schema

BOOL_TRUE = frozenset({"true", "yes", "y", "t", "1", "1.0"})
BOOL_FALSE = frozenset({"false", "no", "n", "f", "0", "0.0"})
ISO_FORMAT = "ISO8601"  # a column's date_format for ISO 8601 text (pandas' own name for it)


@dataclass
class Unreadable:
    """The values of one input column that could not be read, scored as missing instead."""

    column: str
    expected: str  # what the column takes: "a number", "true/false", "a date/time ..."
    count: int
    first_row: int  # 1-based row of the input
    example: str  # the first value, as shown in messages

    def message(self, source: str = "input") -> str:
        more = f" and {self.count - 1} more" if self.count > 1 else ""
        return (
            f"{source}: column '{self.column}': {self.count} value(s) are not {self.expected} "
            f"(row {self.first_row}: {self.example}{more}); scored as missing"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "expected": self.expected,
            "first_row": self.first_row,
            "example": self.example,
        }


def is_bool_dtype(s: pd.Series) -> bool:
    return s.dtype == bool or isinstance(s.dtype, pd.BooleanDtype)


def is_numeric_dtype(s: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(s.dtype)) and not is_bool_dtype(s)


def is_datetime_dtype(s: pd.Series) -> bool:
    return bool(pd.api.types.is_datetime64_any_dtype(s.dtype))


def is_text_like_dtype(s: pd.Series) -> bool:
    return (
        s.dtype == object
        or isinstance(s.dtype, pd.CategoricalDtype)
        or pd.api.types.is_string_dtype(s.dtype)
    )


def category_str(value: Any) -> str:
    """The string form of one category value: 3, 3.0 and '3' all become '3'; True -> 'True'."""
    if isinstance(value, bool | np.bool_):
        return "True" if value else "False"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    return str(value)


def blank_to_missing(s: pd.Series) -> pd.Series:
    """Strings that are empty or only whitespace become missing (NaN)."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        return s
    if s.dtype != object and not pd.api.types.is_string_dtype(s.dtype):
        return s
    values = s.dropna().to_numpy(dtype=object)
    try:
        uniques = pd.unique(values)
    except TypeError:  # unhashable cells (lists, dicts): look at every value
        uniques = values
    if not any(isinstance(v, str) and not v.strip() for v in uniques):
        return s
    blank = s.map(lambda v: isinstance(v, str) and not v.strip()).astype(bool)
    return s.astype(object).mask(blank, np.nan)


def as_category_strings(s: pd.Series) -> pd.Series:
    """Object Series of category strings (see ``category_str``); missing values stay NaN."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        s = s.astype(object)
    mask = s.notna().to_numpy()
    out = pd.Series(np.full(len(s), np.nan, dtype=object), index=s.index, dtype=object)
    if not mask.any():
        return out
    present = s[mask]
    if pd.api.types.is_integer_dtype(present.dtype) and not is_bool_dtype(present):
        values = present.astype("int64").astype(str).astype(object)
    elif pd.api.types.infer_dtype(present, skipna=True) == "string":
        values = present.astype(object)
    else:
        values = present.map(category_str).astype(object)
    out[mask] = values.to_numpy()
    return out


def show_value(value: Any, limit: int = 40) -> str:
    text = repr(value) if isinstance(value, str) else repr(category_str(value))
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _raise_bad_values(
    original: pd.Series, bad: pd.Series, column: str, source: str, expected: str, hint: str
) -> None:
    positions = np.flatnonzero(bad.to_numpy())
    if len(positions) == 0:
        return
    first = int(positions[0])
    more = f" (and {len(positions) - 1} more rows)" if len(positions) > 1 else ""
    raise InputSchemaError(
        f"{source}: column '{column}' row {first + 1}: {show_value(original.iloc[first])} "
        f"is not {expected}{more}",
        hint,
    )


def _unreadable(original: pd.Series, bad: pd.Series, column: str, expected: str) -> Unreadable:
    positions = np.flatnonzero(bad.to_numpy())
    first = int(positions[0])
    return Unreadable(column, expected, len(positions), first + 1, show_value(original.iloc[first]))


# (value, bad) pairs: the converted column and where the given value could not be read
Converted = tuple[pd.Series, pd.Series | None]


def _numbers(s: pd.Series) -> Converted:
    s = blank_to_missing(s)
    if is_bool_dtype(s) or is_numeric_dtype(s):
        return s.astype("float64"), None
    out = pd.to_numeric(s.astype(object), errors="coerce")
    return pd.Series(out, index=s.index).astype("float64"), s.notna() & pd.isna(out)


def _flags(s: pd.Series) -> Converted:
    s = blank_to_missing(s)
    if is_bool_dtype(s):
        return s.astype("float64"), None
    text = as_category_strings(s)
    lowered = text.where(text.isna(), text.astype(str).str.strip().str.lower())
    is_true = lowered.isin(BOOL_TRUE)
    is_false = lowered.isin(BOOL_FALSE)
    out = pd.Series(np.nan, index=s.index, dtype="float64")
    out[is_true.to_numpy()] = 1.0
    out[is_false.to_numpy()] = 0.0
    return out, s.notna() & ~is_true & ~is_false


def coerce_numeric(s: pd.Series, column: str = "", source: str = "input") -> pd.Series:
    """float64 Series; values that are not numbers raise InputSchemaError (column, row, value)."""
    out, bad = _numbers(s)
    if bad is not None:
        _raise_bad_values(
            blank_to_missing(s),
            bad,
            column,
            source,
            "a number",
            f"'{column}' is a numeric column: give a number, or leave the cell empty",
        )
    return out


def coerce_boolean(s: pd.Series, column: str = "", source: str = "input") -> pd.Series:
    """float64 Series of 1.0/0.0 (NaN kept): accepts true/false, yes/no, y/n, t/f, 1/0."""
    out, bad = _flags(s)
    if bad is not None:
        _raise_bad_values(
            blank_to_missing(s),
            bad,
            column,
            source,
            "true/false",
            f"'{column}' is a yes/no column: give true/false, yes/no or 1/0, or leave it empty",
        )
    return out


_TZ_SUFFIX = re.compile(
    r"\d:\d{2}(:\d{2}(\.\d+)?)?\s*(Z|UTC|GMT|[+-]\d{2}(:?\d{2})?)$", re.IGNORECASE
)


def _parse_datetime_group(text: pd.Series, mixed: bool) -> pd.Series:
    out = pd.to_datetime(text, format=ISO_FORMAT, errors="coerce", utc=True)
    retry = text.notna() & out.isna()
    if mixed and retry.any():
        out[retry] = pd.to_datetime(text[retry], format="mixed", errors="coerce", utc=True)
    return out


def parse_datetime_text(text: pd.Series, date_format: str | None = None) -> pd.Series:
    """Parse strings to UTC datetimes; failures are NaT.

    ``date_format``: one strftime format for every value (``%d/%m/%Y``), ``ISO8601``, or None:
    ISO 8601 first, then pandas' mixed formats value by value (what models trained before
    shipml stored a column's format read). With ISO 8601, values with and without a UTC offset
    are parsed apart: pandas 2.3's ISO 8601 parser applies the offset of an earlier value to
    later values that have none.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if date_format not in (None, ISO_FORMAT):
            return pd.to_datetime(text, format=date_format, errors="coerce", utc=True)
        mixed = date_format is None
        present = text.notna()
        has_tz = present & text.where(present, "").astype(str).str.contains(_TZ_SUFFIX)
        if not has_tz.any() or has_tz.sum() == present.sum():
            return _parse_datetime_group(text, mixed)
        out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
        out[has_tz] = _parse_datetime_group(text[has_tz], mixed)
        naive = present & ~has_tz
        out[naive] = _parse_datetime_group(text[naive], mixed)
    return out


def date_expected(date_format: str | None) -> str:
    """What a date/time column takes, for messages: 'a date/time (format %d/%m/%Y)'."""
    if date_format is None:
        return "a date/time"
    shown = "ISO 8601, e.g. 2024-01-31" if date_format == ISO_FORMAT else date_format
    return f"a date/time in the format {shown}"


def _dates(s: pd.Series, column: str, source: str, date_format: str | None) -> Converted:
    s = blank_to_missing(s)
    if is_datetime_dtype(s):
        if getattr(s.dt, "tz", None) is not None:
            s = s.dt.tz_convert("UTC").dt.tz_localize(None)
        try:
            return s.astype("datetime64[ns]"), None
        except (pd.errors.OutOfBoundsDatetime, OverflowError, ValueError):
            raise InputSchemaError(
                f"{source}: column '{column}' has dates outside 1677-2262",
                "use dates between the years 1677 and 2262, or leave them empty",
            ) from None
    text = as_category_strings(s)
    out = parse_datetime_text(text, date_format)
    return out.dt.tz_localize(None).astype("datetime64[ns]"), text.notna() & out.isna()


def coerce_datetime(
    s: pd.Series, column: str = "", source: str = "input", date_format: str | None = None
) -> pd.Series:
    """datetime64[ns] Series (time zones converted to UTC, then dropped); bad values raise.
    ``date_format``: the column's format (see ``parse_datetime_text``)."""
    out, bad = _dates(s, column, source, date_format)
    if bad is not None:
        example = "2024-01-31" if date_format in (None, ISO_FORMAT) else date_format
        _raise_bad_values(
            blank_to_missing(s),
            bad,
            column,
            source,
            date_expected(date_format),
            f"'{column}' is a date/time column: give a date such as {example}, or leave it "
            "empty (data.date_format in shipml.yaml sets the format at training)",
        )
    return out


def coerce_categorical(s: pd.Series, column: str = "", source: str = "input") -> pd.Series:
    """Object Series of category strings; NaN kept; never fails."""
    return as_category_strings(blank_to_missing(s))


COERCERS: dict[str, Callable[[pd.Series, str, str], pd.Series]] = {
    "numeric": coerce_numeric,
    "boolean": coerce_boolean,
    "datetime": coerce_datetime,
    "categorical": coerce_categorical,
    "text": coerce_categorical,
}


def _column(df: pd.DataFrame, name: str, source: str) -> pd.Series:
    values = df[name]
    if isinstance(values, pd.DataFrame):
        raise InputSchemaError(
            f"{source}: column '{name}' appears more than once", "drop or rename the duplicate"
        )
    return values


def _lenient(
    s: pd.Series, role: str, name: str, source: str, date_format: str | None
) -> tuple[pd.Series, Unreadable | None]:
    """A column converted with what cannot be read as missing, and what that was."""
    if role == "numeric":
        (out, bad), expected = _numbers(s), "a number"
    elif role == "boolean":
        (out, bad), expected = _flags(s), "true/false"
    elif role == "datetime":
        (out, bad), expected = _dates(s, name, source, date_format), date_expected(date_format)
    else:
        return COERCERS[role](s, name, source), None
    if bad is None or not bad.any():
        return out, None
    return out, _unreadable(blank_to_missing(s), bad, name, expected)


def coerce_frame(
    df: pd.DataFrame,
    schema: Schema,
    source: str = "input",
    unreadable: list[Unreadable] | None = None,
) -> pd.DataFrame:
    """The model's input columns, in schema order, with the types training and predict share.

    numeric -> float64, boolean -> float64 1/0, categorical -> object strings, datetime ->
    datetime64[ns] (in the column's stored date format); missing values stay missing. The index
    of ``df`` is kept. A value that cannot be read raises InputSchemaError, unless
    ``unreadable`` is given: then it becomes missing and each such column is added to it.
    """
    missing = [c for c in schema.input_columns if c not in df.columns]
    if missing:
        raise InputSchemaError(
            f"{source}: {_missing_text(missing)} that the model needs",
            "add the column(s); `shipml` expects the columns of the training table",
        )
    out: dict[str, pd.Series] = {}
    for name in schema.input_columns:
        info = schema.columns[name]
        values = _column(df, name, source)
        date_format = getattr(info, "date_format", None)
        if unreadable is not None:
            out[name], problem = _lenient(values, info.role, name, source, date_format)
            if problem is not None:
                unreadable.append(problem)
        elif info.role == "datetime":
            out[name] = coerce_datetime(values, name, source, date_format)
        else:
            out[name] = COERCERS[info.role](values, name, source)
    return pd.DataFrame(out, index=df.index, columns=schema.input_columns)


def coerce_target(y: pd.Series, task: str) -> pd.Series:
    """The target with the types the model uses: float64 for regression; for classification,
    integer-valued floats become int64 and mixed objects become category strings. Drop rows
    without a target first (see validate.drop_missing_target): with gaps, y is returned as is."""
    if task == "regression":
        return pd.Series(pd.to_numeric(y, errors="coerce"), index=y.index, name=y.name).astype(
            "float64"
        )
    if isinstance(y.dtype, pd.CategoricalDtype):
        y = y.astype(object)
    if y.isna().any():
        return y
    if is_bool_dtype(y):
        return y.astype(bool)
    if is_numeric_dtype(y):
        values = y.to_numpy(dtype="float64")
        if np.all(np.isfinite(values)) and np.all(values == np.round(values)):
            return y.astype("int64")
        return y.astype("float64")
    kinds = {type(v) for v in y}
    if len(kinds) > 1 or (kinds and not issubclass(next(iter(kinds)), str)):
        out = as_category_strings(y)
        out.name = y.name
        return out
    return y


def _python_value(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def target_classes(y: pd.Series) -> list[Any]:
    """Sorted distinct values of a classification target, as plain Python values."""
    values = [_python_value(v) for v in pd.unique(y.dropna())]
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=lambda v: (type(v).__name__, str(v)))


def _missing_text(columns: list[str]) -> str:
    names = ", ".join(f"'{c}'" for c in columns[:10])
    more = f" and {len(columns) - 10} more" if len(columns) > 10 else ""
    return f"missing column{'s' if len(columns) > 1 else ''} {names}{more}"


def check_input(
    df: pd.DataFrame,
    schema: Schema,
    source: str = "input",
    allow_extra: bool = False,
    unreadable: list[Unreadable] | None = None,
) -> pd.DataFrame:
    """Check a table given to a model and return its input columns, coerced (see coerce_frame;
    with ``unreadable``, values that cannot be read are scored as missing and listed there)."""
    if len(df) == 0:
        raise InputSchemaError(f"{source}: no rows", "give at least one data row")
    missing = [c for c in schema.input_columns if c not in df.columns]
    if missing:
        raise InputSchemaError(
            f"{source}: {_missing_text(missing)} that the model needs",
            f"add the column{'s' if len(missing) > 1 else ''}; the model reads: "
            + ", ".join(schema.input_columns[:15])
            + (" ..." if len(schema.input_columns) > 15 else ""),
        )
    known = schema.known_columns | set(schema.derived)
    extra = [str(c) for c in df.columns if c not in known]
    if extra and not allow_extra:
        names = ", ".join(f"'{c}'" for c in extra[:10]) + (" ..." if len(extra) > 10 else "")
        raise InputSchemaError(
            f"{source}: unknown column{'s' if len(extra) > 1 else ''} {names} "
            "(not in the training data)",
            "remove it, or pass --allow-extra to ignore unknown columns",
        )
    return coerce_frame(df, schema, source, unreadable)
