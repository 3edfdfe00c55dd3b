"""Report: schema, effective-vs-planned warnings, CSV/PNG output, the terminal table."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from orchestrator.plan import build_plan
from orchestrator.report import avg_busbw, build_report, format_size, results_table, write_report
from orchestrator.settings import load_settings

pytestmark = pytest.mark.usefixtures("isolated")

RUN = "20261128-120000-abcd"



def row(size: int, in_place: bool, busbw: float = 1.0, wrong: int | None = 0) -> dict[str, Any]:
    return {"op": "all_reduce", "dtype": "float32", "size_bytes": size, "count": size // 4,
            "in_place": in_place, "redop": "sum", "time_us": {"min": 9.0, "avg": 10.0, "max": 11.0},
            "algbw_gbps": busbw, "busbw_gbps": busbw, "wrong": wrong}


def result_doc(ips: list[str], mtus: list[int], rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schema": 1, "kind": "bench", "run_id": RUN, "dist_backend": "gloo", "device": "cpu",
        "torch_version": "2.13.0", "world_size": len(ips),
        "ranks": [{"rank": i, "local_rank": 0, "node_rank": i, "node_name": f"n{i}",
                   "hostname": f"h{i}", "ifname": "eth0", "ipv4": ip, "mtu": mtu}
                  for i, (ip, mtu) in enumerate(zip(ips, mtus))],
        "settings": {}, "results": rows, "skipped": [], "notes": [],
        "wrong_total": sum(r["wrong"] or 0 for r in rows), "elapsed_s": 1.0,
    }


def test_report_schema_and_no_warnings_when_as_planned() -> None:
    plan = build_plan(load_settings(overrides={"network": {"mtu": 9000}}), RUN, "docker")
    rep = build_report(plan, result_doc(["172.28.0.2", "172.28.0.3"], [9000, 9000],
                                        [row(1 << 20, True)]), 3.21)
    assert {"run_id", "backend", "world_size", "network", "nodes", "results"} <= set(rep)
    assert rep["network"] == {"name": plan.network.name, "driver": "bridge",
                              "subnet": "172.28.0.0/16", "gateway": "172.28.0.1", "mtu": 9000,
                              "interface": "eth0", "fabric_interface": "eth0"}
    assert [(n["name"], n["role"], n["node_rank"], n["ip"], n["mtu"]) for n in rep["nodes"]] == [
        (plan.nodes[0].name, "master", 0, "172.28.0.2", 9000),
        (plan.nodes[1].name, "worker", 1, "172.28.0.3", 9000)]
    assert rep["warnings"] == []
    assert rep["ok"] is True
    json.dumps(rep)


def test_report_records_the_link_emulation() -> None:
    """A shaped run says how: the common link, each node's whole link, each pair's own."""
    plan = build_plan(load_settings(overrides={"network": {"link": {
        "rate": "1gbit", "nodes": {"worker-1": {"delay": "2ms"}},
        "pairs": {"worker-1:master": {"rate": "50mbit"}}}}}), RUN, "docker")
    rep = build_report(plan, result_doc(["172.28.0.2", "172.28.0.3"], [1500, 1500],
                                        [row(1 << 20, True)]), 1.0)
    assert rep["network"]["link"] == {
        "rate": "1gbit", "nodes": {"worker-1": {"rate": "1gbit", "delay": "2ms"}},
        "pairs": {"master:worker-1": {"rate": "50mbit"}}}
    plain = build_plan(load_settings(), RUN, "docker")
    assert "link" not in build_report(plain, result_doc(["172.28.0.2", "172.28.0.3"],
                                                        [1500, 1500], [row(1 << 20, True)]),
                                      1.0)["network"]


def test_report_flags_mtu_and_ip_differences() -> None:
    plan = build_plan(load_settings(overrides={"network": {"mtu": 9000}}), RUN, "docker")
    rep = build_report(plan, result_doc(["172.28.0.2", "172.28.0.9"], [9000, 1500],
                                        [row(1 << 20, True)]), 1.0)
    text = " ".join(rep["warnings"])
    assert "effective IP 172.28.0.9 differs from the planned 172.28.0.3" in text
    assert "effective MTU 1500 on eth0 differs from the requested 9000" in text


def test_report_not_ok_when_wrong() -> None:
    plan = build_plan(load_settings(), RUN, "docker")
    rep = build_report(plan, result_doc(["172.28.0.2", "172.28.0.3"], [1500, 1500],
                                        [row(1 << 20, True, wrong=3)]), 1.0)
    assert rep["wrong_total"] == 3 and rep["ok"] is False


def test_write_report_files(tmp_path: Path) -> None:
    plan = build_plan(load_settings(), RUN, "docker")
    rows = [row(1 << 20, True, 1.0), row(2 << 20, True, 2.0), row(1 << 20, False, 0.5)]
    rep = build_report(plan, result_doc(["172.28.0.2", "172.28.0.3"], [1500, 1500], rows), 1.0)
    paths = write_report(rep, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["run_id"] == RUN
    with paths["csv"].open() as fh:
        got = list(csv.DictReader(fh))
    assert [(r["size_bytes"], r["in_place"], r["busbw_gbps"]) for r in got] == [
        ("1048576", "1", "1.0"), ("2097152", "1", "2.0"), ("1048576", "0", "0.5")]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert avg_busbw(rep) == pytest.approx(3.5 / 3)
    assert avg_busbw(rep, min_bytes=2 << 20) == 2.0


def test_table_shows_both_sides() -> None:
    plan = build_plan(load_settings(), RUN, "docker")
    rows = [row(1 << 20, True, 1.5), row(1 << 20, False, 0.5, wrong=2)]
    rep = build_report(plan, result_doc(["172.28.0.2", "172.28.0.3"], [1500, 1500], rows), 1.0)
    console = Console(width=200, record=True)
    console.print(results_table(rep))
    text = console.export_text()
    assert "1 MiB" in text and "1.500" in text and "0.500" in text and "out: time us" in text


def test_format_size() -> None:
    assert [format_size(n) for n in (1, 1024, 3 << 20, 1 << 30, 1500)] == [
        "1 B", "1 KiB", "3 MiB", "1 GiB", "1500 B"]


def test_prefetched_busbw_plot_is_written_by_write_report(tmp_path: Path) -> None:
    """A plot drawn at the result line's arrival is the one write_report writes (no second draw)."""
    import orchestrator.report as report_mod

    plan = build_plan(load_settings(), RUN, "docker")
    result = result_doc(["172.28.0.2", "172.28.0.3"], [1500, 1500],
                        [row(1 << 20, True, 0.5), row(2 << 20, True, 0.7)])
    report_mod.prefetch_busbw(plan, result)
    (early,) = report_mod._prefetched.values()
    early.thread.join(60)
    assert early.png is not None and early.png.startswith(b"\x89PNG")
    paths = write_report(build_report(plan, result, 2.5), tmp_path / "out")
    assert paths["png"].read_bytes() == early.png
    assert report_mod._prefetched == {}


def test_prefetched_plot_of_other_figures_is_not_used(tmp_path: Path) -> None:
    """When the report's figures differ from the prefetched ones, the plot is drawn afresh."""
    import orchestrator.report as report_mod

    plan = build_plan(load_settings(), RUN, "docker")
    ips, mtus = ["172.28.0.2", "172.28.0.3"], [1500, 1500]
    report_mod.prefetch_busbw(plan, result_doc(ips, mtus, [row(1 << 20, True, 0.5)]))
    (early,) = report_mod._prefetched.values()
    early.thread.join(60)
    paths = write_report(build_report(plan, result_doc(ips, mtus, [row(1 << 20, True, 0.9)]), 1.0),
                         tmp_path / "out")
    assert paths["png"].read_bytes().startswith(b"\x89PNG")
    assert paths["png"].read_bytes() != early.png
    report_mod._prefetched.clear()
