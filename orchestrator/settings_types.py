"""The field types of the settings model: each binds a grammar (``orchestrator.grammar``) or a
name list of the workload contract to pydantic, so a field's annotation says what it accepts
(``image: ImageRef``). :func:`plain_value` is the check every field gets before its own.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ValidationInfo

from orchestrator.grammar import (
    check_bridge_name,
    check_docker_url,
    check_duration,
    check_gpu_driver,
    check_host_name,
    check_http_url,
    check_image_ref,
    check_interface_name,
    check_ipc_mode,
    check_loss,
    check_mem_size,
    check_mtu,
    check_name_prefix,
    check_network_name,
    check_rate,
    check_subnet,
    check_user,
    comma_list,
    has_nul,
    redact_url_credentials,
)
from train.contract import DTYPE_NAMES, OP_NAMES, parse_size


def _scalar_kind(annotation: object) -> type | None:
    """``bool``, ``int`` or ``float`` when a field holds that scalar (optionally ``| None``)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = kinds[0] if len(kinds) == 1 else None
    return next((kind for kind in (bool, int, float) if annotation is kind), None)


def plain_value(model: type[BaseModel], value: object, info: ValidationInfo) -> object:
    """The checks every field gets before its own: no NUL anywhere (no path, argv or env value
    can carry one), and booleans and numbers kept apart (pydantic's lax mode reads ``nodes =
    true`` as 1 and ``check = 1`` as true). Strings stay accepted: the environment, ``--set``
    and flags deliver ``"true"``, ``"0"``, ``"2"``."""
    name = info.field_name
    annotation = model.model_fields[name].annotation if name else None
    inner = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else annotation
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return value  # a section (or [[hosts]]) checks its own fields, naming them
    if has_nul(value):
        shown = redact_url_credentials(repr(value))  # no URL credentials in messages
        raise ValueError(f"{shown} contains a NUL character; remove it")
    kind = _scalar_kind(annotation)
    if kind is bool and isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError(f"{value!r} is a number, not a boolean; write true or false")
    if kind in (int, float) and isinstance(value, bool):
        example = "2" if kind is int else "2.5"
        raise ValueError(f"{value!r} is a boolean, not a number; write a number such as {example}")
    return value


Size = Annotated[int, BeforeValidator(parse_size)]


def _known(names: tuple[str, ...], what: str) -> Any:
    """A validator accepting only ``names`` (the contract's), with the list in the message."""

    def check(value: str) -> str:
        if value not in names:
            raise ValueError(f"{value!r} is not allowed; {what} is one of {', '.join(names)}")
        return value

    return AfterValidator(check)


def all_ops(value: object) -> object:
    """``all`` (alone) means every op of the contract, as for ``python -m train.bench``."""
    items = comma_list(value)
    return list(OP_NAMES) if items == ["all"] else items


Op = Annotated[str, _known(OP_NAMES, "an op")]
DType = Annotated[str, _known(DTYPE_NAMES, "a dtype")]
# Free text and numbers held to their grammar (orchestrator.grammar), after the plain checks.
NamePrefix = Annotated[str, AfterValidator(check_name_prefix)]
ImageRef = Annotated[str, AfterValidator(check_image_ref)]
Rate = Annotated[str, AfterValidator(check_rate)]
Duration = Annotated[str, AfterValidator(check_duration)]
LossPercent = Annotated[str, AfterValidator(check_loss)]
NetworkName = Annotated[str, AfterValidator(check_network_name)]
Subnet = Annotated[str, AfterValidator(check_subnet)]
Mtu = Annotated[int, AfterValidator(check_mtu)]
BridgeName = Annotated[str, AfterValidator(check_bridge_name)]
InterfaceName = Annotated[str, AfterValidator(check_interface_name)]
GpuDriver = Annotated[str, AfterValidator(check_gpu_driver)]
DockerUrl = Annotated[str, AfterValidator(check_docker_url)]
MemSize = Annotated[str, AfterValidator(check_mem_size)]
IpcMode = Annotated[str, AfterValidator(check_ipc_mode)]
User = Annotated[str, AfterValidator(check_user)]
HostName = Annotated[str, AfterValidator(check_host_name)]
HttpUrl = Annotated[str, AfterValidator(check_http_url)]


def check_output_dir(v: Path) -> Path:
    """``v`` if a run directory can be created under it: no file on the way (that would fail
    later with a traceback, so it is named now) and nothing unreadable."""
    try:
        for path in (v, *v.parents):
            if path.exists():
                if not path.is_dir():
                    where = "" if path == v else f" (in {str(v)!r})"
                    raise ValueError(
                        f"{str(path)!r} is a file, not a directory{where}; point output "
                        "(--output) at a directory (it is created when missing)"
                    )
                break
    except OSError as e:
        raise ValueError(
            f"{str(v)!r} cannot be used ({e.strerror or e}); choose another directory"
        ) from None
    return v


OutputDir = Annotated[Path, AfterValidator(check_output_dir)]
