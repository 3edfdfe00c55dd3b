"""Traffic proof: the bytes each network interface sent, read from the kernel around a measurement.

``/sys/class/net/<if>/statistics/tx_bytes`` counts every byte an interface sent (frames with their
headers). A benchmark reads it before and after each size; the difference per iteration, next to
what the algorithm must send (``OpSpec.wire_bytes_per_rank``), shows which interface carried the
collective and whether the volume is what the op implies. A wrong ``NCCL_SOCKET_IFNAME`` /
``GLOO_SOCKET_IFNAME`` shows up as bytes on another interface than the planned one.

Counters belong to a network namespace, not a process: ranks that share one (local processes, or
several ranks in one container) see each other's bytes, so the host divides by the ranks that
share it. No torch import here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final

SYS_CLASS_NET: Final = Path("/sys/class/net")


def tx_bytes(sys_class_net: Path = SYS_CLASS_NET) -> dict[str, int]:
    """Every interface's ``tx_bytes`` counter now (interfaces that cannot be read are left out)."""
    counters: dict[str, int] = {}
    try:
        entries = sorted(sys_class_net.iterdir())
    except OSError:
        return counters
    for entry in entries:
        try:
            counters[entry.name] = int((entry / "statistics" / "tx_bytes").read_text().strip())
        except (OSError, ValueError):
            continue
    return counters


def sent_per_iteration(before: Mapping[str, int], after: Mapping[str, int],
                       iterations: int) -> dict[str, float]:
    """Bytes each interface sent per iteration between two readings (interfaces in both only;
    a counter that went backwards, e.g. a re-created interface, counts as 0)."""
    return {name: max(0, after[name] - before[name]) / max(1, iterations)
            for name in sorted(before) if name in after}
