"""The derived-feature expression evaluator: allowed constructs, forbidden ones, missing values."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import shipml.expressions as expressions
from shipml.errors import ConfigError
from shipml.expressions import (
    check_columns,
    evaluate,
    evaluate_numeric,
    parse_expression,
    referenced_columns,
)


@pytest.fixture
def df() -> pd.DataFrame:
    """No missing values: results compare one to one with plain pandas."""
    return pd.DataFrame(
        {
            "income": [100.0, 250.0, 40.0, 0.0, 75.5],
            "household_size": [2.0, 5.0, 1.0, 3.0, 4.0],
            "age": [21.0, 35.0, 60.0, 18.0, 44.0],
            "a": [1.0, 4.0, 5.0, 2.0, 9.0],
            "b": ["x", "x", "y", "z", "x"],
            "day_of_week": ["Saturday", "Monday", "Sunday", "Friday", "Sunday"],
            "is_active": [1.0, 0.0, 1.0, 1.0, 0.0],
            "name": ["Ann", "BOB", "cy", "Dee", "Eve"],
            "signup": pd.to_datetime(
                ["2020-01-05", "2021-03-01", "2019-12-31", "2022-07-04", "2021-01-01"]
            ),
        },
        index=[10, 11, 12, 13, 14],
    )


@pytest.fixture
def gaps() -> pd.DataFrame:
    """Missing values in every column."""
    return pd.DataFrame(
        {
            "x": [1.0, np.nan, -2.0, 0.0],
            "y": [2.0, 2.0, np.nan, 0.0],
            "c": ["a", "b", np.nan, "a"],
            "flag": [1.0, 0.0, np.nan, np.nan],
        }
    )


ALLOWED: list[tuple[str, Callable[[pd.DataFrame], pd.Series]]] = [
    ("income / household_size", lambda d: d.income / d.household_size),
    ("income + age - a * 2", lambda d: d.income + d.age - d.a * 2),
    ("age ** 2", lambda d: d.age**2),
    ("income // household_size", lambda d: d.income // d.household_size),
    ("income % household_size", lambda d: d.income % d.household_size),
    ("-age", lambda d: -d.age),
    ("+age", lambda d: d.age),
    ("log(income + 1)", lambda d: np.log(d.income + 1)),
    ("log1p(income)", lambda d: np.log1p(d.income)),
    ("exp(a / 10)", lambda d: np.exp(d.a / 10)),
    ("sqrt(income)", lambda d: np.sqrt(d.income)),
    ("abs(a - 5)", lambda d: (d.a - 5).abs()),
    ("round(income / 3)", lambda d: (d.income / 3).round()),
    ("round(income / 3, 2)", lambda d: (d.income / 3).round(2)),
    ("floor(income / 3)", lambda d: np.floor(d.income / 3)),
    ("ceil(income / 3)", lambda d: np.ceil(d.income / 3)),
    ("clip(age, 20, 50)", lambda d: d.age.clip(20, 50)),
    ("clip(age, a, 50)", lambda d: d.age.clip(d.a, 50)),
    ("where(a > 3, a, 0)", lambda d: d.a.where(d.a > 3, 0.0)),
    ("min(a, household_size)", lambda d: np.minimum(d.a, d.household_size)),
    ("max(a, 3)", lambda d: np.maximum(d.a, 3.0)),
    ("str_len(name)", lambda d: d.name.str.len().astype(float)),
    ("day_of_week in ['Saturday', 'Sunday']", lambda d: d.day_of_week.isin(["Saturday", "Sunday"])),
    (
        "day_of_week not in ('Saturday', 'Sunday')",
        lambda d: ~d.day_of_week.isin(["Saturday", "Sunday"]),
    ),
    ("a in {1, 9}", lambda d: d.a.isin([1.0, 9.0])),
    ("a in [-1, 2]", lambda d: d.a.isin([-1.0, 2.0])),
    ("(a > 3) and (b == 'x')", lambda d: (d.a > 3) & (d.b == "x")),
    ("a > 3 or b == 'z'", lambda d: (d.a > 3) | (d.b == "z")),
    ("a > 1 and a < 9 and b != 'y'", lambda d: (d.a > 1) & (d.a < 9) & (d.b != "y")),
    ("not is_active", lambda d: d.is_active == 0),
    ("not (a >= 4)", lambda d: ~(d.a >= 4)),
    ("2 < a <= 5", lambda d: (d.a > 2) & (d.a <= 5)),
    ("a == 4", lambda d: d.a == 4),
    ("a != 4", lambda d: d.a != 4),
    ("a < household_size", lambda d: d.a < d.household_size),
    ("b <= 'x'", lambda d: d.b <= "x"),
    ("is_active == True", lambda d: d.is_active == 1),
    ("lower(name) == 'bob'", lambda d: d.name.str.lower() == "bob"),
    ("signup >= '2021-01-01'", lambda d: d.signup >= pd.Timestamp("2021-01-01")),
    ("is_missing(a)", lambda d: d.a.isna()),
]


@pytest.mark.parametrize(("expr", "expected"), ALLOWED, ids=[e for e, _ in ALLOWED])
def test_allowed_constructs_match_pandas(
    df: pd.DataFrame, expr: str, expected: Callable[[pd.DataFrame], pd.Series]
) -> None:
    got = evaluate(expr, df)
    want = expected(df)
    assert got.index.equals(df.index)
    if pd.api.types.is_bool_dtype(want.dtype):
        assert str(got.dtype) == "boolean"
        assert got.astype(bool).tolist() == want.tolist()
    else:
        np.testing.assert_allclose(got.to_numpy(dtype=float), want.to_numpy(dtype=float))


def test_text_results(df: pd.DataFrame) -> None:
    assert evaluate("lower(name)", df).tolist() == ["ann", "bob", "cy", "dee", "eve"]
    got = evaluate("where(a > 3, 'big', 'small')", df)
    assert got.tolist() == ["small", "big", "big", "small", "big"]


def test_constants_broadcast_to_the_index(df: pd.DataFrame) -> None:
    got = evaluate("1 + 2", df)
    assert got.index.equals(df.index)
    assert got.tolist() == [3.0] * 5


def test_division_by_zero_is_inf_not_an_error(df: pd.DataFrame) -> None:
    zero = df.assign(household_size=0.0)
    assert np.isinf(evaluate("income / household_size", zero).iloc[0])
    assert np.isnan(evaluate("income / household_size", zero).iloc[3])  # 0 / 0
    assert np.isinf(evaluate("1 / 0", df)).all()
    assert np.isinf(evaluate("1 // 0", df)).all()
    assert np.isnan(evaluate("1 % 0", df)).all()
    assert np.isinf(evaluate("2 ** 100000", df)).all()  # float power: no huge ints
    assert np.isnan(evaluate("log(-1)", df)).all()


def test_evaluate_numeric_turns_inf_into_nan_and_conditions_into_floats(df: pd.DataFrame) -> None:
    zero = df.assign(household_size=0.0)
    ratio = evaluate_numeric("income / household_size", zero, "ratio")
    assert ratio.dtype == "float64"
    assert ratio.isna().all()
    weekend = evaluate_numeric("day_of_week in ['Saturday', 'Sunday']", df, "weekend")
    assert weekend.dtype == "float64"
    assert weekend.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]


def test_results_never_share_the_input_columns() -> None:
    frame = pd.DataFrame({"x": [1.0, np.inf, -np.inf]})
    for expr in ("x", "+x", "clip(x, -1, 1)"):
        evaluate_numeric(expr, frame, "f")
        evaluate(expr, frame).iloc[0] = 99.0
    assert frame["x"].tolist() == [1.0, np.inf, -np.inf]


def test_evaluate_numeric_rejects_text(df: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match=r"features\.derived\.low: the expression gives text"):
        evaluate_numeric("lower(name)", df, "low")


def _values(series: pd.Series) -> list[object]:
    """Values with missing ones as None, so lists compare without pd.NA's ambiguity."""
    return [None if pd.isna(v) else v for v in series.tolist()]


def test_missing_values_propagate(gaps: pd.DataFrame) -> None:
    assert _values(evaluate("x + y", gaps)) == [3.0, None, None, 0.0]
    cmp = evaluate("x > 0", gaps)
    assert str(cmp.dtype) == "boolean"
    assert _values(cmp) == [True, None, False, False]
    assert _values(evaluate("c in ['a']", gaps)) == [True, False, None, True]
    assert _values(evaluate("c not in ['a']", gaps)) == [False, True, None, False]
    assert _values(evaluate("c == 'a'", gaps)) == [True, False, None, True]
    assert _values(evaluate("not flag", gaps)) == [False, True, None, None]
    # three-valued logic: False and missing is False, True or missing is True
    assert _values(evaluate("(y > 5) and (x > 0)", gaps)) == [False, False, False, False]
    assert _values(evaluate("(y > 1) and (x > 0)", gaps)) == [True, None, False, False]
    assert _values(evaluate("(y > 1) or (x > 0)", gaps)) == [True, True, None, False]
    assert _values(evaluate("where(x > 0, 1, 2)", gaps)) == [1.0, None, 2.0, 2.0]
    assert _values(evaluate("where(flag, 'on', 'off')", gaps)) == ["on", "off", None, None]
    assert _values(evaluate("is_missing(x)", gaps)) == [False, True, False, False]
    assert _values(evaluate("str_len(c)", gaps)) == [1.0, 1.0, None, 1.0]
    assert _values(evaluate("max(x, 0)", gaps)) == [1.0, None, 0.0, 0.0]
    assert _values(evaluate_numeric("x > 0", gaps)) == [1.0, None, 0.0, 0.0]


def test_object_columns_that_hold_numbers_are_numbers() -> None:
    frame = pd.DataFrame({"n": pd.Series([1, 2.5, None], dtype=object)})
    assert evaluate("n * 2", frame).tolist()[:2] == [2.0, 5.0]


FORBIDDEN = [
    ("__import__('os').system('x')", "not allowed"),
    ("__import__('os')", "unknown function '__import__'"),
    ("x.__class__", "attribute access"),
    ("x.upper()", "not allowed"),
    ("[c for c in x]", "list comprehension"),
    ("{c for c in x}", "set comprehension"),
    ("(c for c in x)", "generator expression"),
    ("{k: 1 for k in x}", "dict comprehension"),
    ("lambda: 1", "lambda"),
    ("open('f')", "unknown function 'open'"),
    ("eval('1')", "unknown function 'eval'"),
    ("exec('1')", "unknown function 'exec'"),
    ("getattr(x, 'y')", "unknown function 'getattr'"),
    ("x[0]", "indexing"),
    ("x[1:2]", "indexing"),
    ("f'{x}'", "f-string"),
    ("a if b else c", "where"),
    ("(y := 1)", "':=' assignment"),
    ("{'a': 1}", "dict literal"),
    ("[1, 2]", "a list outside"),
    ("(1, 2)", "a tuple outside"),
    ("log(x, base=2)", "keyword arguments"),
    ("log(*x)", "'\\*' unpacking"),
    ("log()", "takes 1 argument"),
    ("clip(x, 1)", "takes 3 arguments"),
    ("round(x, 1.5)", "whole number of digits"),
    ("round(x, d)", "whole number of digits"),
    ("a & b", "'&'"),
    ("a | b", "'|'"),
    ("~a", "'~'"),
    ("a ^ b", "'\\^'"),
    ("a << 2", "'<<'"),
    ("a @ b", "'@'"),
    ("a is b", "'is'"),
    ("a is not None", "'is not'"),
    ("a == None", "comparing with None"),
    ("x in y", "'in' must be followed by a list"),
    ("x in [y]", "not a constant"),
    ("x in [None]", "None in an 'in"),
    ("a < b in [1]", "chained comparison"),
    ("__builtins__", "name '__builtins__'"),
    ("x.__class__.__bases__[0].__subclasses__()", "not allowed"),
    ("1j", "complex"),
    ("b'x'", "bytes"),
    ("...", "ellipsis"),
    ("await x", "not a valid expression|await"),
    ("yield x", "not a valid expression|yield"),
    ("import os", "not a valid expression"),
    ("x = 1", "not a valid expression"),
    ("1 +", "not a valid expression"),
    ("", "empty"),
    ("   ", "empty"),
    ("a\0b", "not a valid expression"),
]


@pytest.mark.parametrize(("expr", "message"), FORBIDDEN, ids=[e or "empty" for e, _ in FORBIDDEN])
def test_forbidden_constructs_raise_config_error(expr: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_expression("feat", expr)
    assert info.value.message.startswith("features.derived.feat: ")
    assert "\n" not in info.value.message
    assert info.value.hint


def test_evaluate_never_runs_forbidden_code(df: pd.DataFrame, tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    with pytest.raises(ConfigError):
        evaluate(f"__import__('pathlib').Path('{target}').touch()", df)
    with pytest.raises(ConfigError):
        evaluate(f"open('{target}', 'w')", df)
    assert not target.exists()


def test_module_never_calls_eval_exec_or_compile() -> None:
    source = Path(expressions.__file__).read_text()
    calls = {
        node.func.id
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert not calls & {"eval", "exec", "compile", "__import__", "getattr"}


def test_too_long_or_too_deep() -> None:
    with pytest.raises(ConfigError, match="longer than"):
        parse_expression("f", "a + " * 600 + "a")
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_expression("f", "a + " * 100 + "a")
    with pytest.raises(ConfigError):
        parse_expression("f", "(" * 300 + "a" + ")" * 300)


def test_unknown_column_names_it_and_lists_known_ones(df: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match="unknown column 'incme'") as info:
        evaluate("incme / household_size", df, name="ratio")
    assert info.value.message.startswith("features.derived.ratio: ")
    assert "did you mean 'income'?" in (info.value.hint or "")
    assert "household_size" in (info.value.hint or "")


def test_type_errors_name_the_column(df: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match="'b' is text, but '\\+' needs numbers"):
        evaluate("b + 1", df, "f")
    with pytest.raises(ConfigError, match="cannot compare text"):
        evaluate("b > 3", df, "f")
    with pytest.raises(ConfigError, match="the 'in' list holds numbers"):
        evaluate("b in [1, 2]", df, "f")
    with pytest.raises(ConfigError, match="the 'in' list holds text"):
        evaluate("a in ['1']", df, "f")
    with pytest.raises(ConfigError, match="lower\\(\\) needs text"):
        evaluate("lower(a)", df, "f")
    with pytest.raises(ConfigError, match="'and' needs conditions"):
        evaluate("b and a", df, "f")
    with pytest.raises(ConfigError, match="not a date"):
        evaluate("signup > 'soon'", df, "f")


def test_referenced_columns_excludes_function_names() -> None:
    assert referenced_columns("log(log) + where(a > b, c, 1) + lower(d) == 'x'") == {
        "log",
        "a",
        "b",
        "c",
        "d",
    }
    assert referenced_columns("1 + 2") == set()
    with pytest.raises(ConfigError, match=r"^derived expression: attribute access"):
        referenced_columns("a.b")


def test_check_columns() -> None:
    assert check_columns("f", "a / b", ["a", "b", "c"]) == {"a", "b"}
    with pytest.raises(ConfigError, match=r"features\.derived\.f: unknown column 'z'"):
        check_columns("f", "a / z", ["a", "b"])
