"""Derived-feature expressions are user text from shipml.yaml: every attempt to reach Python
through them is refused as a config error, and nothing runs (a canary file is never written)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from shipml.errors import ConfigError, ShipmlError
from shipml.expressions import evaluate, parse_expression
from tests.chaos.figures import record

pytestmark = pytest.mark.chaos


def _attacks(canary: Path) -> list[str]:
    touch = f"open('{canary}', 'w').write('x')"
    return [
        f"__import__('os').system('touch {canary}')",
        "__import__('os')",
        "eval('1')",
        "exec('x = 1')",
        "compile('1', '', 'eval')",
        touch,
        f"__builtins__['open']('{canary}', 'w')",
        "globals()",
        "locals()",
        "vars()",
        "getattr(a, '__class__')",
        "a.__class__",
        "a.__class__.__mro__[-1].__subclasses__()",
        "().__class__.__bases__[0].__subclasses__()",
        "''.__class__.__mro__[1].__subclasses__()",
        "(lambda: 1)()",
        "[x for x in (1, 2)]",
        "{x: 1 for x in (1,)}",
        "(x for x in (1,))",
        "a if __import__('os') else b",
        "a.to_csv('/tmp/leak.csv')",
        "a.apply(print)",
        "a.values",
        "a[0]",
        "a[:]",
        "f'{a}'",
        "(a := 1)",
        "await a",
        "yield a",
        "a; b",
        "import os",
        "a = 1",
        "del a",
        "print(a)",
        "type(a)",
        "'x' * 10 ** 10",
        "(" * 500 + "a" + ")" * 500,
        " + ".join(["a"] * 5000),
        "a\x00 + b",
    ]


def test_expression_injection_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    df = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})
    attacks = _attacks(canary)
    not_refused = []
    for i, text in enumerate(attacks):
        try:
            parse_expression(f"f{i}", text)
            evaluate(text, df, f"f{i}")
        except ConfigError as err:
            assert err.hint, text
            assert "\n" not in err.message, text
        except ShipmlError:
            pass  # refused with another clear error (a data error for a result it cannot use)
        else:
            not_refused.append(text)
    record("expression injection through features.derived", "attempts", len(attacks))
    assert not canary.exists()
    assert not Path("/tmp/leak.csv").exists()
    assert not_refused == []
