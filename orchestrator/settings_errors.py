"""What a user is told about configuration that fails to load or that nothing reads.

:func:`format_validation_error` turns pydantic's ValidationError into one line per problem
(``field: value ...; fix``); :func:`unread_env_warnings` names the ``NETORCH_*`` variables no
setting reads, with the closest valid name. Both take the settings model as an argument, so this
module does not depend on ``orchestrator.settings`` (which uses it).
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ValidationError

#: ``NETORCH_*`` variables netorch sets inside the nodes (not settings): never warned about.
NODE_ENV = frozenset({
    "NETORCH_RUN_ID", "NETORCH_NODE_NAME", "NETORCH_NODE_RANK", "NETORCH_IFNAME",
    "NETORCH_PLANNED_IP", "NETORCH_CHECKPOINT_DIR", "NETORCH_METRICS_ADDR",
    "NETORCH_METRICS_PORT_BASE", "NETORCH_RESTART_COUNT", "NETORCH_JOB_START", "NETORCH_JOB_EXIT",
    "NETORCH_RESULT", "NETORCH_PROGRESS", "NETORCH_ARGS",
})
# A message that already starts with "section.field: " names its field itself.
_NAMES_FIELD = re.compile(r"^[a-z_]+(\.[a-z_]+)*: ")


def format_validation_error(error: ValidationError, model: type[BaseModel]) -> str:
    """One line per problem of ``error`` (raised by ``model``): ``field: value ...; fix``."""
    lines = []
    for item in error.errors(include_url=False):
        loc = show_loc(item["loc"])
        msg = item["msg"].removeprefix("Value error, ")
        value = item.get("input")
        kind = item["type"]
        if kind == "extra_forbidden":
            section = _section_fields(model, item["loc"][:-1])
            known = ", ".join(section) if section else "see README config reference"
            line = f"{loc}: unknown key; known keys here: {known}"
        elif kind == "value_error":
            # Our validators already name the value and the fix; model validators name the field.
            line = msg if _NAMES_FIELD.match(msg) or not loc else f"{loc}: {msg}"
        elif kind in ("bool_parsing", "bool_type"):
            line = f"{loc}: {value!r} is not true or false; write true or false"
        elif kind == "literal_error":
            line = f"{loc}: {value!r} is not allowed; {msg.lower()}"
        else:
            line = f"{loc}: {value!r} is invalid ({msg.lower()}); see README config reference"
        lines.append(line)
    return "; ".join(lines)


def show_loc(parts: Sequence[int | str]) -> str:
    """``env.NCCL_DEBUG``; a part that is no plain name (a hostile dict key) is quoted, so the
    message stays one printable line."""
    return ".".join(
        str(p) if re.fullmatch(r"[A-Za-z0-9_-]+", str(p)) else repr(str(p)) for p in parts
    )


def _section_fields(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(
            field.annotation, BaseModel
        ):
            return []
        model = field.annotation
    return list(model.model_fields)


def setting_env_names(model: type[BaseModel]) -> list[str]:
    """Every ``NETORCH_*`` variable name a setting of ``model`` is read from
    (``NETORCH_NETWORK__MTU``, ...); dict-valued settings as their prefix (``NETORCH_ENV__``)."""
    names: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            env_name = f"{prefix}{name.upper()}"
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, env_name + "__")
            elif typing.get_origin(annotation) is dict:
                names.append(env_name + "__")
            else:
                names.append(env_name)

    walk(model, "NETORCH_")
    return names


def unread_env_warnings(model: type[BaseModel], environ: Mapping[str, str]) -> list[str]:
    """One line per ``NETORCH_*`` variable of ``environ`` that no setting of ``model`` reads,
    e.g. a misspelt ``NETORCH_BAKEND``, with the closest valid name. A wrong key below a known
    section (``NETORCH_NETWORK__MTUU``) is not listed: loading the settings refuses it."""
    known = setting_env_names(model)
    lines = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith("NETORCH_") or upper in NODE_ENV:
            continue
        if upper.startswith("NETORCH_USER_"):  # the users' own family (grammar.ENV_PREFIXES)
            continue
        head = upper.removeprefix("NETORCH_").split("__", 1)[0].lower()
        if head in model.model_fields:
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "see the README's Configuration section"
        lines.append(f"{name} is not a netorch setting and is ignored; {hint}")
    return lines
