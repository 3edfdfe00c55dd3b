"""A built-in TCP throughput test: the fallback when an image has no iperf3.

``python -m train.tcptest server --port P`` accepts one test (``streams`` connections announced by
the client) and exits; ``python -m train.tcptest client --host H --port P --seconds S --streams N``
sends for ``S`` seconds over ``N`` parallel connections and prints one JSON line
``{"tool": "tcptest", "bits_per_second": ..., "streams": N, "seconds": ...}`` measured at the
*receiver* (what arrived, like iperf3's ``sum_received``), which the server reports back.

Plain sockets and threads: each sender thread spends its time in ``sendall`` (the GIL is released
there), so one Python process drives several streams as long as the CPU does.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence

CHUNK = 1 << 20  # bytes per send/recv call: large enough that per-call overhead is negligible
_HEADER = struct.Struct("!I")  # the client's first 4 bytes on the control connection: streams


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes or raise ConnectionError."""
    data = b""
    while len(data) < n:
        part = conn.recv(n - len(data))
        if not part:
            raise ConnectionError("peer closed during the handshake")
        data += part
    return data


def serve_once(port: int, bind: str = "0.0.0.0") -> dict[str, float]:
    """Accept one test: a control connection, then its data connections; report back bytes/s."""
    with socket.create_server((bind, port), reuse_port=False) as srv:
        control, _ = srv.accept()
        with control:
            streams = _HEADER.unpack(_recv_exact(control, _HEADER.size))[0]
            conns = [srv.accept()[0] for _ in range(streams)]
            received = [0] * streams
            first: list[float] = []
            last = [0.0] * streams

            def drain(i: int, conn: socket.socket) -> None:
                buf = bytearray(CHUNK)
                with conn:
                    while True:
                        n = conn.recv_into(buf)
                        if not n:
                            break
                        if not first:
                            first.append(time.perf_counter())
                        received[i] += n
                        last[i] = time.perf_counter()

            threads = [threading.Thread(target=drain, args=(i, c)) for i, c in enumerate(conns)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = max(last) - first[0] if first and max(last) > first[0] else 0.0
            total = sum(received)
            result = {"bytes": float(total), "seconds": elapsed,
                      "bits_per_second": total * 8 / elapsed if elapsed > 0 else 0.0}
            control.sendall(json.dumps(result).encode() + b"\n")
    return result


def run_client(host: str, port: int, seconds: float, streams: int) -> dict[str, float | int | str]:
    """Send for ``seconds`` over ``streams`` connections; return the receiver's figures."""
    control = socket.create_connection((host, port), timeout=10)
    with control:
        control.sendall(_HEADER.pack(streams))
        payload = bytes(CHUNK)
        conns = [socket.create_connection((host, port), timeout=10) for _ in range(streams)]
        deadline = time.perf_counter() + seconds

        def send(conn: socket.socket) -> None:
            with conn:
                while time.perf_counter() < deadline:
                    conn.sendall(payload)
                conn.shutdown(socket.SHUT_WR)

        threads = [threading.Thread(target=send, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        control.settimeout(seconds + 30)
        line = b""
        while not line.endswith(b"\n"):
            part = control.recv(4096)
            if not part:
                break
            line += part
    server = json.loads(line.decode() or "{}")
    return {"tool": "tcptest", "streams": streams, "seconds": float(server.get("seconds", 0.0)),
            "bits_per_second": float(server.get("bits_per_second", 0.0))}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``server`` or ``client`` (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m train.tcptest", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    srv = sub.add_parser("server")
    srv.add_argument("--port", type=int, default=5201)
    cli = sub.add_parser("client")
    cli.add_argument("--host", required=True)
    cli.add_argument("--port", type=int, default=5201)
    cli.add_argument("--seconds", type=float, default=2.0)
    cli.add_argument("--streams", type=int, default=1)
    args = p.parse_args(argv)
    if args.mode == "server":
        serve_once(args.port)
        return 0
    print(json.dumps(run_client(args.host, args.port, args.seconds, args.streams)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
