"""A small harness for side-by-side benchmarks on a noisy machine.

Named cases run interleaved over `repeats` rounds (A, B, C, A, B, C, ...), so that a change in
the machine's load during the run hits every case alike. Each run of a case returns its figures
(name -> number); the report gives median (min-max) per figure and ratios between cases. A ratio
is computed round by round (A's round-r figure over B's round-r figure) and then summarised, which
cancels drift better than a ratio of medians.

Plain dataclasses; `Report.write` produces `<name>-<YYYY-MM-DD>.json` and `.md`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fnmatch
import json
import math
import os
import statistics
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

Figures = Mapping[str, float]


@dataclasses.dataclass
class Case:
    """One thing to measure. `run` returns its figures; it is called once per round."""

    name: str
    run: Callable[[], Figures] | None = None
    group: str = "results"
    """Cases of a group share one table in the report."""
    not_applicable: str | None = None
    """Why the case cannot run; it is listed in the report and never run."""
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    """What the case measures (configuration), copied into the JSON."""


@dataclasses.dataclass
class Stat:
    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        vals = list(values)
        if not vals:
            raise ValueError("no values to summarise")
        return cls(statistics.median(vals), min(vals), max(vals), len(vals))


@dataclasses.dataclass
class Sample:
    round: int
    figures: dict[str, float]
    seconds: float
    """Wall time of this run of the case."""
    load_before: float
    """One-minute load average when the run started (noise indicator)."""


@dataclasses.dataclass
class CaseResult:
    name: str
    group: str
    params: dict[str, Any]
    status: str = "ok"
    """`ok`, `n/a` (never run) or `error` (at least one round failed)."""
    reason: str | None = None
    samples: list[Sample] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)

    def values(self, figure: str) -> list[float]:
        return [s.figures[figure] for s in self.samples if figure in s.figures]

    def figure_names(self) -> list[str]:
        names: dict[str, None] = {}
        for s in self.samples:
            names.update(dict.fromkeys(s.figures))
        return list(names)

    def summary(self) -> dict[str, Stat]:
        return {f: Stat.of(self.values(f)) for f in self.figure_names()}

    def by_round(self, figure: str) -> dict[int, float]:
        return {s.round: s.figures[figure] for s in self.samples if figure in s.figures}


@dataclasses.dataclass
class Ratio:
    """numerator case's figure / denominator case's figure, paired by round."""

    label: str
    numerator: str
    denominator: str
    figure: str
    denominator_figure: str
    stat: Stat | None = None
    reason: str | None = None
    """Why there is no value (a case missing, not applicable or failed)."""


def select(cases: list[Case], patterns: Iterable[str] | None) -> list[Case]:
    """The cases whose names match any of the shell-style `patterns` (all cases for None).

    A pattern that matches nothing is an error naming the cases there are, so a typo never
    silently runs an empty benchmark."""
    if patterns is None:
        return list(cases)
    patterns = list(patterns)
    names = [c.name for c in cases]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            raise ValueError(f"no case matches {pattern!r}; the cases are: {', '.join(names)}")
    return [c for c in cases if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]


def run_interleaved(
    cases: list[Case], repeats: int, log: Callable[[str], None] = print
) -> list[CaseResult]:
    """Run every applicable case once per round, in the given order, `repeats` rounds."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise ValueError(f"case names must be unique: {names}")
    results = {
        c.name: CaseResult(
            c.name,
            c.group,
            dict(c.params),
            status="n/a" if c.not_applicable else "ok",
            reason=c.not_applicable,
        )
        for c in cases
    }
    runnable = [c for c in cases if not c.not_applicable]
    for r in range(repeats):
        for i, case in enumerate(runnable):
            if case.run is None:
                raise ValueError(f"case {case.name!r} has neither run nor not_applicable")
            log(f"[round {r + 1}/{repeats}, case {i + 1}/{len(runnable)}] {case.name}")
            load = os.getloadavg()[0]
            start = time.perf_counter()
            try:
                figures = {k: float(v) for k, v in case.run().items()}
            except Exception as err:  # record and go on: one failure must not lose the rest
                traceback.print_exc()
                res = results[case.name]
                res.status = "error"
                res.errors.append(f"round {r}: {type(err).__name__}: {err}")
                continue
            seconds = time.perf_counter() - start
            results[case.name].samples.append(Sample(r, figures, seconds, load))
            shown = ", ".join(f"{k} {fmt(v)}" for k, v in figures.items())
            log(f"  {case.name}: {shown} ({seconds:.1f}s)")
    return [results[c.name] for c in cases]


def ratio(
    results: list[CaseResult],
    label: str,
    numerator: str,
    denominator: str,
    figure: str,
    denominator_figure: str | None = None,
) -> Ratio:
    """`numerator`/`denominator` for `figure`, one value per round in which both ran."""
    den_fig = denominator_figure or figure
    out = Ratio(label, numerator, denominator, figure, den_fig)
    by_name = {r.name: r for r in results}
    for name in (numerator, denominator):
        res = by_name.get(name)
        if res is None:
            out.reason = f"{name} did not run"
            return out
        if res.status == "n/a":
            out.reason = f"{name} is not applicable"
            return out
    num = by_name[numerator].by_round(figure)
    den = by_name[denominator].by_round(den_fig)
    values = [num[r] / den[r] for r in sorted(num.keys() & den.keys()) if den[r]]
    if values:
        out.stat = Stat.of(values)
    else:
        out.reason = "no round in which both cases produced the figure"
    return out


def fmt(x: float) -> str:
    """A number with about three significant digits, no exponent for everyday magnitudes."""
    if not math.isfinite(x):
        return str(x)
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    if a >= 0.001 or a == 0:
        return f"{x:.3g}"
    return f"{x:.2e}"


def _cell(stat: Stat) -> str:
    if stat.n == 1 or fmt(stat.min) == fmt(stat.max):
        return fmt(stat.median)
    return f"{fmt(stat.median)} ({fmt(stat.min)}-{fmt(stat.max)})"


@dataclasses.dataclass
class Report:
    name: str
    repeats: int
    cases: list[CaseResult]
    ratios: list[Ratio] = dataclasses.field(default_factory=list)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    """Column headers for figure names."""
    columns: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """Figures shown per group (default: all, in order of appearance); the JSON keeps all."""
    title: str | None = None
    date: str = dataclasses.field(default_factory=lambda: _dt.date.today().isoformat())

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "date": self.date,
            "repeats": self.repeats,
            "meta": self.meta,
            "cases": [
                {
                    "name": c.name,
                    "group": c.group,
                    "status": c.status,
                    "reason": c.reason,
                    "params": c.params,
                    "summary": {k: dataclasses.asdict(v) for k, v in c.summary().items()},
                    "samples": [dataclasses.asdict(s) for s in c.samples],
                    "errors": c.errors,
                }
                for c in self.cases
            ],
            "ratios": [
                {
                    **{k: v for k, v in dataclasses.asdict(r).items() if k != "stat"},
                    "stat": dataclasses.asdict(r.stat) if r.stat else None,
                }
                for r in self.ratios
            ],
            "notes": self.notes,
        }

    def tables(self) -> str:
        """One Markdown table per group: medians with min-max over rounds."""
        groups: dict[str, list[CaseResult]] = {}
        for c in self.cases:
            groups.setdefault(c.group, []).append(c)
        parts = []
        for group, cases in groups.items():
            figures = self.columns.get(group)
            if figures is None:
                seen: dict[str, None] = {}
                for c in cases:
                    seen.update(dict.fromkeys(c.figure_names()))
                figures = list(seen)
            header = ["case", *(self.labels.get(f, f) for f in figures)]
            lines = [f"### {group}", "", _row(header), _row(["---"] * len(header))]
            for c in cases:
                if c.status == "n/a":
                    lines.append(_row([c.name, f"n/a: {c.reason}", *[""] * (len(figures) - 1)]))
                    continue
                summary = c.summary()
                cells = [_cell(summary[f]) if f in summary else "" for f in figures]
                if not summary:
                    cells = [f"error: {'; '.join(c.errors)}", *[""] * (len(figures) - 1)]
                lines.append(_row([c.name, *cells]))
            parts.append("\n".join(lines))
        return "\n\n".join(parts)

    def ratio_lines(self) -> str:
        lines = []
        for r in self.ratios:
            if r.stat is None:
                lines.append(f"- {r.label}: n/a ({r.reason})")
            else:
                spread = "" if r.stat.n == 1 else f" ({fmt(r.stat.min)}-{fmt(r.stat.max)})"
                lines.append(f"- {r.label}: **{r.stat.median:.3f}**{spread}")
        return "\n".join(lines)

    def markdown(self) -> str:
        rounds = f"{self.repeats} round{'s' if self.repeats != 1 else ''}, cases interleaved"
        out = [
            f"# {self.title or self.name} ({self.date})",
            "",
            f"Median over {rounds}; (min-max) when rounds differ.",
            "",
            self.tables(),
        ]
        if self.ratios:
            out += ["", "### ratios (per round, then median)", "", self.ratio_lines()]
        if self.notes:
            out += ["", "### notes", "", *(f"- {n}" for n in self.notes)]
        return "\n".join(out) + "\n"

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{self.name}-{self.date}"
        json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
        json_path.write_text(json.dumps(self.to_json(), indent=2, default=str) + "\n")
        md_path.write_text(self.markdown())
        return json_path, md_path


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"
