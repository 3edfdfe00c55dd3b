"""Settings: sources, precedence and every validation rule with its message."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.settings import load_settings, overrides_from_pairs, parse_set_option, parse_size


pytestmark = pytest.mark.usefixtures("isolated")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1), (1048576, 1 << 20), ("4K", 4096), ("4KB", 4096), ("4KiB", 4096),
        ("1M", 1 << 20), ("64MiB", 64 << 20), ("1G", 1 << 30), ("1g", 1 << 30), (" 2 M ", 2 << 20),
    ],
)
def test_parse_size_binary_multiples(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "M", "1.5M", "-1", "1Q", 0, True, None, "1MM"])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="size like 1M"):
        parse_size(bad)


def test_defaults() -> None:
    s = load_settings()
    assert s.cluster.nodes == 2
    assert s.network.subnet == "172.28.0.0/16"
    assert s.network.mtu == 1500
    assert s.bench.ops == ["all_reduce"]
    assert (s.bench.min_bytes, s.bench.max_bytes) == (1 << 20, 64 << 20)


def test_precedence_toml_env_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path, '[network]\nmtu = 4000\nsubnet = "10.9.0.0/24"\n[cluster]\nnodes = 3\n')
    s = load_settings(cfg)
    assert (s.network.mtu, s.network.subnet, s.cluster.nodes) == (4000, "10.9.0.0/24", 3)
    monkeypatch.setenv("NETORCH_NETWORK__MTU", "9000")
    s = load_settings(cfg)
    assert s.network.mtu == 9000
    assert s.network.subnet == "10.9.0.0/24"  # env for one key keeps the TOML's others
    s = load_settings(cfg, {"network": {"mtu": 1500}})
    assert s.network.mtu == 1500
    assert s.cluster.nodes == 3


def test_default_toml_from_cwd(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "default.toml").write_text("[cluster]\nnodes = 5\n")
    assert load_settings().cluster.nodes == 5


def test_missing_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--config: .*nope.toml does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_bad_toml_syntax(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TOML"):
        load_settings(write(tmp_path, "[network\nmtu=1"))


def test_env_comma_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETORCH_BENCH__OPS", "all_reduce,broadcast")
    monkeypatch.setenv("NETORCH_BENCH__MAX_BYTES", "8M")
    s = load_settings()
    assert s.bench.ops == ["all_reduce", "broadcast"]
    assert s.bench.max_bytes == 8 << 20


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"network": {"mtu": 20000}}, r"^network\.mtu: 20000 is outside 576\.\.9216; use 1500"),
        ({"network": {"mtu": 500}}, r"^network\.mtu: 500 is outside"),
        ({"network": {"gateway": "10.0.0.1"}},
         r"^network\.gateway: 10\.0\.0\.1 is not a usable host of 172\.28\.0\.0/16; use e\.g\. 172\.28\.0\.1"),
        ({"network": {"gateway": "172.28.0.0"}}, r"^network\.gateway: 172\.28\.0\.0 is not a usable host"),
        ({"network": {"gateway": "172.28.255.255"}}, r"^network\.gateway: .* not a usable host"),
        ({"network": {"gateway": "nope"}}, r"^network\.gateway: 'nope' is not an IPv4 address"),
        ({"network": {"ip_range": "10.1.0.0/24"}}, r"^network\.ip_range: 10\.1\.0\.0/24 is not inside subnet"),
        ({"network": {"subnet": "10.0.0.0/30"}}, r"^network\.subnet: '10\.0\.0\.0/30' is too small.*/29"),
        ({"network": {"subnet": "10.0.0.1/24"}}, r"^network\.subnet: .*host bits set; did you mean 10\.0\.0\.0/24"),
        ({"network": {"subnet": "fd00::/64"}}, r"IPv6"),
        ({"network": {"subnet": "banana"}}, r"not a subnet; write CIDR"),
        ({"network": {"subnet": "10.0.0.0/29"}, "cluster": {"nodes": 8}},
         r"^network: subnet 10\.0\.0\.0/29 has 5 usable addresses but the plan needs 8 \(1 master \+ 7 workers\); use a /28 or larger"),
        ({"network": {"subnet": "10.0.0.0/24", "ip_range": "10.0.0.0/30"}, "cluster": {"nodes": 3}},
         r"^network: ip_range 10\.0\.0\.0/30 has 1 usable addresses but the plan needs 3"),
        ({"network": {"foo": 1}}, r"^network\.foo: unknown key; known keys here: name, subnet"),
        ({"bogus": 1}, r"^bogus: unknown key"),
        ({"bench": {"min_bytes": "1Q"}}, r"^bench\.min_bytes: '1Q' is not a size"),
        ({"bench": {"step_factor": 1}}, r"^bench\.step_factor: 1 would not grow the size; use 2 or more"),
        ({"bench": {"min_bytes": "64M", "max_bytes": "1M"}}, r"^bench\.min_bytes: 67108864 is larger than bench\.max_bytes"),
        ({"bench": {"ops": "all_reduce,bogus"}}, r"^bench\.ops\.1: 'bogus' is not allowed"),
        ({"bench": {"dtype": "float8"}}, r"^bench\.dtype\.0: 'float8' is not allowed"),
        ({"env": {"FOO": "1"}}, r"^env: 'FOO' is not a known variable family; use one starting with NCCL_"),
        ({"env": {"MASTER_ADDR": "x"}}, r"^env: MASTER_ADDR is set by the plan; remove it"),
        ({"cluster": {"nodes": 0}}, r"^cluster\.nodes: 0 is invalid"),
        ({"cluster": {"nodes": "x"}}, r"^cluster\.nodes: 'x' is invalid"),
        ({"cluster": {"name": "bad name!"}}, r"^cluster\.name: 'bad name!' is not a usable name prefix"),
        ({"cluster": {"master_port": 80}}, r"^cluster\.master_port: 80 is invalid"),
        ({"backend": "kubernetes"}, r"^backend: 'kubernetes' is not a backend; use auto or one of docker, process"),
        ({"gpu": {"per_node": 1, "device_ids": [["0"], ["1"]]}}, r"^gpu: set either per_node or device_ids"),
        ({"gpu": {"device_ids": [["0"]]}}, r"^gpu\.device_ids: 1 lists for 2 nodes"),
        ({"docker": {"shm_size": "lots"}}, r"^docker\.shm_size: 'lots' is not a memory size"),
    ],
)
def test_validation_messages(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(overrides=overrides)
    assert "\n" not in str(info.value)


def test_env_value_errors_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETORCH_NETWORK__MTU", "12000")
    with pytest.raises(ConfigError, match=r"^network\.mtu: 12000"):
        load_settings()


def test_user_env_allowed_prefixes() -> None:
    s = load_settings(overrides={"env": {"NCCL_DEBUG": "INFO", "TORCH_CPP_LOG_LEVEL": "INFO"}})
    assert s.env["NCCL_DEBUG"] == "INFO"


def test_set_option_helpers() -> None:
    assert parse_set_option("network.mtu=9000") == ("network.mtu", "9000")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set_option("network.mtu")
    assert overrides_from_pairs({"network.mtu": 9000, "cluster.nodes": None, "backend": "process"}) == {
        "network": {"mtu": 9000}, "backend": "process",
    }
