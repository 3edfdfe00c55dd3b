"""Hostile input for every free-text setting: it loads, or it is one ConfigError line naming the field.

Property tests (hypothesis): random strings with newlines, ``$``, ``#``, quotes, unicode, control
characters and great length go into ``cluster.image``, ``run.image``, ``network.name``,
``docker.ipc_mode``, ``env`` and ``run.env`` keys and values through the three ways settings
arrive: ``load_settings`` overrides, ``NETORCH_*`` environment variables and the CLI's ``--set``.
Any other exception (a pydantic error, a traceback, a KeyError) fails the test. The number of
cases each path ran is printed at the end of the module (``pytest -s``) and checked.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.errors import ConfigError
from orchestrator.settings import Settings, load_settings

pytestmark = pytest.mark.usefixtures("isolated")

CASES: Counter[str] = Counter()
EXAMPLES = {"overrides": 400, "environment": 250, "cli": 150}

# (field named in the message, section or None, key) -- env/run.env take the string as a key
# ("key") or as a value ("value").
FIELDS = [
    ("cluster.image", "cluster", "image"),
    ("run.image", "run", "image"),
    ("network.name", "network", "name"),
    ("docker.ipc_mode", "docker", "ipc_mode"),
    ("env", None, "key"),
    ("env", None, "value"),
    ("run.env", "run", "key"),
    ("run.env", "run", "value"),
]

_PIECES = st.sampled_from([
    "\n", "\r\n", "$", "${HOME}", "$(reboot)", "`id`", "#", '"', "'", "\\", "\x00", "\x07", "\x1b[31m",
    "\t", " ", "=", ".", ":", "@", "/", "__", "é", "ß", "🙂", "\u202e", "\ufeff", "netorch", "latest",
    "NCCL_DEBUG", "container:", "sha256:" + "a" * 64, "[::1]", "-", "_",
])
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
HOSTILE = st.one_of(
    _TEXT,
    st.lists(st.one_of(_PIECES, _TEXT), max_size=12).map("".join),
    st.builds(lambda piece, n: piece * n, _PIECES, st.integers(50, 600)),  # very long
)


@pytest.fixture(scope="module", autouse=True)
def report_cases() -> Iterator[None]:
    yield
    print(f"\nhardening cases: {dict(CASES)}, total {sum(CASES.values())}")


def _nested(section: str | None, key: str, text: str) -> dict[str, object]:
    if key in ("key", "value"):
        env = {text: "1"} if key == "key" else {"NCCL_DEBUG" if section is None else "MY_VAR": text}
        return {"env": env} if section is None else {section: {"env": env}}
    assert section is not None
    return {section: {key: text}}


def _check_error(field: str, message: str) -> None:
    assert message.startswith(field), (field, message)
    assert "\n" not in message and "\r" not in message, message


@settings(max_examples=EXAMPLES["overrides"], deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(FIELDS), text=HOSTILE)
def test_overrides_load_or_name_the_field(where: tuple[str, str | None, str], text: str) -> None:
    field, section, key = where
    CASES["overrides"] += 1
    try:
        loaded = load_settings(overrides=_nested(section, key, text))
    except ConfigError as e:
        _check_error(field, str(e))
    else:
        assert isinstance(loaded, Settings)
        assert "\x00" not in text  # a NUL never loads


def _env_name(section: str | None, key: str, text: str) -> tuple[str, str]:
    if key == "key":
        prefix = "NETORCH_ENV__" if section is None else "NETORCH_RUN__ENV__"
        return prefix + text, "1"
    if key == "value":
        return ("NETORCH_ENV__NCCL_DEBUG" if section is None else "NETORCH_RUN__ENV__MY_VAR"), text
    assert section is not None
    return f"NETORCH_{section.upper()}__{key.upper()}", text


@settings(max_examples=EXAMPLES["environment"], deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(FIELDS), text=HOSTILE)
def test_environment_loads_or_names_the_field(where: tuple[str, str | None, str], text: str) -> None:
    field, section, key = where
    name, value = _env_name(section, key, text)
    with pytest.MonkeyPatch.context() as mp:
        try:
            mp.setenv(name, value)
        except (ValueError, UnicodeEncodeError):
            assume(False)  # the OS itself refuses it ('=' in a name, NUL): nothing to load
        if os.environ.get(name) != value:
            assume(False)
        CASES["environment"] += 1
        try:
            load_settings()
        except ConfigError as e:
            _check_error(field, str(e))


@settings(max_examples=EXAMPLES["cli"], deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(FIELDS), text=HOSTILE)
def test_cli_set_loads_or_names_the_field(where: tuple[str, str | None, str], text: str) -> None:
    field, section, key = where
    if key == "key":
        item = f"{field}.{text}=1"
        # --set splits at the first '=' and strips: the key the settings see is this one.
        seen = item.partition("=")[0].strip()
        field = field if seen.startswith(field + ".") else "--set"
    elif key == "value":
        item = f"{field}.{'NCCL_DEBUG' if section is None else 'MY_VAR'}={text}"
    else:
        item = f"{field}={text}"
    CASES["cli"] += 1
    result = CliRunner().invoke(app, ["plan", "--backend", "process", "--json", "--set", item])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        item, result.exception)
    if result.exit_code == 0:
        assert result.stdout.startswith("{")
        return
    assert result.exit_code == 2, (item, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, (item, result.stderr)
    assert lines[0].startswith("error: ")
    assert lines[0].removeprefix("error: ").startswith(field), (item, lines[0])


def test_every_path_ran_its_cases() -> None:
    # Runs last in this module: each property above ran (hypothesis may skip a few env cases the
    # OS refuses, never most of them).
    assert CASES["overrides"] >= EXAMPLES["overrides"]
    assert CASES["cli"] >= EXAMPLES["cli"]
    assert CASES["environment"] >= EXAMPLES["environment"] // 2
