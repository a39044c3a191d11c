"""The rows of the table: regfs's samples, the reference's, the target and whether it was
met; printed as a Markdown table (the README's Performance section) and as JSON."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Row:
    """One line of the table: regfs's samples against a reference, and the target."""

    case: str
    unit: str
    regfs: list[float]
    reference: str
    ref: list[float] = field(default_factory=list)
    goal: str = ""  # ">= 0.9 x", "<= 0.02 x", "<= 356 MiB", "" (information only)
    passed: bool | None = None
    ratio: float | None = None
    note: str = ""

    def judge(self, op: str, factor: float, *, absolute: bool = False, worst: bool = False) -> None:
        """op ">=" or "<="; against factor x the reference median, or `absolute`ly against factor."""
        value = (max(self.regfs) if op == "<=" else min(self.regfs)) if worst else med(self.regfs)
        if absolute:
            bound = factor
            self.goal = f"{op} {fmt(factor)} {self.unit}"
        else:
            bound = factor * med(self.ref)
            self.goal = f"{op} {factor:g} x"
        if self.ref and med(self.ref) > 0:
            self.ratio = med(self.regfs) / med(self.ref)
        self.passed = value >= bound if op == ">=" else value <= bound


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(value: float) -> str:
    if value != value:  # nan
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def spread(values: Sequence[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(med(values))} ({fmt(min(values))}..{fmt(max(values))})"


HEADER = (
    "case",
    "unit",
    "regfs median (min..max)",
    "reference",
    "reference median (min..max)",
    "ratio",
    "target",
    "result",
)


def table(rows: Sequence[Row]) -> str:
    lines = [list(HEADER)]
    for r in rows:
        result = "" if r.passed is None else ("PASS" if r.passed else "FAIL")
        lines.append(
            [
                r.case,
                r.unit,
                spread(r.regfs),
                r.reference,
                spread(r.ref),
                "-" if r.ratio is None else f"{r.ratio:.3g}",
                r.goal or "-",
                result,
            ]
        )
    out = ["| " + " | ".join(lines[0]) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines[1:]]
    return "\n".join(out)


def document(rows: Sequence[Row], **run: Any) -> dict[str, Any]:
    """The JSON form: what was run (`run`) and every row with its medians."""
    return run | {
        "rows": [
            asdict(r) | {"regfs_median": med(r.regfs), "ref_median": med(r.ref) if r.ref else None}
            for r in rows
        ]
    }
