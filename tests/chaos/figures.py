"""The chaos suite's figures: what each attack sent and what held, one JSON line per figure.

Every chaos test records what it did (requests answered under load, faults injected, bad inputs
tried, records lost) with ``record``; the pytest run prints them as one table at the end
(``tests/conftest.py``); ``make chaos`` keeps them in ``.chaos/figures.jsonl`` and prints the
table for the docs (``docs/robustness.md``) with ``python -m tests.chaos.figures FILE``.
Workers of pytest-xdist append to the same file: one short ``write`` per line in append mode,
so lines never interleave.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path

FIGURES_ENV = "SHIPML_CHAOS_FIGURES"
FOLDER = Path(__file__).resolve().parents[2] / ".chaos"


def figures_file(run: int | None = None) -> Path:
    """The file named by $SHIPML_CHAOS_FIGURES, else run ``run``'s own under .chaos/."""
    given = os.environ.get(FIGURES_ENV)
    if given:
        return Path(given)
    return FOLDER / f"figures-{run if run is not None else os.getpid()}.jsonl"


def record(attack: str, what: str, number: float, held: bool = True) -> None:
    """One figure of one attack: e.g. ``record("swaps under load, 2 workers", "requests", 9120)``.
    ``held`` is False where the attack found a failure (the test then fails too)."""
    path = figures_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"attack": attack, "what": what, "number": number, "held": held}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def table(path: Path | None = None) -> str:
    """The recorded figures as a Markdown table, one row per attack, in the order first seen."""
    path = path or figures_file()
    if not path.is_file():
        return ""
    rows: dict[str, dict[str, float]] = defaultdict(dict)
    held: dict[str, bool] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        numbers = rows[item["attack"]]
        numbers[item["what"]] = numbers.get(item["what"], 0) + item["number"]
        held[item["attack"]] = held.get(item["attack"], True) and bool(item["held"])
    if not rows:
        return ""
    out = ["| attack | what was tried | held |", "|---|---|---|"]
    for attack, numbers in rows.items():
        tried = ", ".join(f"{_number(v)} {what}" for what, v in numbers.items())
        out.append(f"| {attack} | {tried} | {'yes' if held[attack] else '**no**'} |")
    return "\n".join(out)


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.2f}"


if __name__ == "__main__":
    print(table(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
