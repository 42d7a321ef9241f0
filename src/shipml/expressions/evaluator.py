"""Evaluation of a checked expression over a DataFrame, elementwise with pandas/numpy."""

from __future__ import annotations

import ast
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from shipml.errors import ConfigError
from shipml.expressions.grammar import (
    _ALLOWED_HINT,
    _BINOPS,
    _COMPARE,
    Value,
    _fail,
    _label,
    _literal,
    _shown,
    _unknown_column,
    parse_expression,
)


def evaluate(expr: str, df: pd.DataFrame, name: str | None = None) -> pd.Series:
    """Evaluate ``expr`` against the columns of ``df``; the result is aligned to ``df.index``.

    Numbers come back as float64, conditions as the nullable ``boolean`` dtype (missing where an
    input was missing), text as object.
    """
    tree = parse_expression(name or "", expr)
    evaluator = _Evaluator(name, expr, df)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = evaluator.value(tree.body)
    if isinstance(value, pd.Series):
        return value.copy()  # never the caller's own column (e.g. for '+x' or a bare name)
    return evaluator.broadcast(value)


def evaluate_numeric(expr: str, df: pd.DataFrame, name: str | None = None) -> pd.Series:
    """Evaluate ``expr`` as a float64 feature: conditions become 0.0/1.0, missing and ±inf NaN."""
    value = evaluate(expr, df, name)
    kind = _kind(value)
    if kind in ("text", "datetime"):
        raise ConfigError(
            f"{_label(name)}: the expression gives {kind}, not a number, in {_shown(expr)}",
            "a derived feature must be a number or a condition (which becomes 0/1)",
        )
    values = value.to_numpy(dtype="float64", na_value=np.nan, copy=True)
    values[~np.isfinite(values)] = np.nan
    return pd.Series(values, index=df.index, dtype="float64")


def _kind(value: Value) -> str:
    """One of num, bool, text, datetime, null."""
    if value is None:
        return "null"
    if isinstance(value, bool | np.bool_):
        return "bool"
    if isinstance(value, int | float | np.number):
        return "num"
    if isinstance(value, str):
        return "text"
    dtype = value.dtype
    if ptypes.is_bool_dtype(dtype):
        return "bool"
    if ptypes.is_datetime64_any_dtype(dtype):
        return "datetime"
    if ptypes.is_numeric_dtype(dtype):
        return "num"
    if isinstance(dtype, pd.CategoricalDtype):
        return "text" if value.notna().any() else "null"
    inferred = ptypes.infer_dtype(value, skipna=True)
    if inferred == "empty":
        return "null"
    if inferred in ("integer", "floating", "mixed-integer-float", "decimal"):
        return "num"
    if inferred == "boolean":
        return "bool"
    if inferred in ("datetime64", "datetime", "date"):
        return "datetime"
    return "text"


_KIND_WORDS = {"text": "text", "datetime": "a date", "num": "a number", "bool": "a condition"}


class _Evaluator:
    """Evaluates a validated expression tree against one DataFrame."""

    def __init__(self, name: str | None, expr: str, df: pd.DataFrame) -> None:
        self.name = name
        self.expr = expr
        self.df = df
        self.index = df.index

    def fail(self, problem: str, hint: str = _ALLOWED_HINT) -> ConfigError:
        return _fail(self.name, self.expr, problem, hint)

    def type_error(self, node: ast.expr, kind: str, needed: str) -> ConfigError:
        return self.fail(
            f"{ast.unparse(node)!r} is {_KIND_WORDS.get(kind, kind)}, but {needed}",
            "check the column's role and type; compare text with ==, in [...], or lower(x)",
        )

    def broadcast(self, value: Value) -> pd.Series:
        if isinstance(value, pd.Series):
            return value
        if value is None:
            return pd.Series(np.nan, index=self.index, dtype="float64")
        if isinstance(value, bool | np.bool_):
            return pd.Series(bool(value), index=self.index, dtype="boolean")
        if isinstance(value, str):
            return pd.Series(value, index=self.index, dtype=object)
        return pd.Series(float(value), index=self.index, dtype="float64")

    # -- conversions -------------------------------------------------------------------------
    def number(self, node: ast.expr, value: Value, needed: str) -> pd.Series | float:
        kind = _kind(value)
        if kind in ("text", "datetime"):
            raise self.type_error(node, kind, needed)
        if not isinstance(value, pd.Series):
            return np.nan if value is None else float(value)
        if kind == "null":
            return pd.Series(np.nan, index=value.index, dtype="float64")
        if value.dtype == "float64":
            return value
        return pd.Series(value.to_numpy(dtype="float64", na_value=np.nan), index=value.index)

    def condition(self, node: ast.expr, value: Value, needed: str) -> pd.Series:
        kind = _kind(value)
        if kind in ("text", "datetime"):
            raise self.type_error(node, kind, needed)
        if kind == "bool":
            return self.broadcast(value).astype("boolean")
        numbers = self.broadcast(self.number(node, value, needed))
        result = pd.Series(numbers.to_numpy() != 0, index=self.index, dtype="boolean")
        return result.mask(numbers.isna().to_numpy())

    def text(self, node: ast.expr, value: Value, needed: str) -> pd.Series | str | None:
        kind = _kind(value)
        if kind not in ("text", "null"):
            raise self.type_error(node, kind, needed)
        if isinstance(value, pd.Series):
            return value if value.dtype == object else value.astype(object).where(value.notna())
        return None if value is None else str(value)

    def missing(self, value: Value) -> np.ndarray:
        if isinstance(value, pd.Series):
            return value.isna().to_numpy()
        return np.full(len(self.index), value is None)

    # -- nodes -------------------------------------------------------------------------------
    def value(self, node: ast.expr) -> Value:
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool | str | None):
                return value
            assert isinstance(value, int | float)  # parse_expression allows nothing else
            return float(value)
        if isinstance(node, ast.Name):
            return self.column(node.id)
        if isinstance(node, ast.BinOp):
            symbol, func = _BINOPS[type(node.op)]
            left = self.number(node.left, self.value(node.left), f"'{symbol}' needs numbers")
            right = self.number(node.right, self.value(node.right), f"'{symbol}' needs numbers")
            if isinstance(left, pd.Series) or isinstance(right, pd.Series):
                return func(left, right)
            return float(func(np.float64(left), np.float64(right)))
        if isinstance(node, ast.UnaryOp):
            operand = self.value(node.operand)
            if isinstance(node.op, ast.Not):
                return ~self.condition(node.operand, operand, "'not' needs a condition")
            number = self.number(node.operand, operand, "'-' and '+' need numbers")
            return -number if isinstance(node.op, ast.USub) else number
        if isinstance(node, ast.BoolOp):
            word = "and" if isinstance(node.op, ast.And) else "or"
            need = f"'{word}' needs conditions"
            result = self.condition(node.values[0], self.value(node.values[0]), need)
            for part in node.values[1:]:
                other = self.condition(part, self.value(part), need)
                result = (result & other) if word == "and" else (result | other)
            return result
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise self.fail(f"{type(node).__name__} is not allowed")  # parse_expression rejects it

    def column(self, column: str) -> pd.Series:
        if column not in self.df.columns:
            raise _unknown_column(self.name, self.expr, column, self.df.columns)
        values = self.df[column]
        if isinstance(values, pd.DataFrame):
            raise self.fail(f"column '{column}' appears more than once in the table", "rename it")
        return values

    def compare(self, node: ast.Compare) -> pd.Series:
        result: pd.Series | None = None
        left_node, left = node.left, self.value(node.left)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, ast.In | ast.NotIn):
                assert isinstance(right_node, ast.List | ast.Tuple | ast.Set)
                part = self.isin(left_node, left, [_literal(e) for e in right_node.elts])
                if isinstance(op, ast.NotIn):
                    part = ~part
            else:
                right = self.value(right_node)
                part = self.compare_pair(type(op), left_node, left, right_node, right)
                left_node, left = right_node, right
            result = part if result is None else (result & part)
        assert result is not None
        return result

    def compare_pair(
        self,
        op: type[ast.cmpop],
        left_node: ast.expr,
        left: Value,
        right_node: ast.expr,
        right: Value,
    ) -> pd.Series:
        symbol, func = _COMPARE[op]
        if left is None or right is None:
            raise self.fail(
                f"comparing with None using '{symbol}' is not allowed",
                "test for missing values with is_missing(x)",
            )
        lk, rk = _kind(left), _kind(right)
        a: Any
        b: Any
        if "null" in (lk, rk):
            a = b = None
        elif lk in ("num", "bool") and rk in ("num", "bool"):
            a = self.number(left_node, left, "")
            b = self.number(right_node, right, "")
        elif lk == rk == "text":
            a, b = self.filled_text(left), self.filled_text(right)
        elif "datetime" in (lk, rk) and {lk, rk} <= {"datetime", "text"}:
            a = self.as_datetime(left_node, left)
            b = self.as_datetime(right_node, right)
        else:
            raise self.fail(
                f"cannot compare {_KIND_WORDS[lk]} ({ast.unparse(left_node)!r}) "
                f"with {_KIND_WORDS[rk]} ({ast.unparse(right_node)!r})",
                "compare numbers with numbers and text with 'text'",
            )
        if a is None:
            result = pd.Series(pd.NA, index=self.index, dtype="boolean")
        else:
            try:
                raw = func(a, b)
            except TypeError as err:
                raise self.fail(f"cannot compare with '{symbol}' ({err})") from None
            result = self.broadcast(raw if isinstance(raw, pd.Series) else bool(raw))
            missing = self.missing(left) | self.missing(right)
            result = result.astype("boolean").mask(missing)
        return result

    def filled_text(self, value: Value) -> pd.Series | str:
        if isinstance(value, pd.Series):
            return value.astype(object).where(value.notna(), "").astype(str)
        return str(value)

    def as_datetime(self, node: ast.expr, value: Value) -> Any:
        if isinstance(value, str):
            try:
                return pd.Timestamp(value)
            except (ValueError, TypeError):
                raise self.fail(
                    f"{value!r} is not a date", "write dates like '2024-01-31'"
                ) from None
        if isinstance(value, pd.Series) and _kind(value) == "datetime":
            return value if ptypes.is_datetime64_any_dtype(value.dtype) else pd.to_datetime(value)
        raise self.type_error(node, _kind(value), "dates compare only with dates or 'YYYY-MM-DD'")

    def isin(self, node: ast.expr, value: Value, options: list[Any]) -> pd.Series:
        kind = _kind(value)
        wanted: list[Any]
        if kind in ("num", "bool"):
            if any(isinstance(o, str) for o in options):
                raise self.fail(
                    f"{ast.unparse(node)!r} is a number but the 'in' list holds text",
                    "put numbers in the list, or check the column's role",
                )
            wanted = [float(o) for o in options]
            series = self.broadcast(self.number(node, value, ""))
        elif kind == "text":
            if not all(isinstance(o, str) for o in options):
                raise self.fail(
                    f"{ast.unparse(node)!r} is text but the 'in' list holds numbers",
                    "quote the values: x in ['1', '2']",
                )
            wanted = options
            series = self.broadcast(value)
        elif kind == "datetime":
            wanted = [self.as_datetime(node, o) for o in options]
            series = self.as_datetime(node, value)
        else:
            return pd.Series(pd.NA, index=self.index, dtype="boolean")
        result = pd.Series(series.isin(wanted).to_numpy(), index=self.index, dtype="boolean")
        return result.mask(self.missing(value))

    def call(self, node: ast.Call) -> Value:
        assert isinstance(node.func, ast.Name)
        func = node.func.id
        args = [self.value(a) for a in node.args]
        need = f"{func}() needs a number"
        if func in ("log", "log1p", "exp", "sqrt", "abs", "floor", "ceil"):
            ufunc = {
                "log": np.log,
                "log1p": np.log1p,
                "exp": np.exp,
                "sqrt": np.sqrt,
                "abs": np.abs,
                "floor": np.floor,
                "ceil": np.ceil,
            }[func]
            return _apply(ufunc, self.number(node.args[0], args[0], need))
        if func == "round":
            digits = node.args[1].value if len(args) == 2 else 0  # type: ignore[attr-defined]
            x = self.number(node.args[0], args[0], need)
            return x.round(digits) if isinstance(x, pd.Series) else float(np.round(x, digits))
        if func in ("min", "max"):
            a = self.number(node.args[0], args[0], f"{func}() needs numbers")
            b = self.number(node.args[1], args[1], f"{func}() needs numbers")
            ufunc2 = np.minimum if func == "min" else np.maximum
            if isinstance(a, pd.Series) or isinstance(b, pd.Series):
                return pd.Series(ufunc2(self.broadcast(a), self.broadcast(b)), index=self.index)
            return float(ufunc2(a, b))
        if func == "clip":
            x, low, high = (
                self.broadcast(self.number(n, v, "clip() needs numbers"))
                for n, v in zip(node.args, args, strict=True)
            )
            return pd.Series(np.minimum(np.maximum(x, low), high), index=self.index)
        if func == "where":
            return self.where(node, args)
        if func in ("str_len", "lower"):
            text = self.text(node.args[0], args[0], f"{func}() needs text")
            if text is None:
                return None
            if isinstance(text, str):
                return float(len(text)) if func == "str_len" else text.lower()
            if func == "str_len":
                return text.map(lambda v: float(len(v)) if isinstance(v, str) else np.nan).astype(
                    "float64"
                )
            return text.map(lambda v: v.lower() if isinstance(v, str) else None)
        if func == "is_missing":
            return pd.Series(self.missing(args[0]), index=self.index, dtype="boolean")
        raise self.fail(f"unknown function '{func}'")  # parse_expression rejects it

    def where(self, node: ast.Call, args: list[Value]) -> pd.Series:
        cond = self.condition(node.args[0], args[0], "where() needs a condition first")
        kinds = {_kind(args[1]), _kind(args[2])} - {"null"}
        if kinds <= {"num", "bool"}:
            a = self.broadcast(self.number(node.args[1], args[1], ""))
            b = self.broadcast(self.number(node.args[2], args[2], ""))
            result = a.where(cond.fillna(False).astype(bool), b)
            return result.astype("float64").mask(cond.isna().to_numpy())
        if kinds == {"text"}:
            a = self.broadcast(args[1]).astype(object)
            b = self.broadcast(args[2]).astype(object)
            result = a.where(cond.fillna(False).astype(bool), b)
            return result.mask(cond.isna().to_numpy(), None)
        raise self.fail(
            "where(cond, a, b) needs a and b both numbers or both text",
            "e.g. where(x > 0, x, 0) or where(x > 0, 'pos', 'neg')",
        )


def _apply(ufunc: Callable[[Any], Any], x: pd.Series | float) -> pd.Series | float:
    if isinstance(x, pd.Series):
        return pd.Series(ufunc(x.to_numpy()), index=x.index)
    return float(ufunc(np.float64(x)))
