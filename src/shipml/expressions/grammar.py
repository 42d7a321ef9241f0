"""The grammar of derived-feature expressions: what is allowed, parsing and checking."""

from __future__ import annotations

import ast
import difflib
import operator
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from shipml.errors import ConfigError

MAX_EXPRESSION_LENGTH = 2000
MAX_DEPTH = 60

# name -> (min args, max args)
FUNCTIONS: dict[str, tuple[int, int]] = {
    "log": (1, 1),
    "log1p": (1, 1),
    "exp": (1, 1),
    "sqrt": (1, 1),
    "abs": (1, 1),
    "round": (1, 2),
    "floor": (1, 1),
    "ceil": (1, 1),
    "clip": (3, 3),
    "where": (3, 3),
    "min": (2, 2),
    "max": (2, 2),
    "str_len": (1, 1),
    "lower": (1, 1),
    "is_missing": (1, 1),
}

_BINOPS: dict[type[ast.operator], tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Add: ("+", operator.add),
    ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul),
    ast.Div: ("/", operator.truediv),
    ast.FloorDiv: ("//", operator.floordiv),
    ast.Mod: ("%", operator.mod),
    ast.Pow: ("**", operator.pow),
}
_COMPARE: dict[type[ast.cmpop], tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Eq: ("==", operator.eq),
    ast.NotEq: ("!=", operator.ne),
    ast.Lt: ("<", operator.lt),
    ast.LtE: ("<=", operator.le),
    ast.Gt: (">", operator.gt),
    ast.GtE: (">=", operator.ge),
}
_FORBIDDEN_OPS: dict[type[ast.AST], str] = {
    ast.BitAnd: "'&' (use 'and')",
    ast.BitOr: "'|' (use 'or')",
    ast.BitXor: "'^'",
    ast.Invert: "'~' (use 'not')",
    ast.LShift: "'<<'",
    ast.RShift: "'>>'",
    ast.MatMult: "'@'",
    ast.Is: "'is' (use '==', or is_missing(x) to test for missing values)",
    ast.IsNot: "'is not' (use '!=', or is_missing(x) to test for missing values)",
}
_CONSTRUCTS: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access (a.b)",
    ast.Subscript: "indexing (a[b])",
    ast.Lambda: "lambda",
    ast.ListComp: "a list comprehension",
    ast.SetComp: "a set comprehension",
    ast.DictComp: "a dict comprehension",
    ast.GeneratorExp: "a generator expression",
    ast.JoinedStr: "an f-string",
    ast.FormattedValue: "an f-string",
    ast.IfExp: "'a if c else b' (use where(c, a, b))",
    ast.NamedExpr: "':=' assignment",
    ast.Dict: "a dict literal",
    ast.Starred: "'*' unpacking",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Slice: "a slice",
    ast.List: "a list outside 'in [...]'",
    ast.Tuple: "a tuple outside 'in (...)'",
    ast.Set: "a set outside 'in {...}'",
}
_ALLOWED_HINT = (
    "allowed: column names, numbers, 'text', + - * / // % **, == != < <= > >=, "
    "and / or / not, x in [...], and the functions " + ", ".join(FUNCTIONS)
)

Value = pd.Series | float | str | bool | None


def _label(name: str | None) -> str:
    return f"features.derived.{name}" if name else "derived expression"


def _shown(expr: str) -> str:
    one_line = " ".join(expr.split())
    return repr(one_line if len(one_line) <= 120 else one_line[:117] + "...")


def _fail(name: str | None, expr: str, problem: str, hint: str = _ALLOWED_HINT) -> ConfigError:
    return ConfigError(f"{_label(name)}: {problem} in {_shown(expr)}", hint)


def _depth(tree: ast.AST) -> int:
    deepest = 0
    stack: list[tuple[ast.AST, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _literal(node: ast.expr) -> Any:
    """The value of a constant (or a negated number) inside an ``in [...]`` list, else raise."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _literal(node.operand)
        if isinstance(inner, bool) or not isinstance(inner, int | float):
            raise ValueError("only numbers can be negated")
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.Constant) and type(node.value) in (bool, int, float, str):
        return float(node.value) if type(node.value) is int else node.value
    raise ValueError("not a constant")


def parse_expression(name: str, expr: str) -> ast.Expression:
    """Parse and validate one derived-feature expression; raise ConfigError naming the problem."""
    label = _label(name)
    if not isinstance(expr, str) or not expr.strip():
        raise ConfigError(f"{label}: the expression is empty", "write an expression like 'a / b'")
    if len(expr) > MAX_EXPRESSION_LENGTH:
        raise ConfigError(
            f"{label}: the expression is longer than {MAX_EXPRESSION_LENGTH} characters",
            "split it into several derived features that refer to each other",
        )
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as err:
        raise _fail(name, expr, f"not a valid expression ({err.msg})") from None
    except (ValueError, RecursionError, MemoryError):
        raise _fail(name, expr, "not a valid expression") from None
    if _depth(tree) > MAX_DEPTH:
        raise _fail(
            name, expr, "the expression is nested too deeply", "split it into several features"
        )
    _Checker(name, expr).visit(tree.body)
    return tree


class _Checker:
    """Walks a parsed expression and raises ConfigError on anything outside the whitelist."""

    def __init__(self, name: str | None, expr: str) -> None:
        self.name = name
        self.expr = expr

    def fail(self, problem: str, hint: str = _ALLOWED_HINT) -> ConfigError:
        return _fail(self.name, self.expr, problem, hint)

    def visit(self, node: ast.expr) -> None:
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BINOPS:
                raise self.fail(f"operator {_FORBIDDEN_OPS.get(type(node.op), '?')} is not allowed")
            self.visit(node.left)
            self.visit(node.right)
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.USub | ast.UAdd | ast.Not):
                raise self.fail(f"operator {_FORBIDDEN_OPS.get(type(node.op), '?')} is not allowed")
            self.visit(node.operand)
        elif isinstance(node, ast.BoolOp):
            for value in node.values:
                self.visit(value)
        elif isinstance(node, ast.Compare):
            if len(node.ops) > 1 and any(isinstance(o, ast.In | ast.NotIn) for o in node.ops):
                raise self.fail(
                    "'in' inside a chained comparison is not allowed",
                    "join the tests with 'and', e.g. (x in [1, 2]) and (x < y)",
                )
            self.visit(node.left)
            for op, right in zip(node.ops, node.comparators, strict=True):
                if isinstance(op, ast.In | ast.NotIn):
                    self.check_list(right)
                elif type(op) in _COMPARE:
                    self.visit(right)
                else:
                    raise self.fail(f"operator {_FORBIDDEN_OPS.get(type(op), '?')} is not allowed")
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) and o.value is None for o in operands):
                raise self.fail(
                    "comparing with None is not allowed",
                    "test for missing values with is_missing(x)",
                )
        elif isinstance(node, ast.Name):
            if node.id.startswith("__"):
                raise self.fail(f"name '{node.id}' is not allowed")
        elif isinstance(node, ast.Constant):
            self.check_constant(node)
        elif isinstance(node, ast.Call):
            self.check_call(node)
        else:
            what = _CONSTRUCTS.get(type(node), type(node).__name__)
            raise self.fail(f"{what} is not allowed")

    def check_constant(self, node: ast.Constant) -> None:
        if type(node.value) not in (bool, int, float, str, type(None)):
            kind = type(node.value).__name__
            raise self.fail(f"a constant of type {kind} ({node.value!r}) is not allowed")
        if type(node.value) is int:
            try:
                float(node.value)
            except OverflowError:
                raise self.fail("a number is too large") from None

    def check_list(self, node: ast.expr) -> None:
        """The right side of ``in``: a list, tuple or set of constants."""
        if not isinstance(node, ast.List | ast.Tuple | ast.Set):
            raise self.fail(
                "'in' must be followed by a list of constants",
                "write it like: x in ['a', 'b'] or x in [1, 2, 3]",
            )
        for element in node.elts:
            if isinstance(element, ast.Constant) and element.value is None:
                raise self.fail(
                    "None in an 'in [...]' list is not allowed",
                    "test for missing values with is_missing(x)",
                )
            try:
                _literal(element)
            except ValueError:
                raise self.fail(
                    f"{ast.unparse(element)!r} in an 'in [...]' list is not a constant",
                    "an 'in' list holds only numbers and 'text'",
                ) from None

    def check_call(self, node: ast.Call) -> None:
        if not isinstance(node.func, ast.Name):
            raise self.fail(f"calling {ast.unparse(node.func)!r} is not allowed")
        func = node.func.id
        if func not in FUNCTIONS:
            raise self.fail(f"unknown function '{func}'")
        if node.keywords:
            raise self.fail(f"keyword arguments to {func}() are not allowed", "pass them in order")
        low, high = FUNCTIONS[func]
        if not low <= len(node.args) <= high:
            wanted = str(low) if low == high else f"{low} or {high}"
            raise self.fail(
                f"{func}() takes {wanted} argument{'s' if high > 1 else ''}, got {len(node.args)}",
                "e.g. clip(x, 0, 100), where(x > 0, x, 0), round(x, 2), log(x + 1)",
            )
        for arg in node.args:
            self.visit(arg)
        if func == "round" and len(node.args) == 2:
            digits = node.args[1]
            if not (
                isinstance(digits, ast.Constant)
                and type(digits.value) is int
                and abs(digits.value) <= 15
            ):
                raise self.fail(
                    "round()'s second argument must be a whole number of digits",
                    "e.g. round(x, 2)",
                )


def _names(tree: ast.Expression) -> set[str]:
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in called}


def referenced_columns(expr: str, name: str | None = None) -> set[str]:
    """Column names an expression reads (function names excluded); validates the expression."""
    return _names(parse_expression(name or "", expr))


def _unknown_column(name: str | None, expr: str, column: str, known: Iterable[str]) -> ConfigError:
    known = sorted(str(k) for k in known)
    close = difflib.get_close_matches(column, known, n=1)
    shown = ", ".join(known[:25]) + (f" (and {len(known) - 25} more)" if len(known) > 25 else "")
    hint = (f"did you mean '{close[0]}'? " if close else "") + f"known columns: {shown or '(none)'}"
    return _fail(name, expr, f"unknown column '{column}'", hint)


def check_columns(name: str | None, expr: str, columns: Iterable[str]) -> set[str]:
    """Validate ``expr`` and that every column it reads is in ``columns``; return those columns."""
    known = {str(c) for c in columns}
    used = _names(parse_expression(name or "", expr))
    for column in sorted(used):
        if column not in known:
            raise _unknown_column(name, expr, column, known)
    return used
