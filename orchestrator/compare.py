"""``netorch compare``: several runs side by side, in ``compare.html``, ``compare.png`` and
``compare.json``.

What it shows: the busbw curves of every run overlaid (one line per run and op), a table of busbw
per size with each run's change against the first, and a diff of everything else that differed
between the reports: settings, the ranks' environment, MTUs, versions, hosts, line rate. A run's
own id inside a value (network and container names) is replaced by ``{run}`` first, so the diff
shows what was configured differently, not that the runs had different names.

``compare.html`` is one self-contained file: the plot is inline SVG (its text kept as text, so a
reader or a test finds the run ids in it), the tables are HTML, the style is inline; it loads
nothing from the network.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.report import format_size, row_key, saved_report_problem, writing

# Report keys that are the measurement itself, or differ on every run by nature.
_NOT_DIFFED = frozenset({"results", "skipped", "notes", "warnings", "run_id", "elapsed_s",
                         "loss_curve", "sweep", "ok", "wrong_total", "schema"})
_RANK_NOT_DIFFED = frozenset({"pid", "rank"})


def find_report(item: str, output: Path) -> Path:
    """A report.json, a run folder holding one, or a run id under ``output``; ConfigError (exit
    2) naming the item otherwise."""
    path = Path(item)
    for candidate in (path, path / "report.json", output / item / "report.json"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"compare: {item!r} is no report.json, run folder or run id under "
                      f"{output}; pass e.g. {output}/<run_id>")


def load_reports(items: Sequence[str], output: Path) -> list[dict[str, Any]]:
    """The reports ``items`` name, at least two, each a netorch report."""
    if len(items) < 2:
        raise ConfigError("compare: give at least two runs or reports to compare")
    reports = []
    for item in items:
        path = find_report(item, output)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"compare: cannot read {path} ({e}); pass a report.json that "
                              "netorch wrote") from None
        problem = saved_report_problem(data)
        if problem is not None:
            raise ConfigError(f"compare: {path} is no netorch report ({problem}); pass a "
                              "report.json that netorch wrote")
        reports.append(data)
    ids = [str(r["run_id"]) for r in reports]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"compare: run {', '.join(sorted({i for i in ids if ids.count(i) > 1}))} "
                          "is named twice; name each run once")
    return reports


def _flatten(value: Any, prefix: str, out: dict[str, str], run_id: str) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(inner, f"{prefix}.{key}" if prefix else str(key), out, run_id)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, inner in enumerate(value):
            _flatten(inner, f"{prefix}[{i}]", out, run_id)
    else:
        text = value if isinstance(value, str) else json.dumps(value)
        out[prefix] = text.replace(run_id, "{run}") if run_id else text


def flatten_report(report: dict[str, Any]) -> dict[str, str]:
    """Every configured or observed fact of a report as ``dotted.key -> text``: settings, network,
    nodes (by name), ranks (by rank: env, MTU, host), versions, line rate."""
    run_id = str(report.get("run_id", ""))
    out: dict[str, str] = {}
    for key, value in report.items():
        if key in _NOT_DIFFED:
            continue
        if key == "nodes":
            for node in value:
                _flatten({k: v for k, v in node.items() if k != "node_rank"},
                         f"nodes.{node.get('node_rank')}", out, run_id)
        elif key == "ranks":
            for rank in value:
                _flatten({k: v for k, v in rank.items() if k not in _RANK_NOT_DIFFED},
                         f"ranks.{rank.get('rank')}", out, run_id)
        elif key == "line_rate":
            _flatten({k: value.get(k) for k in ("single_gbps", "parallel_gbps")}, key, out, run_id)
        else:
            _flatten(value, key, out, run_id)
    return out


def differences(reports: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The facts whose value is not the same in every report (missing counts as a value)."""
    flat = [flatten_report(r) for r in reports]
    keys = sorted({k for f in flat for k in f})
    return [{"key": k, "values": [f.get(k) for f in flat]} for k in keys
            if len({f.get(k) for f in flat}) > 1]


def delta_rows(reports: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (op, dtype, side, size): every run's busbw and its change against the first run's."""
    keys: dict[tuple[str, int], None] = {}
    values: list[dict[tuple[str, int], float]] = []
    for report in reports:
        mine = {row_key(r): float(r["busbw_gbps"]) for r in report.get("results", [])}
        keys.update(dict.fromkeys(mine))
        values.append(mine)
    rows = []
    for key in sorted(keys, key=lambda k: (k[0], k[1])):
        busbw = [v.get(key) for v in values]
        first = busbw[0]
        rows.append({"figure": key[0], "size_bytes": key[1], "busbw_gbps": busbw,
                     "change": [None if b is None or not first else b / first - 1
                                for b in busbw]})
    if all(r.get("samples_per_s") is not None for r in reports):
        sps = [float(r["samples_per_s"]) for r in reports]
        rows.append({"figure": "samples/s", "size_bytes": None, "busbw_gbps": sps,
                     "change": [s / sps[0] - 1 if sps[0] else None for s in sps]})
    return rows


def _draw(reports: Sequence[dict[str, Any]]) -> tuple[Any, Any]:
    from orchestrator.plots import new_axes

    fig, ax = new_axes(9, 4.8)
    for report in reports:
        series: dict[str, list[tuple[int, float]]] = {}
        for row in report.get("results", []):
            label, size = row_key(row)
            series.setdefault(label, []).append((size, float(row["busbw_gbps"])))
        for label, points in series.items():
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                    label=f"{report['run_id']}: {label}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel("bus bandwidth (GB/s)")
    return fig, ax


def plot_svg(reports: Sequence[dict[str, Any]]) -> str:
    """The overlaid busbw curves as an inline SVG element, text kept as ``<text>``."""
    from orchestrator.plots import finish_svg

    fig, ax = _draw(reports)
    return finish_svg(fig, ax, "busbw: " + " vs ".join(str(r["run_id"]) for r in reports), 10)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_html(reports: Sequence[dict[str, Any]], deltas: Sequence[dict[str, Any]],
                diffs: Sequence[dict[str, Any]], svg: str) -> str:
    """compare.html: inline style, inline SVG plot, the delta table and the diff table."""
    ids = [html.escape(str(r["run_id"])) for r in reports]
    head = "".join(f"<th>{i} busbw GB/s</th>" for i in ids) + "".join(
        f"<th>{i} vs {ids[0]}</th>" for i in ids[1:])
    body = []
    for row in deltas:
        size = "-" if row["size_bytes"] is None else format_size(row["size_bytes"])
        cells = "".join(f"<td>{_fmt(b, '.3f')}</td>" for b in row["busbw_gbps"])
        cells += "".join(
            f"<td class=\"{'down' if c is not None and c < 0 else 'up'}\">{_fmt(c, '+.1%')}</td>"
            for c in row["change"][1:])
        body.append(f"<tr><td>{html.escape(row['figure'])}</td><td>{size}</td>{cells}</tr>")
    diff_head = "".join(f"<th>{i}</th>" for i in ids)
    diff_body = "".join(
        "<tr><td>" + html.escape(d["key"]) + "</td>" + "".join(
            f"<td>{'(none)' if v is None else html.escape(v)}</td>" for v in d["values"])
        + "</tr>" for d in diffs) or f"<tr><td colspan=\"{len(ids) + 1}\">nothing</td></tr>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>netorch compare {' vs '.join(ids)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
td.down {{ color: #b00; }} td.up {{ color: #070; }}
#plot svg {{ max-width: 100%; height: auto; }}
</style></head>
<body>
<h1>netorch compare: {' vs '.join(ids)}</h1>
<h2>busbw per size</h2>
<div id="plot">{svg}</div>
<table id="deltas"><thead><tr><th>figure</th><th>size</th>{head}</tr></thead>
<tbody>{''.join(body)}</tbody></table>
<h2>what differed between the runs</h2>
<table id="diff"><thead><tr><th>setting or fact</th>{diff_head}</tr></thead>
<tbody>{diff_body}</tbody></table>
</body></html>
"""


def write_compare(reports: Sequence[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """compare.json, compare.png and compare.html into ``out_dir``; return their paths."""
    from orchestrator.plots import finish

    deltas = delta_rows(reports)
    diffs = differences(reports)
    paths = {"html": out_dir / "compare.html", "png": out_dir / "compare.png",
             "json": out_dir / "compare.json"}
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    with writing(paths["json"]):
        paths["json"].write_text(json.dumps({
            "runs": [str(r["run_id"]) for r in reports], "deltas": deltas,
            "differences": diffs}, indent=2) + "\n", encoding="utf-8")
    with writing(paths["png"]):
        fig, ax = _draw(reports)
        finish(fig, ax, paths["png"], "busbw: " + " vs ".join(str(r["run_id"]) for r in reports),
               10)
    with writing(paths["html"]):
        paths["html"].write_text(render_html(reports, deltas, diffs, plot_svg(reports)),
                                 encoding="utf-8")
    return paths
