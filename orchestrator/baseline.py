"""The baseline gate: compare a finished run with saved ones, per size, and tell a regression
from noise (``netorch bench --baseline PATH``, ``netorch train --baseline PATH``).

A baseline is one or more saved reports: a ``report.json`` (or its run folder), a sweep's folder
or ``sweep.json`` (the repeats of the variant the compared run matches: its MTU, env, backend,
ranks per node, bench settings), or several ``--baseline`` paths whose reports are taken as
repeats. Per figure (bench: busbw of each op, dtype, in/out-of-place
and size; train: samples/s), the baseline's values give a median and their own spread::

    spread  = (max - min) / median                      0 for a single saved run
    allowed = max(spread, AUTO_FLOOR)                   --tolerance auto, two or more saved runs
    allowed = AUTO_FLOOR_ONE_RUN                        --tolerance auto, one saved run
    allowed = PCT / 100                                 --tolerance PCT
    regressed  <=>  current < median * (1 - allowed)

So a baseline of several repeats tolerates what its own repeats showed (at least
:data:`AUTO_FLOOR`), and a single saved run, which shows no spread to learn from, tolerates
:data:`AUTO_FLOOR_ONE_RUN`: on a shared 2-core machine one run's busbw at 1-4 MiB moved by up to
70% between two identical runs (one of them beside another benchmark), so a one-run baseline
catches gross regressions (a slower link, a lost jumbo MTU on a fast path, a bad setting) and
repeats tighten it. Faster is never a regression.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from orchestrator.errors import ConfigError, RegressionError
from orchestrator.report import format_size, row_key, saved_report_problem

AUTO_FLOOR = 0.2
"""Smallest drop ``--tolerance auto`` calls a regression against several saved runs: 20% of
their median."""
AUTO_FLOOR_ONE_RUN = 0.5
"""The drop ``--tolerance auto`` allows against one saved run (no spread to learn from)."""


@dataclass(frozen=True)
class Baseline:
    """The saved reports a run is compared with, as repeats of one configuration.

    ``variants`` holds, per report, the sweep variant it ran (None outside a sweep): a sweep of
    several variants is narrowed to the one the compared run matches (:meth:`matching`)."""

    sources: tuple[str, ...]
    reports: tuple[dict[str, Any], ...]
    variants: tuple[dict[str, Any] | None, ...] = ()

    def matching(self, current: dict[str, Any]) -> Baseline:
        """The reports of the sweep variant ``current`` ran (all of them when there is at most
        one variant); ConfigError naming the variants when it matches none."""
        variants = self.variants or (None,) * len(self.reports)
        labels = sorted({_variant_text(v) for v in variants if v is not None})
        if len(labels) <= 1:
            return self
        keep = [(r, v) for r, v in zip(self.reports, variants)
                if v is None or all(_matches(current, k, x) for k, x in v.items())]
        if not keep:
            raise ConfigError(
                f"--baseline: this run matches none of the configurations of "
                f"{', '.join(self.sources)} ({'; '.join(labels)}); run with one of them, or pass "
                "the report.json of the runs to compare with")
        return Baseline(self.sources, tuple(r for r, _ in keep), tuple(v for _, v in keep))

    @property
    def kind(self) -> str:
        return str(self.reports[0].get("kind", "bench"))

    @property
    def run_ids(self) -> tuple[str, ...]:
        return tuple(str(r.get("run_id")) for r in self.reports)


@dataclass(frozen=True)
class Delta:
    """One figure of the run against the baseline's values of it."""

    label: str
    size_bytes: int | None
    baseline: tuple[float, ...]
    current: float
    allowed: float  # relative drop below the median that is still noise

    @property
    def median(self) -> float:
        return statistics.median(self.baseline)

    @property
    def change(self) -> float:
        """Relative change of the current value against the baseline's median."""
        return self.current / self.median - 1 if self.median > 0 else 0.0

    @property
    def regressed(self) -> bool:
        return self.current < self.median * (1 - self.allowed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "size_bytes": self.size_bytes,
            "baseline": list(self.baseline), "baseline_median": self.median,
            "current": self.current, "change": self.change, "allowed_drop": self.allowed,
            "regressed": self.regressed,
        }


def parse_tolerance(text: str) -> float | None:
    """``auto`` -> None; ``10`` or ``10%`` -> 0.10. ConfigError naming the flag otherwise."""
    value = text.strip().lower()
    if value == "auto":
        return None
    try:
        pct = float(value.removesuffix("%"))
    except ValueError:
        pct = -1.0
    if not 0 < pct < 100:
        raise ConfigError(f"--tolerance: {text!r} is neither auto nor a percentage between 0 and "
                          "100; write e.g. --tolerance 10 (a 10% drop is allowed) or auto")
    return pct / 100


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"--baseline: cannot read {path} ({e.strerror or e}); pass a saved "
                          "report.json, a run folder or a sweep folder") from None
    except ValueError as e:
        raise ConfigError(f"--baseline: {path} is not JSON ({e}); pass a saved report.json") \
            from None
    if not isinstance(data, dict):
        raise ConfigError(f"--baseline: {path} holds no report object; pass a saved report.json")
    return data


def _variant_text(variant: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in variant.items())


def _fact(report: dict[str, Any], key: str) -> Any:
    """What a report says about the settings ``key`` a sweep varied (None: it does not say)."""
    section, _, name = key.partition(".")
    ranks = report.get("ranks") or [{}]
    facts: dict[str, Any] = {
        "network.mtu": (report.get("network") or {}).get("mtu"),
        "cluster.dist_backend": report.get("dist_backend"),
        "cluster.procs_per_node": report.get("nproc_per_node"),
        "cluster.nodes": report.get("nnodes"),
    }
    if key in facts:
        return facts[key]
    if section == "env":
        return (ranks[0].get("env") or {}).get(name)
    if section == "bench":
        return (report.get("settings") or {}).get(name)
    return None


def _matches(report: dict[str, Any], key: str, value: Any) -> bool:
    """Whether ``report`` ran with ``key`` = ``value`` (a sweep variant's setting). A link field
    is read from the report's ``network.link`` (absent: not shaped, which a variant writes as
    None or ``none``)."""
    if key.startswith("network.link."):
        link = (report.get("network") or {}).get("link") or {}
        fact = link.get(key.removeprefix("network.link."))
        if value is None or str(value).lower() == "none":
            return fact is None
        return fact is not None and str(fact).lower() == str(value).lower()
    return _same(_fact(report, key), value)


def _same(fact: Any, value: Any) -> bool:
    """Whether a report's ``fact`` is the variant's ``value`` (texts from the command line:
    ``9000`` and 9000, ``false``/``0`` and False are the same)."""
    if fact is None:
        return False
    if isinstance(fact, bool):
        return str(value).strip().lower() in (("true", "1", "yes", "on") if fact else
                                               ("false", "0", "no", "off"))
    return str(fact) == str(value)


def _reports_at(path: Path) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """The reports one ``--baseline`` path stands for, each with its sweep variant."""
    if path.is_dir():
        for name in ("report.json", "sweep.json"):
            if (path / name).is_file():
                return _reports_at(path / name)
        raise ConfigError(f"--baseline: {path} holds neither report.json nor sweep.json; pass a "
                          "run folder (OUTPUT/<run_id>) or a sweep folder (OUTPUT/sweep-<id>)")
    if not path.exists():
        raise ConfigError(f"--baseline: {path} does not exist; pass a saved report.json, a run "
                          "folder or a sweep folder")
    data = _read_json(path)
    if "runs" in data and "sweep_id" in data:
        return _sweep_reports(path, data)
    if "results" not in data and "samples_per_s" not in data:
        raise ConfigError(f"--baseline: {path} is no bench or train report (no results, no "
                          "samples_per_s); pass a report.json that netorch bench or train wrote")
    _check_saved(path, data)
    return [(data, None)]


def _check_saved(path: Path, data: dict[str, Any]) -> None:
    problem = saved_report_problem(data)
    if problem is not None:
        raise ConfigError(f"--baseline: {path} is no netorch report ({problem}); pass a "
                          "report.json that netorch bench or train wrote")


def _sweep_reports(path: Path, sweep: dict[str, Any]
                   ) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """A sweep's runs with their variants (sweeps from before ``--vary``: MTU and link)."""
    out: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
    runs = sweep["runs"]
    if not isinstance(runs, list) or not all(isinstance(r, dict) and "run_id" in r
                                             for r in runs):
        raise ConfigError(f"--baseline: {path} is no netorch sweep (runs without run_id); pass "
                          "the sweep.json that netorch sweep wrote")
    for run in runs:
        saved = path.parent / str(run["run_id"]) / "report.json"
        report = _read_json(saved) if saved.is_file() else {
            "kind": "bench", "run_id": run["run_id"], "results": run.get("results", [])}
        _check_saved(saved, report)
        variant = run.get("variant") or {"network.link.rate": run.get("link_rate"),
                                         "network.mtu": run.get("mtu")}
        out.append((report, variant))
    return out


def load_baseline(paths: Sequence[Path]) -> Baseline:
    """Read every ``--baseline`` path; ConfigError (exit 2, before anything runs) when one is
    missing, unreadable or not a report, or when they mix bench and train reports."""
    found = [item for p in paths for item in _reports_at(p)]
    kinds = {str(r.get("kind", "bench")) for r, _ in found}
    if len(kinds) > 1:
        raise ConfigError(f"--baseline: the paths mix {' and '.join(sorted(kinds))} reports; "
                          "compare with reports of one kind")
    return Baseline(tuple(str(p) for p in paths), tuple(r for r, _ in found),
                    tuple(v for _, v in found))


def _allowed(values: Sequence[float], tolerance: float | None) -> float:
    if tolerance is not None:
        return tolerance
    if len(values) < 2:
        return AUTO_FLOOR_ONE_RUN
    median = statistics.median(values)
    spread = (max(values) - min(values)) / median if median > 0 else 0.0
    return max(spread, AUTO_FLOOR)


def compare(current: dict[str, Any], baseline: Baseline, tolerance: float | None) -> list[Delta]:
    """One :class:`Delta` per figure the run and the baseline share (bench rows or samples/s).

    ConfigError when they share none: the run measured something else than the baseline."""
    kind = str(current.get("kind", "bench"))
    baseline = baseline.matching(current)
    if kind != baseline.kind:
        raise ConfigError(f"--baseline: {', '.join(baseline.sources)} holds {baseline.kind} "
                          f"reports, this run is {kind}; compare like with like")
    deltas: list[Delta] = []
    if kind == "train":
        values = [float(r["samples_per_s"]) for r in baseline.reports
                  if r.get("samples_per_s") is not None]
        if values and current.get("samples_per_s") is not None:
            deltas.append(Delta("samples/s", None, tuple(values), float(current["samples_per_s"]),
                                _allowed(values, tolerance)))
    else:
        saved: dict[tuple[str, int], list[float]] = {}
        for report in baseline.reports:
            for row in report.get("results", []):
                key = row_key(row)
                saved.setdefault(key, []).append(float(row["busbw_gbps"]))
        for row in current.get("results", []):
            key = row_key(row)
            if key in saved:
                deltas.append(Delta(key[0], key[1], tuple(saved[key]), float(row["busbw_gbps"]),
                                    _allowed(saved[key], tolerance)))
    if not deltas:
        raise ConfigError(
            f"--baseline: {', '.join(baseline.sources)} has no figure in common with this run "
            "(other ops, dtypes or sizes); run with the baseline's settings")
    return deltas


def best_of(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The first report with each figure replaced by its best over ``reports`` (the run and its
    confirmation runs): busbw per (op, dtype, side, size), samples/s. A regression then has to
    show in every one of them, so one run slowed by a passing load spike is no alarm."""
    first = dict(reports[0])
    if first.get("samples_per_s") is not None:
        values = [float(r["samples_per_s"]) for r in reports if r.get("samples_per_s") is not None]
        first["samples_per_s"] = max(values)
    best: dict[tuple[str, int], float] = {}
    for report in reports:
        for row in report.get("results", []):
            key = row_key(row)
            best[key] = max(best.get(key, 0.0), float(row["busbw_gbps"]))
    first["results"] = [{**row, "busbw_gbps": best[row_key(row)]}
                        for row in first.get("results", [])]
    return first


def gate(deltas: Sequence[Delta], baseline: Baseline) -> None:
    """RegressionError (exit 5) naming every regressed figure; nothing when all are noise."""
    bad = [d for d in deltas if d.regressed]
    if not bad:
        return
    items = "; ".join(
        f"{d.label}{'' if d.size_bytes is None else ' at ' + format_size(d.size_bytes)} "
        f"{d.change:+.0%} (allowed -{d.allowed:.0%})" for d in bad)
    raise RegressionError(f"regression against {', '.join(baseline.sources)}: {items}")


def delta_table(deltas: Sequence[Delta], baseline: Baseline, unit: str,
                width: int = 120) -> Table:
    """The comparison: baseline median (min..max, n), this run, change, allowance, verdict;
    fitted to ``width`` (the least important columns go first, see orchestrator/tables.py)."""
    from orchestrator.tables import Column, fit_table

    columns = [Column("figure", priority=3), Column("size", "right", 3),
               Column("baseline", "right", 2), Column("min..max", "right"),
               Column("n", "right"), Column("this run", "right", 3),
               Column("change", "right", 3), Column("allowed", "right", 1),
               Column("verdict", priority=3)]
    rows = [[escape(d.label), "-" if d.size_bytes is None else format_size(d.size_bytes),
             f"{d.median:.3f}", f"{min(d.baseline):.3f}..{max(d.baseline):.3f}",
             str(len(d.baseline)), f"{d.current:.3f}", f"{d.change:+.1%}", f"-{d.allowed:.0%}",
             "[bold red]REGRESSED[/]" if d.regressed else "ok"] for d in deltas]
    return fit_table(f"against baseline {', '.join(baseline.run_ids)} ({unit})", columns, rows,
                     width)
