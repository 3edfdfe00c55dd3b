"""netorch fabric without a daemon: the schedule, per-node / per-pair tc, the robust verdict on
synthetic matrices, the files, and one real run on the process backend (torch, gloo)."""

from __future__ import annotations

import csv
import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest

from orchestrator.app import run_fabric
from orchestrator.backends.docker.linkem import plan_tc_commands
from orchestrator.errors import ConfigError
from orchestrator.fabric import analyse, outliers, verdict, write_fabric
from orchestrator.plan import LinkSpec, build_plan
from orchestrator.settings import load_settings
from train.contract import FabricArgs, round_robin, workload_argv

pytestmark = pytest.mark.usefixtures("isolated")


# ---- the schedule ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 9])
def test_round_robin_covers_every_pair_once_in_disjoint_rounds(n: int) -> None:
    rounds = round_robin(n)
    assert len(rounds) == (n - 1 if n % 2 == 0 else n)
    seen = [p for r in rounds for p in r]
    assert sorted(seen) == list(itertools.combinations(range(n), 2))
    for r in rounds:
        ranks = [x for p in r for x in p]
        assert len(ranks) == len(set(ranks)), f"a rank twice in one round: {r}"
        assert len(r) == n // 2


def test_fabric_args_round_trip_through_argv() -> None:
    args = FabricArgs(bw_bytes="1M", bw_iters=7, bw_seconds=0.5, lat_iters=3, passes=1,
                      run_id="r-1")
    argv = workload_argv(args)
    assert argv[:2] == ("-m", "train.fabric")
    assert FabricArgs.from_argv(argv[2:]) == args


# ---- link emulation per node and per pair ---------------------------------------------------


def _plan(n_nodes: int = 4, **link: Any) -> Any:
    settings = load_settings(overrides={"cluster": {"nodes": n_nodes},
                                        "network": {"subnet": "10.9.0.0/24", "link": link}})
    return build_plan(settings, "run-1", "docker")


def test_node_override_shapes_that_node_only_and_keeps_common_fields() -> None:
    plan = _plan(delay="1ms", nodes={"worker-2": {"rate": "50mbit"}})
    assert plan.network.node_links == (("worker-2", LinkSpec(rate="50mbit", delay="1ms")),)
    tc = plan_tc_commands(plan)
    assert set(tc) == {n.name for n in plan.nodes}  # the common delay shapes everyone
    slow = tc[plan.nodes[2].name]
    assert any("tbf" in argv and "50000000bit" in argv for argv in slow)
    assert not any("tbf" in argv for argv in tc[plan.nodes[1].name])
    assert plan.runtime.cap_add == ("NET_ADMIN",) and plan.runtime.start_gate


def test_node_override_alone_grants_net_admin_to_shape() -> None:
    plan = _plan(nodes={"worker-1": {"rate": "1gbit"}})
    assert plan.network.link is None and plan.network.shaped
    assert set(plan_tc_commands(plan)) == {plan.nodes[1].name}
    assert plan.runtime.cap_add == ("NET_ADMIN",)


def test_pair_link_is_an_htb_class_filtered_by_the_peer_address_on_both_ends() -> None:
    plan = _plan(pairs={"worker-3:master": {"rate": "80mbit"}})
    assert plan.network.pair_links == (("master", "worker-3", LinkSpec(rate="80mbit")),)
    tc = plan_tc_commands(plan)
    assert set(tc) == {plan.nodes[0].name, plan.nodes[3].name}
    master, worker3 = tc[plan.nodes[0].name], tc[plan.nodes[3].name]
    # Unclassified traffic (to any other node) leaves unshaped: htb "default 0".
    assert master[0][-4:] == ("1:", "htb", "default", "0")
    assert any("80000000bit" in argv for argv in master)
    assert ("match", "ip", "dst", f"{plan.nodes[3].ip}/32") == next(
        argv for argv in master if "filter" in argv)[-6:-2]
    assert f"{plan.nodes[0].ip}/32" in next(argv for argv in worker3 if "filter" in argv)


def test_netem_under_htb_classes_takes_handles_of_its_own() -> None:
    # A common delay (default class 1:1) beside a delayed pair (class 1:10): each class's netem
    # qdisc needs a handle unlike the root's "1:" and unlike each other's.
    plan = _plan(delay="1ms", pairs={"master:worker-1": {"delay": "5ms"}})
    master = plan_tc_commands(plan)[plan.nodes[0].name]
    handles = [argv[argv.index("handle") + 1] for argv in master
               if "qdisc" in argv and "handle" in argv]
    assert handles == ["1:", "101:", "110:"]
    assert [argv[argv.index("parent") + 1] for argv in master if "netem" in argv] == [
        "1:1", "1:10"]


def test_pair_link_with_a_common_rate_puts_the_common_link_in_the_default_class() -> None:
    plan = _plan(rate="1gbit", pairs={"master:worker-1": {"rate": "10mbit"}})
    master = plan_tc_commands(plan)[plan.nodes[0].name]
    assert master[0][-2:] == ("default", "1")
    assert any("classid" in argv and "1:1" in argv and "1000000000bit" in argv for argv in master)


@pytest.mark.parametrize(("link", "needle"), [
    ({"nodes": {"worker-7": {"rate": "1gbit"}}}, "network.link.nodes.worker-7: no node"),
    ({"pairs": {"master": {"rate": "1gbit"}}}, "network.link.pairs.master: expected two"),
    ({"pairs": {"master:master": {"rate": "1gbit"}}}, "expected two different nodes"),
    ({"nodes": {"master": {"rate": "fast"}}}, "rate"),
    ({"pairs": {"master:x": {"rate": "1gbit"}}}, "network.link.pairs.master:x: no node 'x'"),
])
def test_bad_node_or_pair_keys_are_one_clear_error(link: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_settings(overrides={"cluster": {"nodes": 3}, "network": {"link": link}})


def test_node_override_through_set_syntax() -> None:
    from orchestrator.app import SettingsRequest

    s = SettingsRequest(sets=("cluster.nodes=4", "network.link.nodes.worker-2.rate=50mbit",
                              "network.link.pairs.master:worker-1.rate=1gbit")).load()
    assert s.network.link.nodes["worker-2"].rate == "50mbit"
    assert s.network.link.pairs["master:worker-1"].rate == "1gbit"
    # The TOML spelling of the key works too (a quoted part is one key, quotes dropped).
    quoted = SettingsRequest(sets=("cluster.nodes=3",
                                   'network.link.pairs."master:worker-2".rate=2gbit')).load()
    assert quoted.network.link.pairs["master:worker-2"].rate == "2gbit"
    with pytest.raises(ConfigError, match="opening quote has no closing one"):
        SettingsRequest(sets=('network.link.pairs."master:worker-1.rate=1gbit',)).load()


def test_a_warm_cluster_of_one_node_is_refused_not_a_traceback(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.app as usecases

    def one_node_cluster(settings: Any, hooks: Any, on: Any, asked: Any) -> Any:
        # What _executor returns for `--on lab` when lab was `netorch up --nodes 1`.
        cluster = settings.cluster.model_copy(update={"nodes": 1})
        return "docker", settings.model_copy(update={"cluster": cluster}), object()

    monkeypatch.setattr(usecases, "_executor", one_node_cluster)
    with pytest.raises(ConfigError, match="1 node.s. in cluster lab make no pair"):
        run_fabric(load_settings(overrides={"backend": "docker"}), on="lab")


@pytest.mark.parametrize("link", [{"rate": "1gbit"}, {"nodes": {"worker-1": {"delay": "1ms"}}},
                                  {"pairs": {"master:worker-1": {"rate": "50mbit"}}}])
def test_the_process_backend_refuses_links_it_cannot_emulate(link: dict[str, Any]) -> None:
    from orchestrator.errors import PlanError

    settings = load_settings(overrides={"network": {"link": link}})
    with pytest.raises(PlanError, match="network.link: the process backend cannot emulate"):
        build_plan(settings, "run-1", "process")
    assert build_plan(settings, "run-1", "docker").network.shaped


def test_cli_names_a_bad_pair_in_one_line_with_exit_2() -> None:
    from typer.testing import CliRunner

    from orchestrator.cli import app

    result = CliRunner().invoke(app, ["plan", "--set", 'network.link.pairs."master:x".rate=1gbit'])
    assert result.exit_code == 2, result.output
    # One line, and the key as written: rich would print "master:x:" as an emoji code.
    assert result.stderr.splitlines() == [
        "error: network.link.pairs.master:x: no node 'x'; the plan's nodes are master, worker-1"]


# ---- the verdict ----------------------------------------------------------------------------


def _values(n: int, slow_nodes: set[int] = set(), slow_pairs: set[tuple[int, int]] = set(),
            noise: float = 0.3, seed: int = 0) -> dict[tuple[int, int], float]:
    rng = random.Random(seed)
    out = {}
    for p in itertools.combinations(range(n), 2):
        v = rng.uniform(1 - noise, 1 + noise)
        if slow_nodes & set(p) or p in slow_pairs:
            v = 0.006 * rng.uniform(0.9, 1.1)
        out[p] = v
    return out


def _verdict(n: int, values: dict[tuple[int, int], float]) -> Any:
    found = outliers(values, 0.5, 3.0)
    names = [f"n{i}" for i in range(n)]
    return verdict(names, found.outliers if found else (), list(values), found is not None)


@pytest.mark.parametrize("n", [3, 4, 5, 8])
@pytest.mark.parametrize("seed", range(5))
def test_one_slow_node_is_named_even_when_it_is_in_half_the_pairs(n: int, seed: int) -> None:
    v = _verdict(n, _values(n, slow_nodes={1}, seed=seed))
    assert (v.status, v.suspects) == ("slow node", ["n1"])


@pytest.mark.parametrize("n", [4, 5, 8])
@pytest.mark.parametrize("seed", range(5))
def test_one_slow_link_is_named_as_a_link_not_a_node(n: int, seed: int) -> None:
    v = _verdict(n, _values(n, slow_pairs={(0, 2)}, seed=seed))
    assert (v.status, v.suspects) == ("slow link", [["n0", "n2"]])


@pytest.mark.parametrize(("n", "noise"), [(3, 0.3), (4, 0.4), (8, 0.4)])
@pytest.mark.parametrize("seed", range(10))
def test_a_noisy_healthy_fabric_is_healthy(n: int, noise: float, seed: int) -> None:
    # +-40% noise, as seen on a 2-core host with two pairs at once. With 3 nodes a node's score
    # is its better pair (the high median of two), so the healthy spread must stay under 2x.
    v = _verdict(n, _values(n, noise=noise, seed=seed))
    assert (v.status, v.suspects) == ("healthy", [])


def test_two_nodes_have_nothing_to_compare() -> None:
    v = _verdict(2, {(0, 1): 0.001})
    assert v.status == "too few nodes" and v.suspects == []


def test_latency_outliers_are_the_high_ones() -> None:
    lat = {p: 100.0 for p in itertools.combinations(range(4), 2)}
    lat[(1, 3)] = 5000.0
    found = outliers(lat, 0.5, 3.0, higher_is_worse=True)
    assert found is not None and found.outliers == ((1, 3),)
    assert found.reference == pytest.approx(100.0)


# ---- the document and its files -------------------------------------------------------------


def _doc(n: int, gbps: dict[tuple[int, int], float]) -> dict[str, Any]:
    return {
        "kind": "fabric", "world_size": n, "dist_backend": "gloo",
        "ranks": [{"rank": r, "ifname": "eth0"} for r in range(n)],
        "settings": {"bw_bytes": 1 << 20}, "rounds": round_robin(n),
        "bandwidth": [{"src": a, "dst": b, "gbps": gbps[(min(a, b), max(a, b))]}
                      for a in range(n) for b in range(n) if a != b],
        "latency": [{"a": a, "b": b, "us": 50.0} for a, b in itertools.combinations(range(n), 2)],
        "elapsed_s": 1.0,
    }


def test_analyse_names_the_slow_node_and_writes_json_csv_png(tmp_path: Path) -> None:
    plan = _plan(4)
    report = analyse(plan, _doc(4, _values(4, slow_nodes={2})), 0.5, 3.0)
    assert report["suspects"] == ["worker-2"] and report["status"] == "slow node"
    assert report["matrix"]["bandwidth_gbps"][2][2] is None
    assert report["matrix"]["bandwidth_gbps"][2][0] < 0.01
    assert {p["scope"] for p in report["pairs"]} == {"intra-host"}
    paths = write_fabric(report, tmp_path)
    assert json.loads(paths["json"].read_text())["suspects"] == ["worker-2"]
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == 6
    assert {(r["a"], r["b"]) for r in rows if r["slow"] == "True"} == {
        ("master", "worker-2"), ("worker-1", "worker-2"), ("worker-2", "worker-3")}
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _printed(renderable: Any, width: int) -> list[str]:
    from rich.console import Console

    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    console.print(renderable)
    return console.export_text().splitlines()


def test_the_matrix_fits_the_width_or_gives_way_to_one_row_per_node() -> None:
    from orchestrator.fabric import fabric_table

    small = analyse(_plan(4), _doc(4, _values(4, slow_nodes={2})), 0.5, 3.0)
    lines = _printed(fabric_table(small, 80), 80)
    assert lines[0].startswith("fabric ") and lines[0].endswith("(sender -> receiver)")
    assert max(map(len, lines)) <= 80 and len(lines) == 1 + 4 + 4  # title, frame+head, 4 rows
    assert any(line.split("│")[1].strip() == "worker-2" for line in lines if "│" in line)

    big = analyse(_plan(12), _doc(12, _values(12, slow_nodes={5})), 0.5, 3.0)
    lines = _printed(fabric_table(big, 80), 80)
    assert max(map(len, lines)) <= 80
    rows = {cells[1].strip(): [c.strip() for c in cells[2:-1]]
            for cells in (line.split("│") for line in lines) if len(cells) > 2}
    assert set(rows) == {n["name"] for n in big["nodes"]}
    assert rows["worker-5"][-1] == "11" and rows["master"][-1] == "1"  # its slow pairs
    assert "(12x12 matrix too wide: fabric.csv, --json)" in lines[0]
    assert _printed(fabric_table(big, 200), 200)[0].endswith("(sender -> receiver)")


def test_analyse_refuses_a_result_with_a_missing_pair() -> None:
    from orchestrator.errors import ResultError

    doc = _doc(3, _values(3))
    doc["bandwidth"] = doc["bandwidth"][1:]
    with pytest.raises(ResultError, match="lacks the pair"):
        analyse(_plan(3), doc, 0.5, 3.0)


def test_fabric_refuses_several_ranks_per_node_and_a_single_node() -> None:
    with pytest.raises(ConfigError, match="procs_per_node"):
        run_fabric(load_settings(overrides={"backend": "process",
                                            "cluster": {"procs_per_node": 2}}))
    with pytest.raises(ConfigError, match="no pair"):
        run_fabric(load_settings(overrides={"backend": "process", "cluster": {"nodes": 1}}))


# ---- a real run ------------------------------------------------------------------------------


def test_process_backend_fabric_measures_every_direction(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    settings = load_settings(overrides={
        "backend": "process", "output": str(tmp_path), "cluster": {"nodes": 3},
        "fabric": {"bw_bytes": "256K", "bw_seconds": 0.02, "lat_iters": 3, "passes": 1}})
    result = run_fabric(settings)
    report = result.report
    m = report["matrix"]["bandwidth_gbps"]
    assert all((m[i][j] or 0) > 0 for i in range(3) for j in range(3) if i != j)
    assert all(p["latency_us"] > 0 for p in report["pairs"])
    assert report["rounds"] == [[list(p) for p in r] for r in round_robin(3)]
    assert [n["name"] for n in report["nodes"]] == ["master", "worker-1", "worker-2"]
    assert {"json", "csv", "png"} <= set(result.paths) and result.paths["png"].is_file()


def test_process_backend_bisect_measures_one_round_when_healthy(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    settings = load_settings(overrides={
        "backend": "process", "output": str(tmp_path), "cluster": {"nodes": 4},
        "fabric": {"bw_bytes": "256K", "bw_seconds": 0.02, "lat_iters": 3, "passes": 1,
                   "schedule": "bisect", "slow_fraction": 0.01}})
    report = run_fabric(settings).report
    # N/2 disjoint pairs; nothing below 1 % of the median, so no second round.
    assert report["schedule"] == "bisect" and report["rounds"] == [[[0, 3], [1, 2]]]
    assert {(p["a"], p["b"]) for p in report["pairs"]} == {("master", "worker-3"),
                                                           ("worker-1", "worker-2")}
    assert report["matrix"]["bandwidth_gbps"][0][1] is None


def test_bisect_result_is_judged_on_the_measured_pairs() -> None:
    # Round 1: (0,3) slow; round 2: 0 and 3 each against a node of a fast pair -> 0 is slow.
    gbps = {(0, 3): 0.006, (1, 2): 1.0, (0, 1): 0.006, (2, 3): 0.9}
    doc = _doc(4, {**_values(4), **gbps})
    doc["schedule"] = "bisect"
    doc["bandwidth"] = [x for x in doc["bandwidth"]
                        if (min(x["src"], x["dst"]), max(x["src"], x["dst"])) in gbps]
    report = analyse(_plan(4), doc, 0.5, 3.0)
    assert report["suspects"] == ["master"] and len(report["pairs"]) == 4


def test_across_hosts_pairs_are_marked_and_compared_within_their_scope() -> None:
    import dataclasses

    plan = _plan(4)
    hosts = ("gpu-a", "gpu-b", "gpu-a", "gpu-b")
    plan = dataclasses.replace(plan, nodes=tuple(
        dataclasses.replace(n, host=h) for n, h in zip(plan.nodes, hosts)))
    # Intra-host pairs (0,2) and (1,3) at ~1 GB/s, the four inter-host pairs at ~0.2 GB/s.
    gbps = {p: (1.0 if hosts[p[0]] == hosts[p[1]] else 0.2) * (1 + 0.01 * sum(p))
            for p in itertools.combinations(range(4), 2)}
    report = analyse(plan, _doc(4, gbps), 0.5, 3.0)
    scopes = {(p["a"], p["b"]): p["scope"] for p in report["pairs"]}
    assert scopes[("master", "worker-2")] == "intra-host"
    assert scopes[("master", "worker-1")] == "inter-host"
    assert set(report["statistics"]) == {"inter-host", "intra-host"}
    assert report["status"] == "healthy" and report["nodes"][1]["host"] == "gpu-b"


@pytest.mark.parametrize(("network", "asked"), [
    ({"link": {"nodes": {"worker-1": {"rate": "50mbit"}}}}, {"network.link.nodes.worker-1.rate"}),
    ({"link": {"pairs": {"master:worker-1": {"rate": "50mbit"}}}},
     {'network.link.pairs."master:worker-1".rate'}),
    ({"management": {"subnet": "10.78.0.0/24"}}, set()),
])
def test_a_warm_cluster_refuses_per_node_links_and_a_management_network(
        network: dict[str, Any], asked: set[str]) -> None:
    from orchestrator.backends.docker.warm import ClusterShape, fit_to_cluster

    base = load_settings(overrides={"backend": "docker"})
    shape = ClusterShape.of(base, build_plan(base, "run-1", "docker"), 60.0)
    asking = load_settings(overrides={"backend": "docker", "network": network})
    with pytest.raises(ConfigError, match="--on lab: .*(per-node and per-pair|management)"):
        fit_to_cluster(asking, shape, "lab", asked=asked)


def test_a_warm_cluster_keeps_and_reports_its_per_node_and_per_pair_links() -> None:
    """Links set at `netorch up` are part of the cluster's shape: its label round-trips them, a
    run that names none gets them (its plan and report show them), one that names others is
    refused, and a label written before they were recorded still reads (as no such links)."""
    from orchestrator.backends.docker.warm import ClusterShape, fit_to_cluster

    built = load_settings(overrides={"backend": "docker", "network": {"link": {
        "rate": "1gbit", "nodes": {"worker-1": {"rate": "50mbit"}},
        "pairs": {"master:worker-1": {"delay": "5ms"}}}}})
    shape = ClusterShape.of(built, build_plan(built, "run-1", "docker"), 60.0)
    assert ClusterShape.from_label(shape.to_label()) == shape
    assert shape.link_text() == "rate 1gbit; worker-1: rate 50mbit; master:worker-1: delay 5ms"
    plain = load_settings(overrides={"backend": "docker"})
    fitted = fit_to_cluster(plain, shape, "lab", asked=set())
    assert fitted.network.link.nodes["worker-1"].rate == "50mbit"
    assert fitted.network.link.pairs["master:worker-1"].delay == "5ms"
    assert fitted.network.link.rate == "1gbit"
    same = fit_to_cluster(built, shape, "lab", asked={"network.link.nodes.worker-1.rate"})
    assert same.network.link.nodes == fitted.network.link.nodes
    other = load_settings(overrides={"backend": "docker", "network": {"link": {
        "nodes": {"worker-1": {"rate": "10mbit"}}}}})
    with pytest.raises(ConfigError, match=r"network.link.nodes=\{worker-1: rate 10mbit\} "
                                          r"\(the cluster has \{worker-1: rate 50mbit\}"):
        fit_to_cluster(other, shape, "lab", asked={"network.link.nodes.worker-1.rate"})
    old = json.loads(ClusterShape.of(plain, build_plan(plain, "run-1", "docker"), 60.0).to_label())
    del old["link_nodes"], old["link_pairs"]
    assert ClusterShape.from_label(json.dumps(old)).link_nodes == {}
