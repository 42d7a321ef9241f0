"""Labels as users have them, turned into a classifier's own classes.

A model's classes are what training made of the target (``coerce.coerce_target``): integers
for 1/2 or 1.0/0.0, booleans for True/False, strings otherwise. Labels that come back later, in
a labelled file for `shipml evaluate`, a new batch for `shipml retrain`, a monitored file or
/feedback, may be read as another type: '2' or 2.0 for the class 2, 'true' for True. Every
path that compares labels with a model's predictions turns them into the model's classes here
first, so scikit-learn's metrics see one type on both sides (an object array of Python ints is
"unknown" to them, which is how integer classes once broke retraining).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from shipml.data.coerce import BOOL_FALSE, BOOL_TRUE, category_str
from shipml.errors import InputSchemaError

_Key = tuple[str, Any]


def _number(value: Any) -> int | float:
    number = float(value)
    return int(number) if number.is_integer() else number


def _identity(value: Any) -> _Key:
    """What a class is: a boolean, a number (1, 1.0 and np.int64(1) alike) or a string."""
    if isinstance(value, bool | np.bool_):
        return ("bool", bool(value))
    if isinstance(value, int | float | np.integer | np.floating):
        return ("number", _number(value))
    return ("text", str(value))


def _candidates(value: Any) -> list[_Key]:
    """The classes a label may stand for, most literal first: itself; for text, the number or
    true/false it spells; its category string (how training wrote a mixed target)."""
    keys = [_identity(value)]
    if isinstance(value, str):
        text = value.strip()
        keys.append(("text", text))
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                keys.append(("number", _number(number)))
        if text.lower() in BOOL_TRUE | BOOL_FALSE:
            keys.append(("bool", text.lower() in BOOL_TRUE))
    elif not isinstance(value, bool | np.bool_):
        keys.append(("text", category_str(value)))
    return keys


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def class_array(classes: Sequence[Any]) -> np.ndarray:
    """The classes as an array of the type the model predicts: int64, bool or float64 for
    numbers and booleans, an object array of str for text (scikit-learn's own form)."""
    array = np.asarray(list(classes))
    if array.dtype.kind in "USO":
        return np.asarray([str(c) for c in classes], dtype=object)
    return array


def class_indices(values: Any, classes: Sequence[Any]) -> np.ndarray:
    """The position in ``classes`` of each label in ``values``; -1 where a label is no class
    (or missing)."""
    position: dict[_Key, int] = {}
    for i, c in enumerate(classes):
        position.setdefault(_identity(c), i)
    series = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(object)
    found: dict[tuple[type, Any], int] = {}  # by type too: True, 1 and 1.0 are equal keys
    out = np.empty(len(series), dtype=np.int64)
    for row, value in enumerate(series.to_numpy(dtype=object)):
        if _missing(value):
            out[row] = -1
            continue
        key = (type(value), value)
        if key not in found:
            found[key] = next((position[k] for k in _candidates(value) if k in position), -1)
        out[row] = found[key]
    return out


def to_classes(
    values: Any, classes: Sequence[Any], source: str = "input", target: str = "target"
) -> np.ndarray:
    """``values`` (labels as read: strings, numbers, booleans, numpy or pandas types) as the
    model's ``classes``, in an array of the type the model predicts (``class_array``).

    Raises InputSchemaError naming ``source`` and ``target`` when a label is missing or is
    none of the classes.

    >>> to_classes(["2", 1.0, 2], [1, 2]).tolist()
    [2, 1, 2]
    >>> to_classes(["true", False], [False, True]).tolist()
    [True, False]
    """
    indices = class_indices(values, classes)
    if len(classes) == 0 or np.any(indices < 0):
        raw = list(values)
        unread = [v for v, i in zip(raw, indices, strict=True) if i < 0]
        unknown = sorted({category_str(v) for v in unread if not _missing(v)})
        shown = ", ".join(repr(u) for u in unknown[:5])
        what = f"values the model never saw: {shown}" if unknown else "missing values"
        raise InputSchemaError(
            f"{source}: target '{target}' has {what}",
            f"the model knows: {', '.join(category_str(c) for c in classes[:20])}",
        )
    return class_array(classes)[indices]


__all__ = ["class_array", "class_indices", "to_classes"]
