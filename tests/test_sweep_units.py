"""Unit tier of the MTU sweep, link emulation and doctor: no daemon, no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from orchestrator.backends.docker import GATE_FILE, container_create_kwargs, gate_command
from orchestrator.doctor import _sections, sleeping_plan
from orchestrator.errors import ConfigError
from orchestrator.netprobe import ProbeNode, _parse_tcp, path_mtu, reply_wait
from orchestrator.backends.docker.linkem import tc_commands
from orchestrator.plan import LinkSpec, build_plan, with_start_gate
from orchestrator.settings import load_settings
from orchestrator.sweep import (
    Axis,
    run_timing,
    timing_line,
    timing_summary,
    aggregate,
    large_sizes,
    parse_vary,
    recommend,
    ring_pairs,
    sockets_preset,
    sockets_preset_for,
    sweep_order,
    variant_problems,
    verdicts,
)


def settings(**network: Any) -> Any:
    return load_settings(None, {"network": {"subnet": "10.219.9.0/24", **network}})


# ---- settings and plan ----------------------------------------------------------------------


def test_link_settings_validate_and_normalise() -> None:
    s = settings(link={"rate": "1GBit", "delay": "50us", "jitter": "5us", "loss": "0.1"})
    assert (s.network.link.rate, s.network.link.loss) == ("1gbit", "0.1%")
    for bad, needle in (({"rate": "fast"}, "network.link.rate"),
                        ({"delay": "5 parsecs"}, "network.link.delay"),
                        ({"loss": "120%"}, "network.link.loss"),
                        ({"jitter": "5us"}, "network.link.jitter")):
        with pytest.raises(ConfigError, match=needle):
            settings(link=bad)


def test_no_link_means_no_capability_and_no_gate() -> None:
    plan = build_plan(settings(), "run-1", "docker")
    assert plan.network.link is None
    assert plan.runtime.cap_add == () and not plan.runtime.start_gate
    kw = container_create_kwargs(plan, plan.master, "net-id", "1.41")
    assert "cap_add" not in kw and kw["command"] == list(plan.master.command)


def test_link_grants_net_admin_and_gates_the_workload() -> None:
    plan = build_plan(settings(link={"rate": "1gbit"}), "run-1", "docker")
    assert plan.network.link == LinkSpec(rate="1gbit")
    assert plan.runtime.cap_add == ("NET_ADMIN",) and plan.runtime.start_gate
    kw = container_create_kwargs(plan, plan.master, "net-id", "1.41")
    assert kw["cap_add"] == ["NET_ADMIN"]
    cmd = kw["command"]
    assert cmd[:2] == ["sh", "-c"] and GATE_FILE in cmd[2]
    # The workload runs without NET_ADMIN: setpriv drops it from the bounding set.
    assert "--bounding-set -net_admin" in cmd[2]
    assert cmd[4:] == list(plan.master.command)


def test_gate_without_capabilities_drops_nothing() -> None:
    plan = with_start_gate(build_plan(settings(), "run-1", "docker"))
    cmd = gate_command(plan.runtime, ("torchrun", "x"))
    assert "setpriv" not in cmd[2] and cmd[-2:] == ["torchrun", "x"]


def test_tc_commands_rate_only_and_with_netem() -> None:
    (tbf,) = tc_commands(LinkSpec(rate="1gbit"))
    assert tbf[:8] == ("tc", "qdisc", "add", "dev", "eth0", "root", "handle", "1:")
    assert tbf[8:11] == ("tbf", "rate", "1000000000bit")
    netem, child = tc_commands(LinkSpec(rate="10gbit", delay="50us", jitter="5us", loss="1%"))
    assert netem[-6:] == ("netem", "delay", "50us", "5us", "loss", "1%")
    assert child[5:9] == ("parent", "1:1", "handle", "10:") and "tbf" in child


def test_sleeping_plan_replaces_commands_only() -> None:
    plan = build_plan(settings(), "run-1", "docker")
    probe = sleeping_plan(plan, net_admin=True)
    assert all(n.command == ("sleep", "3600") for n in probe.nodes)
    assert probe.runtime.cap_add == ("NET_ADMIN",)
    assert [n.env for n in probe.nodes] == [n.env for n in plan.nodes]


# ---- sweep ----------------------------------------------------------------------------------


def test_sweep_order_interleaves() -> None:
    order = sweep_order([Axis("network.mtu", (1500, 4000, 9000))], 2)
    assert [p.value("network.mtu") for p in order] == [1500, 4000, 9000, 1500, 4000, 9000]
    assert [p.repeat for p in order] == [0, 0, 0, 1, 1, 1]
    assert [p.index for p in order] == list(range(6))
    rates = sweep_order([Axis("network.link.rate", ("1gbit", "10gbit")),
                         Axis("network.mtu", (1500, 9000))], 1)
    assert [(p.value("network.link.rate"), p.value("network.mtu")) for p in rates] == [
        ("1gbit", 1500), ("1gbit", 9000), ("10gbit", 1500), ("10gbit", 9000)]
    assert rates[1].label == "network.link.rate=1gbit network.mtu=9000"


def test_ring_pairs() -> None:
    plan2 = build_plan(settings(), "run-1", "docker")
    assert ring_pairs(plan2, 5) == [(0, 1)]
    plan4 = build_plan(load_settings(None, {"cluster": {"nodes": 4}}), "run-1", "docker")
    assert ring_pairs(plan4, 5) == [(0, 1), (1, 2), (2, 3), (3, 0)]
    assert ring_pairs(plan4, 1) == [(0, 1)]


def test_recommend_names_best_only_beyond_spread() -> None:
    clear = recommend({1500: [1.0, 1.05, 0.98], 9000: [1.5, 1.55, 1.45]}, {}, "g")
    assert clear.best_mtu == 9000 and "use MTU 9000" in clear.text
    noisy = recommend({1500: [1.0, 1.6, 0.9], 9000: [1.3, 1.2, 1.5]}, {}, "g")
    assert noisy.best_mtu is None and "no significant difference" in noisy.text
    single = recommend({1500: [1.0], 9000: [2.0]}, {}, "g")
    assert single.best_mtu is None and "no significant difference" in single.text
    skipped = recommend({1500: [1.0, 1.0], 9000: [2.0, 2.0]}, {9000: "MTU 1500 seen"}, "g")
    assert skipped.best_mtu is None and "MTU 9000 not compared" in skipped.text


def _record(mtu: int, repeat: int, busbw: dict[int, float], tcp: float,
            problems: list[str] | None = None) -> dict[str, Any]:
    return {
        "index": 0, "repeat": repeat, "mtu": mtu, "link_rate": None, "problems": problems or [],
        "probes": {"tcp_single": [{"bits_per_second": tcp * 8e9}], "tcp_parallel": []},
        "results": [{"op": "all_reduce", "dtype": "float32", "in_place": True, "size_bytes": s,
                     "busbw_gbps": b} for s, b in busbw.items()],
    }


def test_run_timing_splits_the_wall_time() -> None:
    """probes + the ranks' own measurement + the rest = the run's wall time; the summary takes
    medians and the terminal line names the probes' knob."""
    t = run_timing(10.0, 4.5, 5.0)
    assert t == {"wall_s": 10.0, "probes_s": 4.5, "measure_s": 5.0, "other_s": 0.5}
    assert run_timing(3.0, 1.0, None) == {"wall_s": 3.0, "probes_s": 1.0, "measure_s": None,
                                          "other_s": 2.0}
    runs = [{"timing": run_timing(w, 4.0, 5.0)} for w in (10.0, 12.0, 30.0)] + [{}]
    summary = timing_summary(runs)
    assert summary == {"wall_s": 12.0, "probes_s": 4.0, "measure_s": 5.0, "other_s": 3.0}
    line = timing_line({"timing": summary})
    assert line is not None and line.startswith("time per run (median): 12.0 s = probes 4.0 s")
    assert "--tcp-seconds" in line and "measurement 5.0 s" in line
    assert timing_line({"timing": timing_summary([])}) is None


def test_aggregate_and_verdicts() -> None:
    recs = [_record(1500, 0, {1 << 20: 0.5, 4 << 20: 1.0}, 2.0),
            _record(9000, 0, {1 << 20: 0.6, 4 << 20: 1.5}, 3.0),
            _record(1500, 1, {1 << 20: 0.7, 4 << 20: 1.2}, 2.0),
            _record(9000, 1, {1 << 20: 0.8, 4 << 20: 1.7}, 3.0)]
    rows = aggregate(recs)
    big = [r for r in rows if r["size_bytes"] == 4 << 20]
    assert [(r["mtu"], r["busbw_median"], r["busbw_min"], r["busbw_max"]) for r in big] == [
        (1500, pytest.approx(1.1), 1.0, 1.2), (9000, pytest.approx(1.6), 1.5, 1.7)]
    assert big[0]["efficiency"] == pytest.approx(1.1 / 2.0)
    assert large_sizes([1 << 20, 2 << 20, 4 << 20, 8 << 20]) == [2 << 20, 4 << 20, 8 << 20]
    (v,) = verdicts(recs)
    assert v.best_mtu == 9000


# ---- probes and doctor parsing --------------------------------------------------------------


@dataclass
class _Exec:
    exit_code: int
    output: bytes


class FakeContainer:
    """Answers ping like a path whose MTU is ``path``."""

    name = "fake"

    def __init__(self, path: int) -> None:
        self.path = path

    def exec_run(self, argv: list[str], **_: Any) -> _Exec:
        size = int(argv[argv.index("-s") + 1]) + 28
        return _Exec(0 if size <= self.path else 1, b"")


def test_path_mtu_verdicts() -> None:
    node = ProbeNode("a", "10.0.0.2", FakeContainer(1500))
    assert path_mtu(node, "b", "10.0.0.3", 1500).ok
    low = path_mtu(ProbeNode("a", "10.0.0.2", FakeContainer(1400)), "b", "10.0.0.3", 1500)
    assert not low.ok and not low.fits
    high = path_mtu(ProbeNode("a", "10.0.0.2", FakeContainer(9000)), "b", "10.0.0.3", 1500)
    assert not high.ok and high.fits and not high.one_more_fails


def test_reply_wait_follows_the_round_trip() -> None:
    """The too-large probe waits ten round trips of the fitting one, within 0.1..1 s."""
    def out(avg_ms: float) -> str:
        return (f"1 packets transmitted, 1 received, 0% packet loss, time 0ms\n"
                f"rtt min/avg/max/mdev = {avg_ms}/{avg_ms}/{avg_ms}/0.000 ms\n")
    assert reply_wait(out(0.071)) == "0.100"  # a local bridge: the floor
    assert reply_wait(out(25.0)) == "0.250"  # an emulated 12.5 ms delay each way
    assert reply_wait(out(400.0)) == "1.000"  # never longer than a plain ping would wait
    assert reply_wait("ping: connect: Network is unreachable") == "1"


def test_parse_tcp_outputs() -> None:
    assert _parse_tcp('{"end": {"sum_received": {"bits_per_second": 8e9}}}', True) == 8e9
    assert _parse_tcp('{"error": "unable to connect"}', True) is None
    assert _parse_tcp('{"tool": "tcptest", "bits_per_second": 1e9}', False) == 1e9


def test_doctor_sections() -> None:
    text = "@@addr\n1: lo inet 127.0.0.1/8\n@@shm\nshm 65536 0 65536 0% /dev/shm\n@@end\n"
    s = _sections(text)
    assert s["addr"] == ["1: lo inet 127.0.0.1/8"] and s["shm"][0].split()[1] == "65536"


def _vrecord(variant: dict[str, Any], repeat: int, busbw: float,
             problems: list[str] | None = None) -> dict[str, Any]:
    rec = _record(int(variant.get("network.mtu", 1500)), repeat, {4 << 20: busbw}, 1.0, problems)
    return {**rec, "variant": variant, "label": " ".join(f"{k}={v}" for k, v in variant.items())}


def test_verdicts_per_axis_of_a_two_by_two_sweep() -> None:
    recs = []
    for repeat in range(3):
        for ifname in ("eth0", "eth0,eth0"):
            for mtu in (1500, 9000):
                # Two connections help clearly; the MTU changes nothing beyond noise.
                value = (2.0 if ifname == "eth0,eth0" else 1.0) + 0.05 * repeat
                recs.append(_vrecord({"env.GLOO_SOCKET_IFNAME": ifname, "network.mtu": mtu},
                                     repeat, value))
    rows = aggregate(recs)
    assert len(rows) == 4
    assert {(r["env.GLOO_SOCKET_IFNAME"], r["network.mtu"]) for r in rows} == {
        (i, m) for i in ("eth0", "eth0,eth0") for m in (1500, 9000)}
    out = verdicts(recs)
    by_axis: dict[str, list[Any]] = {}
    for v in out:
        by_axis.setdefault(v.axis, []).append(v)
    assert len(by_axis["env.GLOO_SOCKET_IFNAME"]) == 2 and len(by_axis["network.mtu"]) == 2
    assert all(v.best == "eth0,eth0" and "use env.GLOO_SOCKET_IFNAME=eth0,eth0" in v.text
               for v in by_axis["env.GLOO_SOCKET_IFNAME"])
    assert all(v.best is None and v.best_mtu is None for v in by_axis["network.mtu"])


def test_parse_vary() -> None:
    assert parse_vary("env.NCCL_SOCKET_NTHREADS=1, 2,4,2") == Axis(
        "env.NCCL_SOCKET_NTHREADS", ("1", "2", "4"))
    assert parse_vary('env.GLOO_SOCKET_IFNAME=["eth0","eth0,eth0"]') == Axis(
        "env.GLOO_SOCKET_IFNAME", ("eth0", "eth0,eth0"))
    assert parse_vary("network.link.rate=none,1gbit") == Axis("network.link.rate", (None, "1gbit"))
    for bad, words in (("env.X", "expected KEY=V1,V2"), ("network.subnet=10.0.0.0/24", "fixes"),
                       ("backend=process", "fixes"), ("env.X=[1,", "no JSON list"),
                       ('env.X=[{"a":1}]', "must be a JSON list"), ("env.X=,", "names no value")):
        with pytest.raises(ConfigError, match=words):
            parse_vary(bad)


def test_sockets_preset_follows_the_backend() -> None:
    (gloo,) = sockets_preset("gloo", "eth0")
    assert gloo == Axis("env.GLOO_SOCKET_IFNAME", ("eth0", "eth0,eth0", "eth0,eth0,eth0,eth0"))
    assert [a.key for a in sockets_preset("nccl", "eth0")] == [
        "env.NCCL_SOCKET_NTHREADS", "env.NCCL_NSOCKS_PERTHREAD"]


def test_sockets_preset_uses_the_plans_fabric_interface() -> None:
    """With a management network the fabric is eth1: the preset lists eth1, not the eth0 default."""
    plain = load_settings(None, {"network": {"subnet": "10.219.9.0/24"}})
    assert sockets_preset_for(plain) == sockets_preset("gloo", "eth0")
    mgmt = load_settings(None, {"network": {"subnet": "10.219.9.0/24",
                                            "management": {"subnet": "10.219.10.0/24"}}})
    (axis,) = sockets_preset_for(mgmt)
    assert axis.values == ("eth1", "eth1,eth1", "eth1,eth1,eth1,eth1")


def test_variant_problems_read_every_rank_env() -> None:
    variant = (("env.GLOO_SOCKET_IFNAME", "eth0,eth0"), ("network.mtu", 1500),
               ("bench.blocking", "0"))
    good = {"ranks": [{"rank": r, "env": {"GLOO_SOCKET_IFNAME": "eth0,eth0"}} for r in (0, 1)],
            "settings": {"blocking": False}}
    assert variant_problems(variant, good) == []
    bad = {"ranks": [{"rank": 0, "env": {"GLOO_SOCKET_IFNAME": "eth0,eth0"}}, {"rank": 1}],
           "settings": {"blocking": True}}
    problems = variant_problems(variant, bad)
    assert problems[0].startswith("rank 1: GLOO_SOCKET_IFNAME=None")
    assert "blocking=True" in problems[1]
