"""Column roles and the model's input schema.

A ``Schema`` is inferred from the training table (plus the roles the user pinned in config), stored
with every model version, and used to check inputs at predict time.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from shipml.config import FeaturesConfig
from shipml.errors import DataError, InputSchemaError

Role = Literal["numeric", "categorical", "boolean", "datetime", "text", "identifier", "excluded"]
MODEL_ROLES: tuple[str, ...] = ("numeric", "categorical", "boolean", "datetime")


@dataclass
class ColumnInfo:
    """One column of the training table and the role shipml gives it."""

    name: str
    role: Role
    dtype: str
    missing_share: float = 0.0
    n_unique: int = 0
    categories: list[str] | None = None  # most frequent values, for categorical/boolean columns
    note: str = ""  # why the role was chosen, shown by `shipml init`


@dataclass
class Schema:
    """What the model reads: the target, the task, and every column's role, in table order."""

    target: str
    task: Literal["classification", "regression"]
    columns: dict[str, ColumnInfo]
    classes: list[Any] | None = None
    derived: dict[str, str] = field(default_factory=dict)

    def columns_with(self, role: str) -> list[str]:
        return [c.name for c in self.columns.values() if c.role == role]

    @property
    def input_columns(self) -> list[str]:
        """Columns a model needs at predict time, in table order."""
        return [c.name for c in self.columns.values() if c.role in MODEL_ROLES]

    @property
    def known_columns(self) -> set[str]:
        """Every column of the training table; at predict, extra columns from this set are fine."""
        return set(self.columns) | {self.target}

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "task": self.task,
            "classes": self.classes,
            "derived": dict(self.derived),
            "columns": [asdict(c) for c in self.columns.values()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schema:
        columns = {c["name"]: ColumnInfo(**c) for c in data["columns"]}
        return cls(
            target=data["target"],
            task=data["task"],
            columns=columns,
            classes=data.get("classes"),
            derived=dict(data.get("derived") or {}),
        )


# --- value conventions shared by training and predict --------------------------------------------

Task = Literal["classification", "regression"]

BOOL_TRUE = frozenset({"true", "yes", "y", "t", "1", "1.0"})
BOOL_FALSE = frozenset({"false", "no", "n", "f", "0", "0.0"})
_BOOL_PAIRS = (
    frozenset({"true", "false"}),
    frozenset({"yes", "no"}),
    frozenset({"y", "n"}),
    frozenset({"t", "f"}),
    frozenset({"1", "0"}),
)
ROLE_KEYS: tuple[str, ...] = ("exclude", "numeric", "categorical", "boolean", "datetime", "text")
NOTE_USER_EXCLUDED = "listed in features.exclude"
MAX_STORED_CATEGORIES = 50
_DATETIME_SAMPLE = 500
_ID_NAME = re.compile(
    r"^(id|uuid|guid|key|index|row_?id|row_?num(ber)?)$|[_\s.-](id|uuid|guid|key)$", re.IGNORECASE
)
_USE_AS_CATEGORY = "list it under features.categorical to use it"
_CAMEL_ID = re.compile(r"[a-z0-9](Id|ID|Uuid|UUID|Key)$")


def _is_bool_dtype(s: pd.Series) -> bool:
    return s.dtype == bool or isinstance(s.dtype, pd.BooleanDtype)


def _is_numeric_dtype(s: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(s.dtype)) and not _is_bool_dtype(s)


def _is_datetime_dtype(s: pd.Series) -> bool:
    return bool(pd.api.types.is_datetime64_any_dtype(s.dtype))


def _is_text_like_dtype(s: pd.Series) -> bool:
    return (
        s.dtype == object
        or isinstance(s.dtype, pd.CategoricalDtype)
        or pd.api.types.is_string_dtype(s.dtype)
    )


def _id_like_name(name: str) -> bool:
    return bool(_ID_NAME.search(name) or _CAMEL_ID.search(name))


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
    if pd.api.types.is_integer_dtype(present.dtype) and not _is_bool_dtype(present):
        values = present.astype("int64").astype(str).astype(object)
    elif pd.api.types.infer_dtype(present, skipna=True) == "string":
        values = present.astype(object)
    else:
        values = present.map(category_str).astype(object)
    out[mask] = values.to_numpy()
    return out


def _show(value: Any, limit: int = 40) -> str:
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
        f"{source}: column '{column}' row {first + 1}: {_show(original.iloc[first])} "
        f"is not {expected}{more}",
        hint,
    )


def coerce_numeric(s: pd.Series, column: str = "", source: str = "input") -> pd.Series:
    """float64 Series; values that are not numbers raise InputSchemaError (column, row, value)."""
    s = blank_to_missing(s)
    if _is_bool_dtype(s) or _is_numeric_dtype(s):
        return s.astype("float64")
    out = pd.to_numeric(s.astype(object), errors="coerce")
    _raise_bad_values(
        s,
        s.notna() & out.isna(),
        column,
        source,
        "a number",
        f"'{column}' is a numeric column: give a number, or leave the cell empty",
    )
    return pd.Series(out, index=s.index).astype("float64")


def coerce_boolean(s: pd.Series, column: str = "", source: str = "input") -> pd.Series:
    """float64 Series of 1.0/0.0 (NaN kept): accepts true/false, yes/no, y/n, t/f, 1/0."""
    s = blank_to_missing(s)
    if _is_bool_dtype(s):
        return s.astype("float64")
    text = as_category_strings(s)
    lowered = text.where(text.isna(), text.astype(str).str.strip().str.lower())
    is_true = lowered.isin(BOOL_TRUE)
    is_false = lowered.isin(BOOL_FALSE)
    _raise_bad_values(
        s,
        s.notna() & ~is_true & ~is_false,
        column,
        source,
        "true/false",
        f"'{column}' is a yes/no column: give true/false, yes/no or 1/0, or leave it empty",
    )
    out = pd.Series(np.nan, index=s.index, dtype="float64")
    out[is_true.to_numpy()] = 1.0
    out[is_false.to_numpy()] = 0.0
    return out


_TZ_SUFFIX = re.compile(
    r"\d:\d{2}(:\d{2}(\.\d+)?)?\s*(Z|UTC|GMT|[+-]\d{2}(:?\d{2})?)$", re.IGNORECASE
)


def _parse_datetime_group(text: pd.Series) -> pd.Series:
    out = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
    retry = text.notna() & out.isna()
    if retry.any():
        out[retry] = pd.to_datetime(text[retry], format="mixed", errors="coerce", utc=True)
    return out


def _parse_datetimes(text: pd.Series) -> pd.Series:
    """Parse strings to UTC datetimes (ISO 8601 first, then mixed formats); failures are NaT.

    Values with and without a UTC offset are parsed apart: pandas 2.3's ISO 8601 parser applies
    the offset of an earlier value to later values that have none.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        present = text.notna()
        has_tz = present & text.where(present, "").astype(str).str.contains(_TZ_SUFFIX)
        if not has_tz.any() or has_tz.sum() == present.sum():
            return _parse_datetime_group(text)
        out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
        out[has_tz] = _parse_datetime_group(text[has_tz])
        naive = present & ~has_tz
        out[naive] = _parse_datetime_group(text[naive])
    return out


def coerce_datetime(s: pd.Series, column: str = "", source: str = "input") -> pd.Series:
    """datetime64[ns] Series (time zones converted to UTC, then dropped); bad values raise."""
    s = blank_to_missing(s)
    if _is_datetime_dtype(s):
        if getattr(s.dt, "tz", None) is not None:
            s = s.dt.tz_convert("UTC").dt.tz_localize(None)
        try:
            return s.astype("datetime64[ns]")
        except (pd.errors.OutOfBoundsDatetime, OverflowError, ValueError):
            raise InputSchemaError(
                f"{source}: column '{column}' has dates outside 1677-2262",
                "use dates between the years 1677 and 2262, or leave them empty",
            ) from None
    text = as_category_strings(s)
    out = _parse_datetimes(text)
    _raise_bad_values(
        s,
        text.notna() & out.isna(),
        column,
        source,
        "a date/time",
        f"'{column}' is a date/time column: give a date such as 2024-01-31, or leave it empty",
    )
    return out.dt.tz_localize(None).astype("datetime64[ns]")


def coerce_categorical(s: pd.Series, column: str = "", source: str = "input") -> pd.Series:
    """Object Series of category strings; NaN kept; never fails."""
    return as_category_strings(blank_to_missing(s))


_COERCERS: dict[str, Callable[[pd.Series, str, str], pd.Series]] = {
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


def coerce_frame(df: pd.DataFrame, schema: Schema, source: str = "input") -> pd.DataFrame:
    """The model's input columns, in schema order, with the types training and predict share.

    numeric -> float64, boolean -> float64 1/0, categorical -> object strings, datetime ->
    datetime64[ns]; missing values stay missing. The index of ``df`` is kept.
    """
    missing = [c for c in schema.input_columns if c not in df.columns]
    if missing:
        raise InputSchemaError(
            f"{source}: {_missing_text(missing)} that the model needs",
            "add the column(s); `shipml` expects the columns of the training table",
        )
    out = {
        name: _COERCERS[schema.columns[name].role](_column(df, name, source), name, source)
        for name in schema.input_columns
    }
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
    if _is_bool_dtype(y):
        return y.astype(bool)
    if _is_numeric_dtype(y):
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


# --- inference -----------------------------------------------------------------------------------


def infer_task(y: pd.Series) -> Task:
    """Classification for text/bool/category targets and for integer targets with few values
    (at most 2, or at most min(20, 5% of rows)); otherwise regression."""
    y = y.dropna()
    if len(y) == 0 or _is_bool_dtype(y):
        return "classification"
    if _is_text_like_dtype(y):
        numbers = pd.to_numeric(y.astype(object), errors="coerce")
        if y.dtype != object or numbers.isna().any() or any(isinstance(v, str) for v in y):
            return "classification"
        y = numbers  # numbers stored as objects (e.g. SQL decimals)
    if not _is_numeric_dtype(y):
        return "regression"
    n_unique = int(y.nunique())
    if n_unique <= 2:
        return "classification"
    values = y.to_numpy(dtype="float64")
    integer_valued = bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))
    if integer_valued and n_unique <= max(2, min(20, 0.05 * len(y))):
        return "classification"
    return "regression"


def _boolean_pair(present: pd.Series) -> bool:
    """True for a bool dtype, or when the non-missing values are two yes/no spellings (any case)."""
    if _is_bool_dtype(present):
        return True
    uniques = pd.unique(present)
    if len(uniques) > 8:
        return False
    lowered = frozenset(category_str(v).strip().lower() for v in uniques)
    return lowered in _BOOL_PAIRS


def _all_numbers(present: pd.Series) -> bool:
    return (
        all(
            isinstance(v, int | float | np.number) and not isinstance(v, bool | np.bool_)
            for v in present
        )
        or pd.api.types.infer_dtype(present, skipna=True) == "decimal"
    )


def _looks_like_dates(text: pd.Series) -> bool:
    """Whether a sample of non-missing strings all parse as dates (and none is a plain number)."""
    sample = (
        text if len(text) <= _DATETIME_SAMPLE else text.sample(_DATETIME_SAMPLE, random_state=0)
    )
    sample = sample.astype(str).str.strip()
    lengths = sample.str.len()
    if not (sample.str.contains(r"\d", regex=True).all() and lengths.between(6, 40).all()):
        return False
    if pd.to_numeric(sample, errors="coerce").notna().any():
        return False
    return bool(_parse_datetimes(sample).notna().all())


def _infer_role(s: pd.Series, name: str, n_unique: int) -> tuple[Role, str]:
    """Role and reason for a column nobody pinned in config."""
    present = s.dropna()
    n = len(present)
    use_hint = "list it under features.numeric or features.categorical to use it"
    if n == 0:
        return "excluded", "entirely missing: excluded"
    if n_unique == 1:
        return "excluded", f"constant (always {_show(present.iloc[0])}): excluded"
    if _boolean_pair(present):
        return "boolean", "two values (yes/no): boolean"
    if _is_datetime_dtype(s):
        return "datetime", "dates/times"
    if _is_numeric_dtype(s) or (s.dtype == object and _all_numbers(present)):
        values = pd.to_numeric(present.astype(object), errors="coerce").to_numpy(dtype="float64")
        integer = bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))
        if integer and _id_like_name(name) and n_unique > 0.5 * n:
            return "identifier", f"name looks like an identifier: excluded ({use_hint})"
        if integer and n_unique == n and n >= 20:
            diffs = np.diff(values)
            in_order = bool(np.all(diffs > 0) or np.all(diffs < 0))
            counts_up = bool(np.all(diffs == 1) and values[0] in (0, 1))
            if in_order and (counts_up or n >= 100):
                return (
                    "identifier",
                    f"unique values in order, like a row number: excluded ({use_hint})",
                )
        return "numeric", "numbers" if _is_numeric_dtype(s) else "numbers stored as objects"
    if not _is_text_like_dtype(s):
        return "excluded", f"unsupported type {s.dtype}: excluded"
    text = as_category_strings(present)
    if _looks_like_dates(text):
        return "datetime", "text that parses as dates/times"
    lengths = text.str.len()
    unique_share = n_unique / n
    if (
        lengths.mean() > 30
        and text.str.contains(" ", regex=False).mean() >= 0.5
        and unique_share > 0.5
    ):
        return "text", "free text: excluded (list it under features.categorical to use it)"
    if _id_like_name(name) and unique_share > 0.5:
        return (
            "identifier",
            f"name looks like an identifier: excluded ({_USE_AS_CATEGORY})",
        )
    if n >= 20 and unique_share > 0.95 and lengths.mean() <= 40:
        what = "all values unique" if n_unique == n else "almost all values unique"
        return (
            "identifier",
            f"{what}: looks like an identifier, excluded ({_USE_AS_CATEGORY})",
        )
    return "categorical", f"categories ({n_unique} distinct values)"


def _top_categories(s: pd.Series) -> list[str]:
    counts = as_category_strings(s).value_counts(dropna=True)
    ranked = sorted(counts.items(), key=lambda item: (-int(item[1]), str(item[0])))
    return [str(value) for value, _ in ranked[:MAX_STORED_CATEGORIES]]


def _pinned_roles(
    df: pd.DataFrame, target: str, features: FeaturesConfig
) -> dict[str, tuple[str, str]]:
    """Column -> (role, config key) for every column the config pins; config mistakes raise."""
    roles: dict[str, tuple[str, str]] = {}
    for key in ROLE_KEYS:
        for column in getattr(features, key):
            where = f"features.{key}"
            if column == target:
                raise DataError(
                    f"{where} lists the target column '{target}'",
                    f"remove '{target}' from {where}: the target is never a feature",
                )
            if column not in df.columns:
                if column in features.derived:
                    continue  # derived columns are computed later
                raise DataError(
                    f"{where} lists '{column}', which is not a column of the data",
                    f"fix the name under {where} in shipml.yaml ({_some_columns(df)})",
                )
            if column in roles and roles[column][1] != where:
                raise DataError(
                    f"column '{column}' is listed under both {roles[column][1]} and {where}",
                    "list each column under one role only",
                )
            role = "excluded" if key == "exclude" else key
            roles[column] = (role, where)
    return roles


def _some_columns(df: pd.DataFrame, limit: int = 8) -> str:
    names = [str(c) for c in df.columns]
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"columns: {shown}{more}"


def _missing_text(columns: list[str]) -> str:
    names = ", ".join(f"'{c}'" for c in columns[:10])
    more = f" and {len(columns) - 10} more" if len(columns) > 10 else ""
    return f"missing column{'s' if len(columns) > 1 else ''} {names}{more}"


def _safe_nunique(s: pd.Series) -> int | None:
    try:
        return int(s.nunique(dropna=True))
    except TypeError:  # lists, dicts, ...
        return None


def _check_pinned(s: pd.Series, name: str, role: str, where: str) -> None:
    """A column pinned as numeric/boolean/datetime must convert; say which value does not."""
    coerce = _COERCERS.get(role)
    if coerce is None or role in ("categorical", "text"):
        return
    try:
        coerce(s, name, "training data")
    except InputSchemaError as err:
        raise DataError(
            f"{where} lists '{name}', but {err.message.removeprefix('training data: ')}",
            f"fix the data, or move '{name}' to features.categorical",
        ) from None


def infer_column(s: pd.Series, name: str, pinned: tuple[str, str] | None = None) -> ColumnInfo:
    """The ColumnInfo of one column: its pinned role (role, config key) or an inferred one."""
    s = blank_to_missing(s)
    missing_share = float(s.isna().mean()) if len(s) else 0.0
    n_unique = _safe_nunique(s)
    if n_unique is None:
        return ColumnInfo(
            name,
            "excluded",
            str(s.dtype),
            missing_share,
            0,
            None,
            "holds lists or other nested values: excluded",
        )
    role: Role
    if pinned is not None:
        role_name, where = pinned
        role = role_name  # type: ignore[assignment]
        note = NOTE_USER_EXCLUDED if role == "excluded" else f"set in {where}"
        if role != "excluded" and n_unique == 0:
            role, note = "excluded", f"entirely missing: excluded (although listed in {where})"
        elif role != "excluded":
            _check_pinned(s, name, role, where)
    else:
        role, note = _infer_role(s, name, n_unique)
    categories = _top_categories(s) if role in ("categorical", "boolean") else None
    return ColumnInfo(name, role, str(s.dtype), missing_share, n_unique, categories, note)


def infer_schema(
    df: pd.DataFrame,
    target: str,
    task: Task | None = None,
    features: FeaturesConfig | None = None,
) -> Schema:
    """Infer every column's role (config pins win), the task and the classes of the target."""
    if target not in df.columns:
        raise DataError(
            f"target column '{target}' is not in the data ({_some_columns(df)})",
            "fix `target` in shipml.yaml or pass --target COLUMN",
        )
    features = features or FeaturesConfig()
    pinned = _pinned_roles(df, target, features)
    columns: dict[str, ColumnInfo] = {}
    for name in df.columns:
        if name == target:
            continue
        columns[str(name)] = infer_column(df[name], str(name), pinned.get(str(name)))
    y = blank_to_missing(df[target]).dropna()
    task = task or infer_task(y)
    classes = target_classes(coerce_target(y, task)) if task == "classification" else None
    return Schema(
        target=target, task=task, columns=columns, classes=classes, derived=dict(features.derived)
    )


def check_input(
    df: pd.DataFrame, schema: Schema, source: str = "input", allow_extra: bool = False
) -> pd.DataFrame:
    """Check a table given to a model and return its input columns, coerced (see coerce_frame)."""
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
    return coerce_frame(df, schema, source)
