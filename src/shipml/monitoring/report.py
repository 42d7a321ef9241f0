"""The drift report: one self-contained HTML file with a reference-vs-current plot per column."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from shipml.evaluation.plots import new_figure
from shipml.evaluation.report import FigureSection, draw, fmt_num, template, write_report
from shipml.monitoring.drift import ColumnDrift
from shipml.monitoring.service import MonitorResult
from shipml.monitoring.summary import CategoricalSummary, NumericSummary, Summary

MAX_BARS = 15
_HUGE = 1e100  # past this magnitude an axis is drawn in units of a power of ten
_REFERENCE = "#8c959f"
_CURRENT = "#0969da"


def _axis_unit(low: float, high: float) -> float:
    """1 for ordinary values; a power of ten for values so large that the axis would overflow
    (a range across ±1.7e308 is inf): the axis then reads in units of it."""
    largest = max(abs(low), abs(high))
    return 1.0 if largest < _HUGE else 10.0 ** math.floor(math.log10(largest))


def _numeric_figure(name: str, ref: NumericSummary, cur: NumericSummary) -> Figure:
    low = float(min(ref.quantiles(np.array([0.005]))[0], cur.quantiles(np.array([0.005]))[0]))
    high = float(max(ref.quantiles(np.array([0.995]))[0], cur.quantiles(np.array([0.995]))[0]))
    unit = _axis_unit(low, high)
    low, high = low / unit, high / unit
    if not high > low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, 41)
    fig, ax = new_figure((6.0, 3.2))
    for summary, label, color in ((ref, "reference", _REFERENCE), (cur, "current", _CURRENT)):
        inside = np.clip(summary.values / unit, low, high)  # the outer 0.5% in the end bins
        shares = np.histogram(inside, edges, weights=summary.counts)[0] / max(summary.n, 1)
        ax.stairs(shares, edges, label=label, color=color, fill=label == "reference", alpha=0.6)
    ax.set_xlabel(name if unit == 1.0 else f"{name} (in units of {unit:.0e})")
    ax.set_ylabel("share of rows")
    ax.legend(frameon=False)
    return fig


def _categorical_figure(name: str, ref: CategoricalSummary, cur: CategoricalSummary) -> Figure:
    keys = sorted(set(ref.counts) | set(cur.counts), key=lambda k: -(ref.counts.get(k, 0)))
    shown = keys[:MAX_BARS]
    position = np.arange(len(shown))
    fig, ax = new_figure((6.0, 0.9 + 0.28 * len(shown)))
    width = 0.4
    for offset, summary, label, color in (
        (-width / 2, ref, "reference", _REFERENCE),
        (width / 2, cur, "current", _CURRENT),
    ):
        ax.barh(position + offset, summary.frequencies(shown), width, label=label, color=color)
    ax.set_yticks(position, [k if len(k) <= 25 else k[:24] + "…" for k in shown])
    ax.invert_yaxis()
    ax.set_xlabel("share of rows")
    ax.set_ylabel(name if len(keys) <= MAX_BARS else f"{name} (top {MAX_BARS} of {len(keys)})")
    ax.legend(frameon=False)
    return fig


def _figure(name: str, ref: Summary, cur: Summary) -> Figure:
    if isinstance(ref, NumericSummary) and isinstance(cur, NumericSummary):
        return _numeric_figure(name, ref, cur)
    assert isinstance(ref, CategoricalSummary) and isinstance(cur, CategoricalSummary)
    return _categorical_figure(name, ref, cur)


def _row(c: ColumnDrift) -> dict[str, Any]:
    return {
        "column": c.column,
        "kind": c.kind,
        "method": c.method_name,
        "score": f"{c.score:.3g}",
        "threshold": f"{c.threshold:g}",
        "drift": c.drift,
        "psi": fmt_num(c.psi),
        "missing": f"{100 * c.missing_reference:.1f}% → {100 * c.missing_current:.1f}%",
    }


def _section(anchor: str, c: ColumnDrift, ref: Summary | None, cur: Summary | None) -> Any:
    verdict = "drift" if c.drift else "no drift"
    caption = f"{c.method_name} {c.score:.3g} (threshold {c.threshold:g}): {verdict}."
    if ref is None or cur is None:
        return FigureSection(anchor, c.column, error="no summary to draw")
    return draw(anchor, c.column, lambda: _figure(c.column, ref, cur), caption)


def build_monitor_report(result: MonitorResult, project: str) -> str:
    from shipml import __version__

    ref, cur = result.reference_profile, result.current_profile
    sections = []
    for i, c in enumerate(result.drift.columns.values()):
        sections.append(
            _section(
                f"col-{i}",
                c,
                ref.columns.get(c.column) if ref else None,
                cur.columns.get(c.column) if cur else None,
            )
        )
    outputs = []
    for attr in ("prediction", "target"):
        drift = getattr(result.drift, attr)
        if drift is not None:
            outputs.append(
                _section(
                    attr,
                    drift,
                    getattr(ref, attr, None),
                    getattr(cur, attr, None),
                )
            )
    confidence = None
    if ref is not None and cur is not None and ref.confidence and cur.confidence:
        r_conf, c_conf = ref.confidence, cur.confidence
        confidence = draw(
            "confidence",
            "Confidence",
            lambda: _numeric_figure("probability of the predicted class", r_conf, c_conf),
            f"Mean confidence {r_conf.mean:.3f} at test time, {c_conf.mean:.3f} now.",
        )
    drift = result.drift
    return template("monitor.html.j2").render(
        project=project,
        created=result.created,
        source=result.source,
        reference=result.reference,
        drift=drift,
        rows=[_row(c) for c in drift.columns.values()],
        findings=[f.to_dict() for f in drift.findings],
        sections=sections,
        outputs=outputs,
        output_rows=[_row(c) for c in (drift.prediction, drift.target) if c is not None],
        confidence=confidence,
        performance=result.performance,
        fmt=fmt_num,
        shipml_version=__version__,
    )


def write_monitor_report(result: MonitorResult, path: Path, project: str) -> Path:
    return write_report(build_monitor_report(result, project), path)
