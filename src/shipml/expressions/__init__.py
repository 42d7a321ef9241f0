"""Safe evaluation of derived-feature expressions from config (``features.derived``).

User text is parsed with ``ast.parse(..., mode="eval")`` and walked against a whitelist of node
types; it is never passed to ``eval``, ``exec`` or ``compile``. Column names resolve to columns of a
DataFrame and every operation is elementwise (pandas/numpy).

Missing values propagate: arithmetic on a missing value gives NaN, and a comparison or a logical
test on a missing value gives a missing result (``pd.NA`` in a nullable ``boolean`` Series; ``and``
/ ``or`` follow three-valued logic, so ``False and <missing>`` is ``False``). Use
``is_missing(x)`` to test for missing values. Division by zero gives ``inf``/NaN like numpy.
"""

from shipml.expressions.evaluator import evaluate, evaluate_numeric
from shipml.expressions.grammar import (
    FUNCTIONS,
    check_columns,
    parse_expression,
    referenced_columns,
)

__all__ = [
    "FUNCTIONS",
    "check_columns",
    "evaluate",
    "evaluate_numeric",
    "parse_expression",
    "referenced_columns",
]
