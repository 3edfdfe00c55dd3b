"""The baseline gate's arithmetic and its inputs: reports, run folders, sweeps, tolerances."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from orchestrator.baseline import (
    AUTO_FLOOR,
    AUTO_FLOOR_ONE_RUN,
    compare,
    gate,
    load_baseline,
    parse_tolerance,
)
from orchestrator.errors import ConfigError, RegressionError

MIB = 1 << 20


def bench_report(run_id: str, busbw: dict[int, float]) -> dict[str, Any]:
    return {"kind": "bench", "run_id": run_id, "results": [
        {"op": "all_reduce", "dtype": "float32", "in_place": True, "size_bytes": size,
         "busbw_gbps": value} for size, value in busbw.items()]}


def save(folder: Path, report: dict[str, Any]) -> Path:
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def test_one_saved_run_allows_the_one_run_floor(tmp_path: Path) -> None:
    base = load_baseline([save(tmp_path / "a", bench_report("a", {MIB: 1.0, 4 * MIB: 2.0}))])
    now = bench_report("b", {MIB: 1.0 - AUTO_FLOOR_ONE_RUN + 0.01, 4 * MIB: 0.2})
    deltas = compare(now, base, None)
    assert [d.regressed for d in deltas] == [False, True]
    with pytest.raises(RegressionError, match=r"at 4 MiB -90%") as info:
        gate(deltas, base)
    assert info.value.exit_code == 5
    assert "1 MiB" not in str(info.value)


def test_repeats_allow_their_own_spread(tmp_path: Path) -> None:
    runs = [save(tmp_path / f"r{i}", bench_report(f"r{i}", {MIB: v}))
            for i, v in enumerate((1.0, 0.6, 0.9))]
    base = load_baseline(runs)
    (delta,) = compare(bench_report("n", {MIB: 0.5}), base, None)
    assert delta.median == 0.9 and delta.allowed == pytest.approx(0.4 / 0.9)
    assert not delta.regressed  # 0.5 >= 0.9 * (1 - 0.444)
    (tight,) = compare(bench_report("n", {MIB: 0.5}), base, parse_tolerance("10%"))
    assert tight.regressed and tight.allowed == pytest.approx(0.10)
    steady = load_baseline([save(tmp_path / f"s{i}", bench_report(f"s{i}", {MIB: 1.0}))
                            for i in range(2)])
    (floor,) = compare(bench_report("n", {MIB: 0.5}), steady, None)
    assert floor.allowed == AUTO_FLOOR and floor.regressed
    gate(compare(bench_report("n", {MIB: 5.0}), steady, None), steady)  # faster: no error


def test_a_sweep_of_one_configuration_gives_its_repeats(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep-x"
    runs = []
    for i, value in enumerate((1.0, 1.2)):
        report = bench_report(f"sweep-x-{i:02d}", {MIB: value})
        save(sweep / report["run_id"], report)
        runs.append({"run_id": report["run_id"], "mtu": 1500, "link_rate": None,
                     "results": report["results"]})
    (sweep / "sweep.json").write_text(json.dumps({"sweep_id": "x", "runs": runs}))
    base = load_baseline([sweep])
    assert base.run_ids == ("sweep-x-00", "sweep-x-01")



def test_a_sweep_of_several_variants_gives_the_repeats_of_the_run_s_own(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep-y"
    runs = []
    for i, (mtu, ifname, value) in enumerate([(1500, "eth0", 1.0), (9000, "eth0", 2.0),
                                              (1500, "eth0,eth0", 3.0), (1500, "eth0", 1.1)]):
        report = {**bench_report(f"y-{i}", {MIB: value}), "network": {"mtu": mtu},
                  "ranks": [{"rank": 0, "env": {"GLOO_SOCKET_IFNAME": ifname}}]}
        save(sweep / report["run_id"], report)
        runs.append({"run_id": report["run_id"], "results": report["results"],
                     "variant": {"network.mtu": mtu, "env.GLOO_SOCKET_IFNAME": ifname}})
    (sweep / "sweep.json").write_text(json.dumps({"sweep_id": "y", "runs": runs}))
    base = load_baseline([sweep / "sweep.json"])
    now = {**bench_report("n", {MIB: 1.0}), "network": {"mtu": 1500},
           "ranks": [{"rank": 0, "env": {"GLOO_SOCKET_IFNAME": "eth0"}}]}
    assert base.matching(now).run_ids == ("y-0", "y-3")
    (delta,) = compare(now, base, None)
    assert delta.baseline == (1.0, 1.1)
    other = {**now, "network": {"mtu": 4000}}
    with pytest.raises(ConfigError, match="matches none of the configurations"):
        compare(other, base, None)


def test_a_sweep_of_link_rates_gives_the_repeats_of_the_run_s_rate(tmp_path: Path) -> None:
    """Reports record their link (network.link), so a run finds its own rate in a link sweep,
    and an unshaped run the unshaped variant."""
    sweep = tmp_path / "sweep-z"
    runs = []
    for i, (rate, value) in enumerate([(None, 1.0), ("1gbit", 0.1), (None, 1.2), ("1gbit", 0.12)]):
        network: dict[str, Any] = {"mtu": 1500, **({"link": {"rate": rate}} if rate else {})}
        report = {**bench_report(f"z-{i}", {MIB: value}), "network": network}
        save(sweep / report["run_id"], report)
        runs.append({"run_id": report["run_id"], "results": report["results"],
                     "variant": {"network.link.rate": rate}})
    (sweep / "sweep.json").write_text(json.dumps({"sweep_id": "z", "runs": runs}))
    base = load_baseline([sweep])
    shaped = {**bench_report("n", {MIB: 0.11}), "network": {"mtu": 1500,
                                                            "link": {"rate": "1gbit"}}}
    assert base.matching(shaped).run_ids == ("z-1", "z-3")
    plain = {**bench_report("n", {MIB: 1.1}), "network": {"mtu": 1500}}
    assert base.matching(plain).run_ids == ("z-0", "z-2")
    other = {**plain, "network": {"mtu": 1500, "link": {"rate": "10gbit"}}}
    with pytest.raises(ConfigError, match="matches none of the configurations"):
        base.matching(other)


def test_train_baseline_compares_samples_per_second(tmp_path: Path) -> None:
    base = load_baseline([save(tmp_path / "t", {"kind": "train", "run_id": "t",
                                                "samples_per_s": 1000.0})])
    (delta,) = compare({"kind": "train", "samples_per_s": 400.0}, base, None)
    assert delta.label == "samples/s" and delta.regressed
    with pytest.raises(ConfigError, match="holds train reports, this run is bench"):
        compare(bench_report("b", {MIB: 1.0}), base, None)


@pytest.mark.parametrize("text", ["0", "100", "x", "-5", ""])
def test_bad_tolerance_names_the_flag(text: str) -> None:
    with pytest.raises(ConfigError, match="--tolerance"):
        parse_tolerance(text)


def test_bad_baseline_paths_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_baseline([tmp_path / "nope.json"])
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not JSON"):
        load_baseline([tmp_path / "junk.json"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither report.json nor sweep.json"):
        load_baseline([tmp_path / "empty"])
    base = load_baseline([save(tmp_path / "a", bench_report("a", {MIB: 1.0}))])
    with pytest.raises(ConfigError, match="no figure in common"):
        compare(bench_report("b", {2 * MIB: 1.0}), base, None)


def test_best_of_the_confirmation_runs_is_judged(tmp_path: Path) -> None:
    from orchestrator.baseline import best_of

    base = load_baseline([save(tmp_path / "a", bench_report("a", {MIB: 1.0, 4 * MIB: 2.0}))])
    spiked = bench_report("b", {MIB: 0.2, 4 * MIB: 0.3})  # a load spike slowed this run
    calm = bench_report("c", {MIB: 0.9, 4 * MIB: 0.4})  # ... not this one, but 4 MiB stays slow
    merged = best_of([spiked, calm])
    assert merged["run_id"] == "b"
    assert [r["busbw_gbps"] for r in merged["results"]] == [0.9, 0.4]
    assert [d.regressed for d in compare(merged, base, None)] == [False, True]
    train = best_of([{"kind": "train", "samples_per_s": 10.0}, {"kind": "train",
                                                                 "samples_per_s": 30.0}])
    assert train["samples_per_s"] == 30.0


def _printed(table: Any, width: int) -> list[str]:
    from rich.console import Console

    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    console.print(table)
    return console.export_text().splitlines()


def test_delta_and_line_rate_tables_fit_80_columns_one_line_per_row(tmp_path: Path) -> None:
    from orchestrator.baseline import delta_table
    from orchestrator.linerate import line_rate_table

    sizes = {MIB: 1.0, 2 * MIB: 2.0, 4 * MIB: 3.0}
    base = load_baseline([save(tmp_path / "a", bench_report("a", sizes))])
    now = bench_report("b", {MIB: 0.1, 2 * MIB: 2.0, 4 * MIB: 3.0})
    deltas = compare(now, base, None)
    for width in (80, 160):
        lines = _printed(delta_table(deltas, base, "busbw GB/s", width), width)
        assert all(len(line) <= width for line in lines), lines
        body = [line for line in lines if line.startswith("│")]
        assert len(body) == 3 and "REGRESSED" in body[0], lines
        assert ("min..max" in lines[2]) == (width == 160), lines  # the header row
    now["line_rate"] = {"single_gbps": 2.0, "parallel_gbps": 4.0,
                        "tcp_parallel": [{"streams": 4}]}
    for row in now["results"]:
        row["line_share"] = row["busbw_gbps"] / 2.0
    lines = _printed(line_rate_table(now, 40), 40)
    assert all(len(line) <= 40 for line in lines), lines
    assert sum(line.startswith("│") for line in lines) == 3, lines
    assert "share of 4 streams" in "\n".join(_printed(line_rate_table(now, 120), 120))
    now["line_rate"] = {"single_gbps": 2.0, "parallel_gbps": None, "tcp_parallel": []}
    single = "\n".join(_printed(line_rate_table(now, 120), 120))  # --tcp-streams 1
    assert "streams" not in single and "share of 1 stream" in single, single


def test_malformed_saved_reports_are_config_errors_not_tracebacks(tmp_path: Path) -> None:
    from orchestrator.compare import load_reports

    good = save(tmp_path / "good", bench_report("good", {MIB: 1.0}))
    rowless = bench_report("x", {MIB: 1.0})
    del rowless["results"][0]["in_place"]
    save(tmp_path / "rowless", rowless)
    save(tmp_path / "sps", {"kind": "train", "run_id": "t", "samples_per_s": "fast"})
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sweep.json").write_text(json.dumps({"sweep_id": "s", "runs": [{}]}))
    for bad, words in (("rowless", "results[0] has no valid in_place"),
                       ("sps", "samples_per_s is no number"),
                       ("sweep", "runs without run_id")):
        with pytest.raises(ConfigError, match=re.escape(words)):
            load_baseline([tmp_path / bad])
    with pytest.raises(ConfigError, match=re.escape("(results[0] has no valid in_place)")):
        load_reports([str(good), str(tmp_path / "rowless")], tmp_path)
    assert len(load_reports([str(good), str(save(tmp_path / "b", bench_report("b", {})))],
                            tmp_path)) == 2
