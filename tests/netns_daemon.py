"""A second dockerd in its own network namespace (the multi-host and TLS tests): shared parts."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a host command (ip, umount, openssl ...); raise on failure when ``check``."""
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=60)


def stop_netns_daemon(daemon: subprocess.Popen[bytes] | None, root: Path, veth_host: str,
                      netns: str) -> None:
    """Stop the daemon (SIGTERM, then SIGKILL), unmount and delete its tree, drop its veth and
    namespace. Safe to call after a partial start."""
    if daemon is not None and daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=10)
    # Mounts of the daemon (overlay2 layers, netns of its containers) must go before its tree.
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
              if line.split()[1].startswith(str(root))]
    for m in sorted(mounts, key=len, reverse=True):
        sh("umount", "-l", m, check=False)
    shutil.rmtree(root, ignore_errors=True)
    sh("ip", "link", "del", veth_host, check=False)
    sh("ip", "netns", "del", netns, check=False)


def openssl_pki(d: Path, server_ip: str) -> dict[str, Path]:
    """A CA, a daemon certificate for ``server_ip`` signed by it, a client certificate signed by
    it, and an unrelated second CA: PEM files in ``d`` (made by openssl)."""
    def key(name: str) -> Path:
        path = d / f"{name}-key.pem"
        sh("openssl", "genrsa", "-out", str(path), "2048")
        return path

    def ca(name: str) -> Path:
        cert = d / f"{name}.pem"
        sh("openssl", "req", "-new", "-x509", "-days", "2", "-key", str(key(name)),
           "-subj", f"/CN=netorch test {name}", "-out", str(cert))
        return cert

    def signed(name: str, ext: str) -> Path:
        csr, cert, extfile = d / f"{name}.csr", d / f"{name}.pem", d / f"{name}.ext"
        extfile.write_text(ext + "\n")
        sh("openssl", "req", "-new", "-key", str(key(name)), "-subj", f"/CN={name}",
           "-out", str(csr))
        sh("openssl", "x509", "-req", "-days", "2", "-in", str(csr), "-CA", str(d / "ca.pem"),
           "-CAkey", str(d / "ca-key.pem"), "-CAcreateserial", "-out", str(cert),
           "-extfile", str(extfile))
        return cert

    files = {"ca": ca("ca"), "wrong_ca": ca("wrong-ca")}
    files["server"] = signed("server", f"subjectAltName = IP:{server_ip}\n"
                                       "extendedKeyUsage = serverAuth")
    files["client"] = signed("client", "extendedKeyUsage = clientAuth")
    files["server_key"], files["client_key"] = d / "server-key.pem", d / "client-key.pem"
    return files
