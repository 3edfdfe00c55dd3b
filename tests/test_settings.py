"""Settings: sources, precedence and every validation rule with its message."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.settings import load_settings, parse_size
from orchestrator.settings_overrides import overrides_from_pairs, parse_set_option


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


# --------------------------------------------------------------------------------------------
# Hardening: every free-text setting with its grammar, bools vs numbers, host-sized buffers
# --------------------------------------------------------------------------------------------

import orchestrator.settings as settings_module  # noqa: E402
from orchestrator.app import SettingsRequest  # noqa: E402
from orchestrator.grammar import check_image_ref  # noqa: E402
from orchestrator.settings import unknown_env_warnings  # noqa: E402


@pytest.mark.parametrize("image", [
    "netorch:latest", "ubuntu", "library/ubuntu:22.04", "localhost:5000/team/img:1.0",
    "registry.example.com/a/b/c", "[::1]:5000/x:y", "a__b", "a--b.c_d",
    "img@sha256:" + "a" * 64, "img:tag@sha256:" + "0" * 64, "Registry.Example.com/lower:Tag_1",
])
def test_image_references_accepted(image: str) -> None:
    assert load_settings(overrides={"cluster": {"image": image}}).cluster.image == image
    assert load_settings(overrides={"run": {"image": image}}).run.image == image


@pytest.mark.parametrize(("image", "message"), [
    ("", r"'' is empty; name an image"),
    ("net orch", r"contains whitespace or a control character"),
    ("netorch:latest\n", r"contains whitespace or a control character \('\\n'\)"),
    ("netorch\x07", r"control character"),
    ("Netorch:latest", r"has capitals; repository names are lowercase: 'netorch:latest'"),
    ("a:b/c", r"is not an image reference; write \[registry\[:port\]/\]name\[:tag\]"),
    ("img:", r"is not an image reference"), ("-img", r"is not an image reference"),
    ("img@sha256:abc", r"is not an image reference"), ("a___b", r"is not an image reference"),
    ("img:" + "t" * 129, r"is not an image reference"), ("$(reboot)", r"is not an image reference"),
    ("a/" * 130 + "b", r"-character name; Docker allows at most 255"),
])
def test_image_references_refused(image: str, message: str) -> None:
    for section in ("cluster", "run"):
        with pytest.raises(ConfigError, match=rf"^{section}\.image: .*{message}") as info:
            load_settings(overrides={section: {"image": image}})
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=message):
        check_image_ref(image)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"network": {"name": "my net"}}, r"^network\.name: 'my net' is not a Docker network name; use 1-64"),
    ({"network": {"name": "-net"}}, r"^network\.name: '-net' is not a Docker network name"),
    ({"network": {"name": "n" * 65}}, r"^network\.name: 'n+' is not a Docker network name"),
    ({"network": {"name": "net\n"}}, r"^network\.name: 'net\\n' is not"),
    ({"docker": {"ipc_mode": "hostt"}},
     r"^docker\.ipc_mode: 'hostt' is not an IPC mode; use one of private, shareable, host, none or container:NAME"),
    ({"docker": {"ipc_mode": ""}}, r"^docker\.ipc_mode: '' is not an IPC mode"),
    ({"docker": {"ipc_mode": "container:"}}, r"^docker\.ipc_mode: 'container:' is not an IPC mode"),
    ({"docker": {"ipc_mode": "container:a b"}}, r"^docker\.ipc_mode: 'container:a b'"),
    ({"env": {"NCCL_A=B": "1"}},
     r"^env: 'NCCL_A=B' is not a variable name; .*\(to set NCCL_A to 'B', write env\.NCCL_A=B\)$"),
    ({"env": {"NCCL DEBUG": "1"}}, r"^env: 'NCCL DEBUG' is not a variable name"),
    ({"env": {"": "1"}}, r"^env: '' is not a variable name"),
    ({"env": {"NCCL_DEBUG": "IN\x00FO"}}, r"^env: .* contains a NUL character; remove it$"),
    ({"run": {"env": {"1X": "1"}}}, r"^run\.env: '1X' is not a variable name"),
    ({"run": {"env": {"A-B": "1"}}}, r"^run\.env: 'A-B' is not a variable name"),
    ({"run": {"command": ["python", "a\x00b"]}}, r"^run\.command: .* contains a NUL character"),
    ({"network": {"subnet": "0.0.0.0/0"}},
     r"^network\.subnet: '0\.0\.0\.0/0' overlaps the unspecified/'this network' block 0\.0\.0\.0/8; use a private range"),
    ({"network": {"subnet": "0.0.0.0/8"}}, r"^network\.subnet: .*unspecified"),
    ({"network": {"subnet": "169.254.0.0/16"}}, r"^network\.subnet: .*overlaps link-local 169\.254\.0\.0/16"),
    ({"network": {"subnet": "169.254.3.0/24"}}, r"^network\.subnet: .*link-local"),
    ({"network": {"subnet": "127.0.0.0/8"}}, r"^network\.subnet: .*overlaps loopback"),
    ({"network": {"subnet": "64.0.0.0/2"}}, r"^network\.subnet: .*overlaps loopback"),
    ({"network": {"subnet": "224.1.0.0/16"}}, r"^network\.subnet: .*overlaps multicast"),
    ({"network": {"subnet": "240.0.0.0/24"}}, r"^network\.subnet: .*reserved 240"),
    ({"network": {"gateway": "172.28.0.0"}}, r"^network\.gateway: 172\.28\.0\.0 is not a usable host"),
    ({"hosts": [{"name": "a", "url": "tcp://h:99999"}]}, r"^hosts\.0\.url: 'tcp://h:99999': port 99999 is outside 1\.\.65535"),
    ({"hosts": [{"name": "a", "url": "tcp://300.1.2.3:2376"}]}, r"^hosts\.0\.url: .*300\.1\.2\.3 is not an IP address"),
    ({"hosts": [{"name": "a", "url": "tcp://bad_host:2376"}]}, r"^hosts\.0\.url: .* does not name a host"),
    ({"hosts": [{"name": "a", "url": "tcp://u@h:2376"}]}, r"^hosts\.0\.url: .* does not name a host"),
    ({"hosts": [{"name": "a", "url": "tcp://h:2376\n"}]}, r"^hosts\.0\.url: .*whitespace or a control character"),
    ({"hosts": [{"name": "a", "url": "unix://docker.sock"}]}, r"^hosts\.0\.url: .*absolute path"),
    ({"hosts": [{"name": "a", "url": "http://h:2376"}]}, r"^hosts\.0\.url: 'http://h:2376' is not a Docker URL"),
    ({"hosts": [{"name": "a\n", "url": "tcp://h:2376"}]}, r"^hosts\.0\.name: 'a\\n' is not a usable host name"),
    ({"docker": {"host": "tcp://h :1"}}, r"^docker\.host: .*whitespace"),
    ({"cluster": {"name": "netorch\n"}}, r"^cluster\.name: 'netorch\\n' is not a usable name prefix"),
    ({"docker": {"shm_size": "1g\n"}}, r"^docker\.shm_size: '1g\\n' is not a memory size"),
    ({"network": {"interface": "eth0\n"}}, r"^network\.interface: 'eth0\\n' is not an interface name"),
    ({"gpu": {"driver": "nv idia"}}, r"^gpu\.driver: 'nv idia' is not a device driver name"),
    ({"metrics": {"pushgateway_url": "http://h:9091\nX: y"}}, r"^metrics\.pushgateway_url: .* is not an http\(s\) URL"),
    ({"metrics": {"pushgateway_url": "http://alice:pw @h"}}, r"^metrics\.pushgateway_url: 'http://\*\*\*@h' is not"),
])
def test_free_text_grammar(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(overrides=overrides)
    assert "\n" not in str(info.value)
    assert "pw" not in str(info.value)


@pytest.mark.parametrize("url", [
    "unix:///var/run/docker.sock", "tcp://10.0.0.2:2376", "tcp://docker-1.example.com:2376",
    "tcp://[fd00::1]:2376", "ssh://me@host", "ssh://host:2222", "tcp://h",
])
def test_docker_urls_accepted(url: str) -> None:
    s = load_settings(overrides={"hosts": [{"name": "a", "url": url}, {"name": "b", "url": url}],
                                 "docker": {"host": url}})
    assert s.hosts[0].url == url and s.docker.host == url


@pytest.mark.parametrize(("ipc", "expected"), [
    ("private", "private"), ("shareable", "shareable"), ("host", "host"), ("none", "none"),
    ("container:trainer-1", "container:trainer-1"), ("container:" + "ab12" * 16, "container:" + "ab12" * 16),
])
def test_ipc_modes_accepted(ipc: str, expected: str) -> None:
    assert load_settings(overrides={"docker": {"ipc_mode": ipc}}).docker.ipc_mode == expected


@pytest.mark.parametrize(("overrides", "message"), [
    ({"cluster": {"nodes": True}}, r"^cluster\.nodes: True is a boolean, not a number; write a number such as 2$"),
    ({"cluster": {"master_port": False}}, r"^cluster\.master_port: False is a boolean"),
    ({"train": {"lr": True}}, r"^train\.lr: True is a boolean, not a number; write a number such as 2\.5"),
    ({"docker": {"memlock": True}}, r"^docker\.memlock: True is a boolean"),
    ({"bench": {"max_bytes": True}}, r"^bench\.max_bytes: True is a boolean"),
    ({"bench": {"check": 1}}, r"^bench\.check: 1 is a number, not a boolean; write true or false$"),
    ({"network": {"internal": 0}}, r"^network\.internal: 0 is a number, not a boolean"),
    ({"metrics": {"enabled": 1.0}}, r"^metrics\.enabled: 1\.0 is a number"),
    ({"bench": {"check": "maybe"}},
     r"^bench\.check: 'maybe' is not true or false; write true or false$"),
    ({"cluster": {"nodes": "2.5"}}, r"^cluster\.nodes: '2\.5' is invalid"),
])
def test_booleans_and_numbers_stay_apart(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(overrides=overrides)


def test_strings_from_env_and_flags_still_convert(monkeypatch: pytest.MonkeyPatch) -> None:
    for text, value in (("true", True), ("false", False), ("1", True), ("0", False)):
        monkeypatch.setenv("NETORCH_BENCH__CHECK", text)
        assert load_settings().bench.check is value
        assert load_settings(overrides={"network": {"internal": text}}).network.internal is value
    monkeypatch.setenv("NETORCH_CLUSTER__NODES", "3")
    assert load_settings().cluster.nodes == 3
    s = load_settings(overrides={"cluster": {"procs_per_node": "2"}, "train": {"lr": "0.1"},
                                 "bench": {"check": False}})
    assert (s.cluster.procs_per_node, s.train.lr, s.bench.check) == (2, 0.1, False)


def test_bench_buffers_bounded_by_host_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module, "host_memory_bytes", lambda: 12 << 30)
    # process backend: every node is here. 2 nodes x 2 ranks x 3 buffers share 12 GiB -> 1 GiB.
    fits = {"backend": "process", "cluster": {"nodes": 2, "procs_per_node": 2}}
    assert load_settings(overrides={**fits, "bench": {"max_bytes": "1G"}}).bench.max_bytes == 1 << 30
    with pytest.raises(ConfigError, match=(
            r"^bench\.max_bytes: 1073741825 bytes \(1\.0 GiB\) is more than a rank can hold here: "
            r"4 rank\(s\) on this host x 3 buffers each share 12\.0 GiB of RAM, so the limit is "
            r"1073741824 bytes \(1\.0 GiB\); lower bench\.max_bytes \(-E\)")):
        load_settings(overrides={**fits, "bench": {"max_bytes": (1 << 30) + 1}})
    # docker/auto plans may run (or be rendered) elsewhere: one node's ranks count.
    s = load_settings(overrides={"cluster": {"nodes": 64, "procs_per_node": 2},
                                 "network": {"subnet": "10.0.0.0/24"}, "bench": {"max_bytes": "2G"}})
    assert s.bench.max_bytes == 2 << 30
    with pytest.raises(ConfigError, match=r"^bench\.max_bytes: .* 2 rank\(s\) on this host .* limit is 2147483648 bytes"):
        load_settings(overrides={"cluster": {"procs_per_node": 2}, "bench": {"max_bytes": (2 << 30) + 1}})
    # remote daemons: their RAM is unknown here.
    assert load_settings(overrides={"docker": {"host": "tcp://10.0.0.9:2376"},
                                    "bench": {"max_bytes": "1T"}}).bench.max_bytes == 1 << 40


def test_one_terabyte_is_refused_on_this_host() -> None:
    with pytest.raises(ConfigError, match=r"^bench\.max_bytes: 1099511627776 bytes \(1\.0 TiB\) is more than a rank can hold here: .* limit is \d+ bytes"):
        load_settings(overrides={"bench": {"max_bytes": "1T"}})


def test_unknown_netorch_variables_are_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"NETORCH_BAKEND": "docker", "NETORCH_NETWORK_MTU": "9000", "NETORCH_ZZZZZZZZZZ": "1",
           "NETORCH_RUN_ID": "x", "NETORCH_USER_TOKEN": "y", "NETORCH_NETWORK__MTU": "9000",
           "NETORCH_ENV__NCCL_DEBUG": "INFO", "PATH": "/bin"}
    assert unknown_env_warnings(env) == [
        "NETORCH_BAKEND is not a netorch setting and is ignored; did you mean NETORCH_BACKEND?",
        "NETORCH_NETWORK_MTU is not a netorch setting and is ignored; did you mean NETORCH_NETWORK__MTU?",
        "NETORCH_ZZZZZZZZZZ is not a netorch setting and is ignored; see the README's "
        "Configuration section",
    ]
    # Loading still works (a warning, not an error); a wrong key inside a section is an error.
    monkeypatch.setenv("NETORCH_BAKEND", "docker")
    assert load_settings().backend == "auto"
    assert unknown_env_warnings() == [
        "NETORCH_BAKEND is not a netorch setting and is ignored; did you mean NETORCH_BACKEND?"]
    monkeypatch.setenv("NETORCH_NETWORK__MTUU", "9000")
    with pytest.raises(ConfigError, match=r"^network\.mtuu: unknown key"):
        load_settings()


def test_cli_prints_the_warning_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from orchestrator.cli import app

    monkeypatch.setenv("NETORCH_BAKEND", "docker")
    result = CliRunner().invoke(app, ["plan", "--backend", "process"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "WARNING: NETORCH_BAKEND is not a netorch setting and is ignored; did you mean "
        "NETORCH_BACKEND?"]


def test_env_lists_as_json_or_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETORCH_BENCH__OPS", '["all_reduce", "broadcast"]')
    monkeypatch.setenv("NETORCH_BENCH__DTYPE", "float32, int8")
    monkeypatch.setenv("NETORCH_RUN__MOUNTS", '["/data:/data:ro"]')
    monkeypatch.setenv("NETORCH_GPU__CAPABILITIES", "gpu,utility")
    s = load_settings()
    assert s.bench.ops == ["all_reduce", "broadcast"]
    assert s.bench.dtype == ["float32", "int8"]
    assert s.run.mounts == ["/data:/data:ro"]
    assert s.gpu.capabilities == ["gpu", "utility"]
    for bad in ('["all_reduce",', '["all_reduce", 3]', '[["x"]]', "[}"):
        monkeypatch.setenv("NETORCH_BENCH__OPS", bad)
        with pytest.raises(ConfigError, match=r"^bench\.ops: .* is not a list of names; use a,b or a JSON list"):
            load_settings()


def test_config_path_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--config: .* is a directory; pass a TOML file"):
        load_settings(tmp_path)


def test_output_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    with pytest.raises(ConfigError, match=r"^output: '.*taken' is a file, not a directory; point output"):
        load_settings(overrides={"output": tmp_path / "taken"})
    with pytest.raises(ConfigError, match=r"^output: '.*taken' is a file, not a directory \(in '.*taken/runs'\)"):
        load_settings(overrides={"output": tmp_path / "taken" / "runs"})
    assert load_settings(overrides={"output": tmp_path / "new" / "runs"}).output == tmp_path / "new" / "runs"


def test_flag_and_set_must_agree() -> None:
    request = SettingsRequest(flags={"network.mtu": 1500}, sets=("network.mtu=9000",))
    with pytest.raises(ConfigError, match=(
            r"^network\.mtu: --set network\.mtu=9000 disagrees with the command-line value 1500; "
            r"give network\.mtu once$")):
        request.load()
    same = SettingsRequest(flags={"network.mtu": 9000, "bench.check": False},
                           sets=("network.mtu=9000", "bench.check=no", "cluster.nodes=3"))
    s = same.load()
    assert (s.network.mtu, s.bench.check, s.cluster.nodes) == (9000, False, 3)
    with pytest.raises(ConfigError, match=r"^bench\.check: --set bench\.check=yes disagrees .* false"):
        SettingsRequest(flags={"bench.check": False}, sets=("bench.check=yes",)).load()


def test_cli_refuses_flag_set_conflict_and_output_file(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from orchestrator.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["plan", "-b", "process", "--mtu", "1500", "--set", "network.mtu=9000"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: network.mtu: --set network.mtu=9000 disagrees with the command-line value 1500; "
        "give network.mtu once"]
    (tmp_path / "out.txt").write_text("")
    result = runner.invoke(app, ["bench", "-b", "process", "--output", str(tmp_path / "out.txt")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: output: '{tmp_path / 'out.txt'}' is a file, not a directory; point output "
        "(--output) at a directory (it is created when missing)"]
    assert result.exception is None or isinstance(result.exception, SystemExit)
