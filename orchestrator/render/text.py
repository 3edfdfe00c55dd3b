"""Text both renderers share: safe comment lines and a YAML dumper for generated files."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Any, Final

import yaml


# Characters that may not appear raw in a comment line: controls (line feed, NUL, ESC), format
# characters (bidi overrides, BOM), YAML 1.1's other line breaks (NEL is Cc; LS/PS are Zl/Zp),
# surrogates, private use and unassigned code points.
_UNSAFE_IN_COMMENT: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})

# Plain scalars some YAML reader takes for a non-string although PyYAML (YAML 1.1) writes them
# unquoted: Go's base-0 integers (0o17, 0b1, 1_000; go-yaml v2/v3: kubectl, compose v2), YAML 1.2
# floats without a dot (1e3), go-yaml v2's y/n booleans, plus the rest of those schemas' numbers,
# booleans and nulls (PyYAML already quotes most of them; quoting them again costs nothing).
_NOT_A_PLAIN_STRING: Final = re.compile(r"""
      [-+]?(?:0[bB][01_]+|0[oO][0-7_]+|0[xX][0-9a-fA-F_]+|[0-9][0-9_]*)
    | [-+]?(?:\.[0-9_]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?
    | [-+]?\.(?:inf|Inf|INF) | \.(?:nan|NaN|NAN)
    | [yYnN] | yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF
    | ~ | null|Null|NULL
""", re.VERBOSE)


def comment_text(value: object) -> str:
    """``value`` as text that cannot leave a YAML comment line (or break the stream).

    Backslashes and every control, format, line-separator, surrogate, private-use or unassigned
    character become Python-style escapes (``\\n``, ``\\x1b``, ``\\u2028``), so the result is one
    printable line that shows what the value holds. Plain text is returned as it is.
    """
    text = str(value)
    return "".join(
        ch.encode("unicode_escape").decode("ascii")
        if ch == "\\" or unicodedata.category(ch) in _UNSAFE_IN_COMMENT else ch
        for ch in text
    )


def comment_block(lines: Iterable[str]) -> str:
    """``lines`` as a YAML comment block: each through :func:`comment_text`, each behind ``# ``."""
    return "".join(f"# {comment_text(line)}".rstrip() + "\n" for line in lines)


# libyaml's emitter writes the same text as PyYAML's pure-Python one about five times faster;
# a compose file of 10,000 services is 17 MB of YAML.
_SafeDumper = yaml.CSafeDumper if yaml.__with_libyaml__ else yaml.SafeDumper


class RenderDumper(_SafeDumper):  # type: ignore[valid-type,misc]
    """PyYAML's safe dumper (on libyaml when it is there), plus: no anchors/aliases (they
    confuse readers of generated files) and strings quoted wherever YAML 1.2 or Go's yaml would
    read the plain scalar as a number, boolean or null."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "'" if _NOT_A_PLAIN_STRING.fullmatch(data) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


RenderDumper.add_representer(str, _represent_str)
