"""Traffic proof: kernel counters read in the node, judged on the host, and a real run."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.traffic import add_traffic, row_traffic, traffic_table, traffic_warnings
from train.contract import op_spec
from train.traffic import sent_per_iteration, tx_bytes

MIB = 1 << 20


def test_tx_bytes_reads_every_interface(tmp_path: Path) -> None:
    for name, value in (("eth0", "1234\n"), ("eth1", "7\n")):
        (tmp_path / name / "statistics").mkdir(parents=True)
        (tmp_path / name / "statistics" / "tx_bytes").write_text(value)
    (tmp_path / "broken").mkdir()  # no statistics: left out, not an error
    assert tx_bytes(tmp_path) == {"eth0": 1234, "eth1": 7}
    assert "lo" in tx_bytes()  # this machine's own counters
    assert sent_per_iteration({"eth0": 100, "gone": 5}, {"eth0": 1100, "eth1": 9}, 4) == {
        "eth0": 250.0}


@pytest.mark.parametrize(("op", "n", "factor"), [
    ("all_reduce", 2, 1.0), ("all_reduce", 4, 1.5), ("all_gather", 4, 0.75),
    ("reduce_scatter", 4, 0.75), ("all_to_all", 4, 0.75), ("broadcast", 4, 0.75),
    ("reduce", 2, 0.5), ("sendrecv", 4, 1.0), ("all_reduce", 1, 0.0),
])
def test_wire_bytes_per_rank_is_what_the_algorithm_sends(op: str, n: int, factor: float) -> None:
    assert op_spec(op).wire_bytes_per_rank(MIB, n) == factor * MIB


def _row(per_rank: list[dict[str, float]], size: int = 16 * MIB) -> dict[str, object]:
    return {"op": "all_reduce", "dtype": "float32", "size_bytes": size, "in_place": True,
            "traffic": {"expected_bytes_per_rank": float(size), "tx_bytes_per_rank": per_rank}}


def test_ranks_sharing_a_namespace_count_its_counters_once() -> None:
    # Two local processes share lo: each reads both ranks' bytes (2 x 16 MiB).
    shared = row_traffic(_row([{"lo": 32.0 * MIB}, {"lo": 32.0 * MIB}]), ["host", "host"])
    assert shared is not None and shared["bytes_per_rank"] == {"lo": 16.0 * MIB}
    own = row_traffic(_row([{"eth0": 16.0 * MIB}, {"eth0": 16.0 * MIB}]), ["master", "worker-1"])
    assert own is not None and own["bytes_per_rank"] == {"eth0": 16.0 * MIB}


def _report(per_rank: list[dict[str, float]], planned: str = "eth0") -> dict[str, object]:
    return {"results": [_row(per_rank)], "network": {"interface": planned}, "nproc_per_node": 1,
            "ranks": [{"rank": 0, "hostname": "master"}, {"rank": 1, "hostname": "worker-1"}],
            "warnings": []}


def test_bytes_on_the_planned_interface_give_no_warning() -> None:
    report = _report([{"eth0": 16.9 * MIB, "eth1": 0.01 * MIB}] * 2)
    add_traffic(report)
    assert report["warnings"] == []
    table = traffic_table(report, 80)
    assert [c.header for c in table.columns][-2:] == ["expected B", "eth0 (planned)"]
    assert list(table.columns[-1].cells) == [f"{16.9 * MIB:,.0f}"]  # eth1's 0.06 % left out
    assert list(table.columns[-2].cells) == [f"{16 * MIB:,}"]


def test_bytes_on_another_interface_warn_naming_both() -> None:
    report = _report([{"eth0": 0.02 * MIB, "eth1": 16.8 * MIB}] * 2)
    add_traffic(report)
    warnings = report["warnings"]
    assert isinstance(warnings, list) and len(warnings) == 2
    assert "went through eth1, not the planned eth0" in warnings[0]
    assert "far fewer than expected" in warnings[1]


def test_far_more_bytes_than_the_algorithm_warn_and_small_sizes_are_not_judged() -> None:
    more = [_row([{"eth0": 40.0 * MIB}] * 2)]
    small = [_row([{"eth0": 40.0 * 4096}] * 2, size=4096)]
    for rows in (more, small):
        for r in rows:
            r["traffic_summary"] = row_traffic(r, ["a", "b"])
    assert "far more than expected" in traffic_warnings(more, "eth0", True)[0]
    assert traffic_warnings(small, "eth0", True) == []
    assert traffic_warnings(more, "eth0", False) == []  # several ranks per node: not judged


def test_process_backend_counters_are_the_hosts_and_are_not_judged_or_shown() -> None:
    # Local ranks read the host's counters, which every other program on the host moves too.
    report = _report([{"lo": 0.02 * MIB, "docker0": 16.8 * MIB}] * 2, planned="lo")
    report["network"] = {"interface": "lo", "driver": "loopback"}
    add_traffic(report)
    assert report["warnings"] == []
    assert traffic_table(report) is None
    report["network"] = {"interface": "lo", "driver": "bridge"}
    add_traffic(report)
    assert report["warnings"] and traffic_table(report) is not None
