"""``netorch run`` inputs: mounts, env, command placeholders and command kinds (no torch, no Docker)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.errors import ConfigError
from orchestrator.userjob import (
    PLACEHOLDERS,
    UserCommand,
    VolumeMount,
    check_mounts,
    classify_command,
    expand_command,
    parse_command,
    parse_env,
    parse_mount,
)

VALUES: dict[str, str | int] = {
    "node_rank": 1, "nnodes": 2, "nproc_per_node": 4, "world_size": 8,
    "master_addr": "10.10.0.2", "master_port": 29500,
}
PLAN_ENV = frozenset({"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "NODE_RANK"})


# --------------------------------------------------------------------------- parse_mount: binds

@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "code").mkdir()
    return tmp_path


def test_relative_bind_resolves_against_base_dir(base: Path) -> None:
    assert parse_mount("./data:/data", base) == VolumeMount(str(base / "data"), "/data", False, "bind")


def test_parent_relative_bind(base: Path) -> None:
    m = parse_mount("../data:/data:ro", base / "code")
    assert m == VolumeMount(str(base / "data"), "/data", True, "bind")


def test_dot_alone_is_a_bind_of_base_dir(base: Path) -> None:
    assert parse_mount(".:/workspace2", base).source == str(base)
    assert parse_mount("..:/up", base / "code").source == str(base)


def test_absolute_bind_ignores_base_dir(base: Path) -> None:
    m = parse_mount(f"{base}/data:/in:rw", Path("/nonexistent"))
    assert m == VolumeMount(str(base / "data"), "/in", False, "bind")


def test_absolute_bind_is_normalised(base: Path) -> None:
    assert parse_mount(f"{base}/code/../data/:/in", base).source == str(base / "data")


def test_tilde_expands_to_home(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(base))
    assert parse_mount("~/data:/data", Path("/")).source == str(base / "data")
    assert parse_mount("~:/home-dir", Path("/")).source == str(base)


def test_tilde_of_unknown_user_is_refused(base: Path) -> None:
    with pytest.raises(ConfigError, match=r"--mount '~nosuchuser-xyz/d:/d'.*full path"):
        parse_mount("~nosuchuser-xyz/d:/d", base)


def test_bind_to_a_file_is_allowed(base: Path) -> None:
    (base / "cfg.yaml").write_text("a: 1\n")
    assert parse_mount("./cfg.yaml:/etc/cfg.yaml:ro", base).source == str(base / "cfg.yaml")


def test_missing_bind_source_names_the_resolved_path(base: Path) -> None:
    with pytest.raises(ConfigError) as e:
        parse_mount("./nope:/data", base)
    msg = str(e.value)
    assert "--mount './nope:/data'" in msg
    assert str(base / "nope") in msg
    assert "does not exist" in msg
    assert "\n" not in msg


def test_bind_source_with_colon_after_resolving_is_refused(tmp_path: Path) -> None:
    odd = tmp_path / "a:b"
    (odd / "data").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"contains ':'.*symlink"):
        parse_mount("./data:/data", odd)


def test_bind_mode_default_rw(base: Path) -> None:
    assert parse_mount("./data:/data", base).read_only is False
    assert parse_mount("./data:/data", base).mode == "rw"
    assert parse_mount("./data:/data:ro", base).mode == "ro"


# --------------------------------------------------------------------------- parse_mount: volumes

@pytest.mark.parametrize("name", ["data", "my-vol", "v_1.2", "0cache", "ab"])
def test_named_volume(name: str, base: Path) -> None:
    assert parse_mount(f"{name}:/cache:ro", base) == VolumeMount(name, "/cache", True, "volume")


def test_volume_name_is_not_resolved_as_a_path(base: Path) -> None:
    # `data` exists under base, but without ./ it is a volume, as with docker run -v.
    assert parse_mount("data:/data", base).kind == "volume"


@pytest.mark.parametrize("name", ["a", "-vol", ".vol", "_vol", "my vol", "vol$", "vol/x"])
def test_bad_volume_name_names_it_and_both_fixes(name: str, base: Path) -> None:
    with pytest.raises(ConfigError) as e:
        parse_mount(f"{name}:/data", base)
    msg = str(e.value)
    assert repr(name) in msg
    assert "host path (start it with /, ./, ../ or ~)" in msg
    assert "[a-zA-Z0-9][a-zA-Z0-9_.-]+" in msg


# --------------------------------------------------------------------------- parse_mount: shape

@pytest.mark.parametrize("text", ["data", "data:/a:ro:x", "data:/a:b:ro", "a:b:c:d:e"])
def test_wrong_number_of_parts(text: str, base: Path) -> None:
    with pytest.raises(ConfigError) as e:
        parse_mount(text, base)
    assert f"--mount {text!r}" in str(e.value)
    assert "SRC:DST or SRC:DST:ro|rw" in str(e.value)


def test_colon_in_target_is_refused(base: Path) -> None:
    with pytest.raises(ConfigError, match="may contain ':'"):
        parse_mount("./data:/da:ta:ro", base)


@pytest.mark.parametrize("mode", ["RO", "z", "ro,z", "rw,shared", "readonly", ""])
def test_unsupported_mode_is_named(mode: str, base: Path) -> None:
    with pytest.raises(ConfigError) as e:
        parse_mount(f"./data:/data:{mode}", base)
    assert f"mode {mode!r} is not supported" in str(e.value)
    assert "use ro (read-only) or rw (read-write)" in str(e.value)


def test_empty_source(base: Path) -> None:
    with pytest.raises(ConfigError, match=r"--mount ':/data': the source .* is empty"):
        parse_mount(":/data", base)


@pytest.mark.parametrize("target", ["data", "", "./data", "~/data"])
def test_relative_target_is_refused(target: str, base: Path) -> None:
    with pytest.raises(ConfigError) as e:
        parse_mount(f"vol:{target}", base)
    assert f"container path {target!r} is not absolute" in str(e.value)


@pytest.mark.parametrize("target", ["/", "//", "/./", "/data/..", "/.."])
def test_root_target_is_refused(target: str, base: Path) -> None:
    with pytest.raises(ConfigError, match="cannot mount over the container's root /"):
        parse_mount(f"vol:{target}", base)


@pytest.mark.parametrize(("given", "normal"), [
    ("/data/", "/data"), ("//data", "/data"), ("/a//b/./c", "/a/b/c"), ("/a/x/../b", "/a/b"),
])
def test_target_is_normalised(given: str, normal: str, base: Path) -> None:
    assert parse_mount(f"vol:{given}", base).target == normal


@pytest.mark.parametrize("text", ["vol:/da\nta", "vol\n:/data", "vol:/data\r", "vol:/d\x00"])
def test_newline_or_nul_anywhere_is_refused(text: str, base: Path) -> None:
    with pytest.raises(ConfigError, match="newline or NUL"):
        parse_mount(text, base)


def test_spec_round_trips(base: Path) -> None:
    for text in ["./data:/data:ro", "./code:/src", "cache:/root/.cache", "vol:/v/:ro"]:
        m = parse_mount(text, base)
        assert parse_mount(m.spec, Path("/elsewhere")) == m


@given(
    name=st.from_regex(r"\A[a-zA-Z0-9][a-zA-Z0-9_.-]{1,20}\Z"),
    target=st.lists(st.from_regex(r"\A[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,8}\Z"), min_size=1, max_size=4),
    ro=st.booleans(),
)
def test_volume_spec_round_trips(name: str, target: list[str], ro: bool) -> None:
    parts = [p for p in target if p not in (".", "..")]
    if not parts:
        return
    text = f"{name}:/{'/'.join(parts)}:{'ro' if ro else 'rw'}"
    m = parse_mount(text, Path("/"))
    assert m.kind == "volume" and m.read_only is ro
    assert m.spec == text
    assert parse_mount(m.spec, Path("/")) == m


# --------------------------------------------------------------------------- check_mounts

OWNED = {"/dev/shm": "the plan's shared memory", "/checkpoints": "--checkpoint-dir",
         "/workspace": "--workdir"}


def test_distinct_mounts_pass(base: Path) -> None:
    mounts = [parse_mount("./data:/data:ro", base), parse_mount("cache:/workspace/cache", base)]
    assert check_mounts(mounts, OWNED) == tuple(mounts)


def test_duplicate_targets_name_both_mounts(base: Path) -> None:
    a, b = parse_mount("./data:/data:ro", base), parse_mount("vol:/data/", base)
    with pytest.raises(ConfigError) as e:
        check_mounts([a, b], {})
    msg = str(e.value)
    assert a.spec in msg and b.spec in msg
    assert "both target /data" in msg


@pytest.mark.parametrize(("target", "owner"), sorted(OWNED.items()))
def test_owned_target_names_its_owner(target: str, owner: str, base: Path) -> None:
    m = parse_mount(f"vol:{target}", base)
    with pytest.raises(ConfigError) as e:
        check_mounts([m], OWNED)
    assert f"{target} is mounted by {owner}" in str(e.value)
    assert "vol:" in str(e.value)


def test_owned_targets_are_parameters(base: Path) -> None:
    # Without --checkpoint-dir / --workdir, the user may mount there.
    mounts = [parse_mount("vol:/checkpoints", base), parse_mount("./code:/workspace", base)]
    assert check_mounts(mounts, {"/dev/shm": "the plan"}) == tuple(mounts)


# --------------------------------------------------------------------------- parse_env

def test_env_parses_in_order_and_keeps_equals_in_value() -> None:
    env = parse_env(["B=1", "A=x=y", "EMPTY=", "_u9=  spaced  "], PLAN_ENV)
    assert env == {"B": "1", "A": "x=y", "EMPTY": "", "_u9": "  spaced  "}
    assert list(env) == ["B", "A", "EMPTY", "_u9"]


def test_env_empty() -> None:
    assert parse_env([], PLAN_ENV) == {}


def test_env_without_equals() -> None:
    with pytest.raises(ConfigError, match=r"--env 'WANDB_MODE': no '='; write NAME=VALUE"):
        parse_env(["WANDB_MODE"], PLAN_ENV)


@pytest.mark.parametrize("name", ["", "1X", "A-B", "A B", "É", "A.B"])
def test_env_bad_name(name: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_env([f"{name}=v"], PLAN_ENV)
    assert f"--env {name + '=v'!r}: {name!r} is not a variable name" in str(e.value)


@pytest.mark.parametrize("name", sorted(PLAN_ENV))
def test_env_owned_by_plan(name: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_env([f"{name}=1"], PLAN_ENV)
    assert f"the plan sets {name} on every node" in str(e.value)


def test_env_owned_set_is_a_parameter() -> None:
    assert parse_env(["RANK=3"], frozenset()) == {"RANK": "3"}


def test_env_duplicate_names_first_value() -> None:
    with pytest.raises(ConfigError) as e:
        parse_env(["LR=1", "X=2", "LR=3"], PLAN_ENV)
    assert "--env 'LR=3': LR is already set (to '1')" in str(e.value)


def test_env_nul_in_value() -> None:
    with pytest.raises(ConfigError, match="NUL"):
        parse_env(["A=x\x00y"], PLAN_ENV)


@given(st.dictionaries(st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,10}\Z"),
                       st.text(alphabet=st.characters(blacklist_characters="\x00"))))
def test_env_round_trip(env: dict[str, str]) -> None:
    assert parse_env([f"{k}={v}" for k, v in env.items()], frozenset()) == env


# --------------------------------------------------------------------------- expand_command

def test_every_placeholder_is_replaced() -> None:
    argv = ["python", "train.py", "--rank={node_rank}", "{nnodes}", "{nproc_per_node}",
            "{world_size}", "--addr", "{master_addr}:{master_port}"]
    assert expand_command(argv, VALUES) == (
        "python", "train.py", "--rank=1", "2", "4", "8", "--addr", "10.10.0.2:29500")


def test_placeholders_constant_matches_the_documented_set() -> None:
    assert set(PLACEHOLDERS) == set(VALUES)


def test_escaped_placeholder_is_literal() -> None:
    assert expand_command(["{{node_rank}}", "a{{x}}b"], VALUES) == ("{node_rank}", "a{x}b")


@pytest.mark.parametrize("arg", [
    '{"a": 1}', '{"a": {"b": [1, 2]}}', "{}", "{{}}", "{0}", "{ node_rank }", "}{", "{", "}",
    "{{", "}}", "{1abc}", "{a-b}", "f{}g", "${HOME}", "${RANK:-0}", "${{node_rank}}", "$HOME",
    "echo ${NODE_RANK} && train", "a}}b{{c",
])
def test_non_placeholders_pass_through(arg: str) -> None:
    assert expand_command(["cmd", arg], VALUES) == ("cmd", arg)


def test_placeholder_inside_json_is_replaced() -> None:
    arg = json.dumps({"rank": "{node_rank}", "nested": {"a": 1}})
    out = expand_command([arg], VALUES)[0]
    assert json.loads(out) == {"rank": "1", "nested": {"a": 1}}


def test_shell_form_next_to_placeholder() -> None:
    assert expand_command(["${X}{node_rank}${Y}"], VALUES) == ("${X}1${Y}",)


def test_unknown_placeholder_names_it_and_lists_known() -> None:
    with pytest.raises(ConfigError) as e:
        expand_command(["python", "t.py", "--out=/o/{rank}"], VALUES)
    msg = str(e.value)
    assert "'--out=/o/{rank}'" in msg
    assert "unknown placeholder {rank}" in msg
    for name in PLACEHOLDERS:
        assert "{" + name + "}" in msg
    assert "write {{rank}} for the literal text {rank}" in msg
    assert "\n" not in msg


def test_placeholder_names_are_case_sensitive() -> None:
    with pytest.raises(ConfigError, match=r"unknown placeholder \{NODE_RANK\}"):
        expand_command(["{NODE_RANK}"], VALUES)


def test_known_set_is_the_values_given() -> None:
    assert expand_command(["{x}"], {"x": "y"}) == ("y",)
    with pytest.raises(ConfigError, match=r"unknown placeholder \{node_rank\}; known: \{x\}"):
        expand_command(["{node_rank}"], {"x": "y"})


def test_empty_command_is_refused() -> None:
    with pytest.raises(ConfigError, match="no command given; put it after --"):
        expand_command([], VALUES)


def test_nul_in_argument_is_refused() -> None:
    with pytest.raises(ConfigError, match="NUL"):
        expand_command(["a\x00b"], VALUES)


def test_values_are_not_re_expanded() -> None:
    assert expand_command(["{master_addr}"], {"master_addr": "{node_rank}", "node_rank": 0}) == (
        "{node_rank}",)


NO_BRACES = st.text(alphabet=st.characters(blacklist_characters="{}\x00"))


@given(st.lists(NO_BRACES, max_size=6))
def test_text_without_braces_is_unchanged(argv: list[str]) -> None:
    assert expand_command(["x", *argv], VALUES) == ("x", *argv)


@given(st.lists(st.tuples(NO_BRACES, st.sampled_from(PLACEHOLDERS)), min_size=1, max_size=5),
       NO_BRACES)
def test_placeholders_in_arbitrary_text(pieces: list[tuple[str, str]], tail: str) -> None:
    # A '$' right before '{' would make it shell syntax: keep pieces from ending in '$'.
    pieces = [(text.rstrip("$"), name) for text, name in pieces]
    template = "".join(f"{text}{{{name}}}" for text, name in pieces) + tail
    expected = "".join(f"{text}{VALUES[name]}" for text, name in pieces) + tail
    escaped = "".join(f"{text}{{{{{name}}}}}" for text, name in pieces) + tail
    literal = "".join(f"{text}{{{name}}}" for text, name in pieces) + tail
    assert expand_command([template], VALUES) == (expected,)
    assert expand_command([escaped], VALUES) == (literal,)


JSON_SAFE = st.recursive(
    st.none() | st.booleans() | st.integers() | NO_BRACES,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(NO_BRACES, children, max_size=3),
    max_leaves=10,
)


@given(JSON_SAFE)
def test_json_arguments_pass_through(value: object) -> None:
    arg = json.dumps(value)
    assert expand_command([arg], VALUES) == (arg,)


# --------------------------------------------------------------------------- parse_command

@pytest.mark.parametrize(("argv", "expected"), [
    (["python", "-m", "pkg.train", "--lr", "0.1"],
     UserCommand("python-module", "pkg.train", ("--lr", "0.1"),
                 ("python", "-m", "pkg.train", "--lr", "0.1"))),
    (["python3", "-mpkg", "a"], UserCommand("python-module", "pkg", ("a",), ("python3", "-mpkg", "a"))),
    (["python3.11", "-m", "m"], UserCommand("python-module", "m", (), ("python3.11", "-m", "m"))),
    (["python", "train.py", "--steps", "5"],
     UserCommand("python-script", "train.py", ("--steps", "5"), ("python", "train.py", "--steps", "5"))),
    (["python3", "/w/src/train.py"],
     UserCommand("python-script", "/w/src/train.py", (), ("python3", "/w/src/train.py"))),
    (["bash", "run.sh", "x"], UserCommand("exec", "bash", ("run.sh", "x"), ("bash", "run.sh", "x"))),
    (["./train"], UserCommand("exec", "./train", (), ("./train",))),
])
def test_parse_command(argv: list[str], expected: UserCommand) -> None:
    assert parse_command(argv) == expected
    assert classify_command(argv) == expected.kind


@pytest.mark.parametrize("argv", [
    ["python"],                         # a REPL
    ["python", "-m"],                   # python reports the missing module itself
    ["python", "-c", "print(1)"],
    ["python", "-"],
    ["python", "-u", "train.py"],       # interpreter options: a fork could not honour them
    ["python", "-X", "dev", "-m", "m"],
    ["/usr/bin/python3", "train.py"],   # by path: maybe not the launcher's interpreter
    ["/opt/venv/bin/python", "-m", "m"],
    ["python2x", "t.py"],
    ["pythonw", "t.py"],
    ["torchrun", "--nproc-per-node", "2", "train.py"],
    ["env", "A=1", "python", "t.py"],
])
def test_exec_commands(argv: list[str]) -> None:
    cmd = parse_command(argv)
    assert cmd.kind == "exec"
    assert (cmd.target, *cmd.args) == tuple(argv)


def test_parse_command_empty() -> None:
    with pytest.raises(ConfigError, match="no command given"):
        parse_command([])


@given(st.lists(st.sampled_from(["python", "python3", "-m", "-mx", "-u", "t.py", "a"]) | st.text(),
                min_size=1, max_size=5))
def test_pieces_rebuild_argv(argv: list[str]) -> None:
    cmd = parse_command(argv)
    assert cmd.argv == tuple(argv)
    head = argv[0]
    rebuilt = {
        "exec": [(cmd.target, *cmd.args)],
        "python-script": [(head, cmd.target, *cmd.args)],
        "python-module": [(head, "-m", cmd.target, *cmd.args), (head, "-m" + cmd.target, *cmd.args)],
    }[cmd.kind]
    assert cmd.argv in rebuilt
