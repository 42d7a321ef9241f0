"""Inference of the task and of every column's role from the training table."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
from pandas.tseries.api import guess_datetime_format

from shipml.config import FeaturesConfig
from shipml.data.coerce import (
    COERCERS,
    ISO_FORMAT,
    as_category_strings,
    blank_to_missing,
    category_str,
    coerce_datetime,
    coerce_target,
    is_bool_dtype,
    is_datetime_dtype,
    is_numeric_dtype,
    is_text_like_dtype,
    parse_datetime_text,
    show_value,
    target_classes,
)
from shipml.data.images import FILE_COLUMN, ImageSpec
from shipml.data.schema import ColumnInfo, Role, Schema, Task
from shipml.data.sources import not_utf8
from shipml.errors import DataError, InputSchemaError

# Yes/no spellings; numbers that happen to be 0 and 1 are numbers (a later 3 is then a number,
# not an unreadable yes/no).
_BOOL_PAIRS = (
    frozenset({"true", "false"}),
    frozenset({"yes", "no"}),
    frozenset({"y", "n"}),
    frozenset({"t", "f"}),
)
DateFormats = str | dict[str, str] | None  # data.date_format: one for all, or per column
_DATE_GUESSES = 20  # distinct values whose layout pandas guesses
ROLE_KEYS: tuple[str, ...] = ("exclude", "numeric", "categorical", "boolean", "datetime", "text")
NOTE_USER_EXCLUDED = "listed in features.exclude"
MAX_STORED_CATEGORIES = 50
_DATETIME_SAMPLE = 500
_ID_NAME = re.compile(
    r"^(id|uuid|guid|key|index|row_?id|row_?num(ber)?)$|[_\s.-](id|uuid|guid|key)$", re.IGNORECASE
)
_USE_AS_CATEGORY = "list it under features.categorical to use it"
_CAMEL_ID = re.compile(r"[a-z0-9](Id|ID|Uuid|UUID|Key)$")


def _id_like_name(name: str) -> bool:
    return bool(_ID_NAME.search(name) or _CAMEL_ID.search(name))


def infer_task(y: pd.Series) -> Task:
    """Classification for text/bool/category targets and for integer targets with few values
    (at most 2, or at most min(20, 5% of rows)); otherwise regression."""
    y = y.dropna()
    if len(y) == 0 or is_bool_dtype(y):
        return "classification"
    if is_text_like_dtype(y):
        numbers = pd.to_numeric(y.astype(object), errors="coerce")
        if y.dtype != object or numbers.isna().any() or any(isinstance(v, str) for v in y):
            return "classification"
        y = numbers  # numbers stored as objects (e.g. SQL decimals)
    if not is_numeric_dtype(y):
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
    if is_bool_dtype(present):
        return True
    uniques = pd.unique(present)
    if len(uniques) > 8:
        return False
    lowered = frozenset(category_str(v).strip().lower() for v in uniques)
    return lowered in _BOOL_PAIRS


def _format_of(date_formats: DateFormats, name: str) -> str | None:
    if isinstance(date_formats, dict):
        return date_formats.get(name)
    return date_formats


def _date_hint(name: str, example: str) -> str:
    return (
        f'set data.date_format in shipml.yaml, e.g. `date_format: {{{name}: "{example}"}}` '
        f"(a strftime format; before there is one: `shipml init ... --date-format "
        f"'{name}={example}'`), or write the dates as ISO 8601 (2024-01-31)"
    )


def infer_date_format(text: pd.Series, name: str) -> str:
    """The one format every date of a text column is read with: ISO8601, or the strftime
    format pandas guesses from the values (day first or month first) that reads all of them.
    A column that two formats read differently (04/05/2023 with no day above 12) or that no
    single format reads (mixed layouts) raises DataError naming the column and
    data.date_format."""
    values = pd.Series(pd.unique(text.dropna().astype(str).str.strip()), dtype=object)
    if parse_datetime_text(values, ISO_FORMAT).notna().all():
        return ISO_FORMAT
    candidates: set[str] = set()
    with warnings.catch_warnings():  # (pandas warns when dayfirst disagrees with the value)
        warnings.simplefilter("ignore")
        for value in values.iloc[:_DATE_GUESSES]:
            for dayfirst in (False, True):
                guessed = guess_datetime_format(value, dayfirst=dayfirst)
                if guessed is not None:
                    candidates.add(guessed)
    readings: dict[str, pd.Series] = {}
    for fmt in sorted(candidates):
        parsed = parse_datetime_text(values, fmt)
        if parsed.notna().all() and not any(parsed.equals(p) for p in readings.values()):
            readings[fmt] = parsed
    if len(readings) == 1:
        return next(iter(readings))
    if len(readings) > 1:
        first, second = list(readings)[:2]
        differ = np.flatnonzero((readings[first] != readings[second]).to_numpy())
        example = str(values.iloc[int(differ[0])]) if len(differ) else str(values.iloc[0])
        raise DataError(
            f"column '{name}': dates such as '{example}' read as {first} and as {second} "
            "(no value settles which comes first): ambiguous",
            _date_hint(name, "%d/%m/%Y"),
        )
    best, read = "", -1
    for fmt in sorted(candidates):
        n_read = int(parse_datetime_text(values, fmt).notna().sum())
        if n_read > read:
            best, read = fmt, n_read
    misfit = values[parse_datetime_text(values, best).isna()] if best else values
    shown = f"'{misfit.iloc[0]}'"
    if best:
        shown = f"'{values[parse_datetime_text(values, best).notna()].iloc[0]}' and {shown}"
    raise DataError(
        f"column '{name}' mixes date formats (such as {shown}): no one format reads every date",
        _date_hint(name, best or "%d/%m/%Y"),
    )


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
    return bool(parse_datetime_text(sample).notna().all())


def _infer_role(s: pd.Series, name: str, n_unique: int) -> tuple[Role, str]:
    """Role and reason for a column nobody pinned in config."""
    present = s.dropna()
    n = len(present)
    use_hint = "list it under features.numeric or features.categorical to use it"
    if n == 0:
        return "excluded", "entirely missing: excluded"
    if n_unique == 1:
        return "excluded", f"constant (always {show_value(present.iloc[0])}): excluded"
    if _boolean_pair(present):
        return "boolean", "two values (yes/no): boolean"
    if is_datetime_dtype(s):
        return "datetime", "dates/times"
    if is_numeric_dtype(s) or (s.dtype == object and _all_numbers(present)):
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
        return "numeric", "numbers" if is_numeric_dtype(s) else "numbers stored as objects"
    if not is_text_like_dtype(s):
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


def _safe_nunique(s: pd.Series) -> int | None:
    try:
        return int(s.nunique(dropna=True))
    except TypeError:  # lists, dicts, ...
        return None


def _check_pinned(s: pd.Series, name: str, role: str, where: str) -> None:
    """A column pinned as numeric/boolean/datetime must convert; say which value does not."""
    coerce = COERCERS.get(role)
    if coerce is None or role in ("categorical", "text", "datetime"):
        return  # (a date column's values are checked against its format: _date_format)
    try:
        coerce(s, name, "training data")
    except InputSchemaError as err:
        raise DataError(
            f"{where} lists '{name}', but {err.message.removeprefix('training data: ')}",
            f"fix the data, or move '{name}' to features.categorical",
        ) from None


def _date_format(s: pd.Series, name: str, given: str | None) -> str | None:
    """The date format of a datetime column read from text (None for real datetimes): the one
    given in data.date_format (checked against the values), or the inferred one."""
    if is_datetime_dtype(s):
        return None
    text = as_category_strings(s.dropna())
    if given is None:
        return infer_date_format(text, name)
    try:
        coerce_datetime(text, name, "training data", given)
    except InputSchemaError as err:
        raise DataError(
            f"data.date_format '{given}' does not read column '{name}': "
            + err.message.removeprefix("training data: "),
            "fix data.date_format in shipml.yaml, or the dates",
        ) from None
    return given


def infer_column(
    s: pd.Series,
    name: str,
    pinned: tuple[str, str] | None = None,
    date_formats: DateFormats = None,
) -> ColumnInfo:
    """The ColumnInfo of one column: its pinned role (role, config key) or an inferred one;
    a date column read from text gets its format (``date_formats``: data.date_format)."""
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
    date_format = (
        _date_format(s, name, _format_of(date_formats, name)) if role == "datetime" else None
    )
    return ColumnInfo(
        name, role, str(s.dtype), missing_share, n_unique, categories, note, date_format
    )


def infer_schema(
    df: pd.DataFrame,
    target: str,
    task: Task | None = None,
    features: FeaturesConfig | None = None,
    date_formats: DateFormats = None,
) -> Schema:
    """Infer every column's role (config pins win), the task and the classes of the target.
    ``date_formats`` (data.date_format; by default ``df.attrs["date_format"]``, which
    shipml.data.sources.load_table sets): how text dates are read. The CSV's encoding
    (``df.attrs["encoding"]``) is recorded where it is not UTF-8."""
    if target not in df.columns:
        raise DataError(
            f"target column '{target}' is not in the data ({_some_columns(df)})",
            "fix `target` in shipml.yaml or pass --target COLUMN",
        )
    features = features or FeaturesConfig()
    if date_formats is None:
        date_formats = df.attrs.get("date_format")
    if isinstance(date_formats, dict):
        unknown = [c for c in date_formats if c not in df.columns]
        if unknown:
            raise DataError(
                f"data.date_format names column '{unknown[0]}', which is not in the data "
                f"({_some_columns(df)})",
                "fix the column name in data.date_format (or in --date-format COLUMN=FORMAT)",
            )
    pinned = _pinned_roles(df, target, features)
    image = df.attrs.get("image")
    if image:  # pixels are numbers, however few values they take; the file name is an id
        pixels = ImageSpec.from_dict(image).columns
        pinned = {**{c: ("numeric", "image") for c in pixels}, **pinned}
        if FILE_COLUMN in df.columns:
            pinned.setdefault(FILE_COLUMN, ("identifier", "image"))
    columns: dict[str, ColumnInfo] = {}
    for name in df.columns:
        if name == target:
            continue
        columns[str(name)] = infer_column(df[name], str(name), pinned.get(str(name)), date_formats)
    y = blank_to_missing(df[target]).dropna()
    task = task or infer_task(y)
    classes = target_classes(coerce_target(y, task)) if task == "classification" else None
    return Schema(
        target=target,
        task=task,
        columns=columns,
        classes=classes,
        derived=dict(features.derived),
        image=dict(image) if image else None,
        encoding=not_utf8(df.attrs.get("encoding")),
    )
