"""Command-line overrides of settings: ``--set KEY=VALUE`` items and flag values, keyed by the
settings' dotted names (``network.mtu``), turned into the nested dict ``load_settings`` takes.

A flag and a ``--set`` item that give one key different values are refused rather than one
silently winning (:func:`refuse_flag_set_conflicts`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.settings_errors import show_loc


def key_parts(dotted: str) -> list[str]:
    """``network.link.pairs."master:worker-1".rate`` -> its keys, a double-quoted part one key
    (as in TOML), its quotes dropped; unquoted dots separate keys."""
    parts, current, quoted = [], "", False
    for char in dotted:
        if char == '"':
            quoted = not quoted
        elif char == "." and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    if quoted:  # shown as parsed so far: a hostile key stays one printable line
        unclosed = '"' + current
        raise ConfigError(f"{show_loc([*parts, unclosed])}: a key's opening quote has no "
                          "closing one; write e.g. "
                          'network.link.pairs."master:worker-1".rate')
    return [*parts, current]


def _deep_set(target: dict[str, Any], dotted: str, value: object) -> None:
    node = target
    *parents, leaf = key_parts(dotted)
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{show_loc(key_parts(dotted))}: {part!r} is not a section; "
                              "check the key")
    node[leaf] = value


def overrides_from_pairs(pairs: Mapping[str, object]) -> dict[str, Any]:
    """``{"network.mtu": 9000}`` -> ``{"network": {"mtu": 9000}}`` (``None`` values dropped)."""
    out: dict[str, Any] = {}
    for key, value in pairs.items():
        if value is not None:
            _deep_set(out, key, value)
    return out


def parse_set_option(item: str) -> tuple[str, object]:
    """``--set network.mtu=9000`` -> ``("network.mtu", "9000")``."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set network.mtu=9000")
    return key.strip(), value.strip()


def _flag_text(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _same_value(flag: object, text: object) -> bool:
    """Whether a ``--set`` string says what a typed flag value says (``9000`` and ``"9000"``,
    ``True`` and ``"yes"``), so repeating one value both ways is no conflict."""
    text = str(text).strip()
    if isinstance(flag, bool):
        return text.lower() in (("true", "1", "yes", "on") if flag else ("false", "0", "no", "off"))
    if isinstance(flag, (int, float)):
        try:
            return float(text) == float(flag)
        except ValueError:
            return False
    return _flag_text(flag) == text


def refuse_flag_set_conflicts(flags: Mapping[str, object], sets: Mapping[str, object]) -> None:
    """ConfigError when a flag and a ``--set`` item give one key different values
    (``--mtu 1500 --set network.mtu=9000``): flags would win silently, so ask which is meant."""
    for key, value in flags.items():
        if value is not None and key in sets and not _same_value(value, sets[key]):
            raise ConfigError(
                f"{key}: --set {key}={sets[key]!s} disagrees with the command-line value "
                f"{_flag_text(value)}; give {key} once"
            )
