"""A private Docker engine and a local image registry, started and stopped by process id.

dockerd runs with its data, state and socket under one directory and with iptables, masquerading
and the default bridge off: it never touches the host's firewall, and containers run without
networks anyway. The registry (Debian's `docker-registry`) listens on 127.0.0.1, which dockerd
trusts without TLS, and gives pushed images real `repo@sha256:` digests.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from mmstore.errors import MMStoreError

__all__ = ["EngineStartError", "Daemon", "start_dockerd", "start_registry", "free_port", "APT_PACKAGES"]

# The Debian packages that provide each program this module starts.
APT_PACKAGES = {"dockerd": "docker.io", "docker-registry": "docker-registry", "debootstrap": "debootstrap"}

_REGISTRY_CONFIG = """version: 0.1
log: {{level: warn}}
storage: {{filesystem: {{rootdirectory: {root}}}}}
http: {{addr: "127.0.0.1:{port}"}}
"""


class EngineStartError(MMStoreError):
    """dockerd or the local registry did not start."""


@dataclass
class Daemon:
    """A started background program: its process, where it listens, and its log file."""

    process: subprocess.Popen
    address: str
    log: Path

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the program's log."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20) -> None:
        """Stop the program by its pid: SIGTERM, then SIGKILL if it does not exit in time."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _program(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not path:
        raise EngineStartError(f"{name} is not installed; install it with `apt-get install -y {APT_PACKAGES[name]}`")
    return path


def _wait(daemon: Daemon, ready, what: str, timeout: float) -> Daemon:
    deadline = time.monotonic() + timeout
    while not ready():
        if daemon.process.poll() is not None or time.monotonic() > deadline:
            daemon.stop()
            raise EngineStartError(f"{what} did not start; its log ends with:\n{daemon.log_tail()}")
        time.sleep(0.2)
    return daemon


def _connects(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
            return True
        except OSError:
            return False


def start_dockerd(root: Path, timeout: float = 60) -> Daemon:
    """Start dockerd with everything under `root` (keep it short: socket paths hold ~100 bytes)."""
    root.mkdir(parents=True, exist_ok=True)
    sock, log = root / "d.sock", root / "dockerd.log"
    command = [
        _program("dockerd"), "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
        "--host", f"unix://{sock}", "--pidfile", str(root / "d.pid"),
        "--iptables=false", "--ip-masq=false", "--bridge=none",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return _wait(Daemon(process, f"unix://{sock}", log), lambda: _connects(str(sock)), "dockerd", timeout)


def _listens(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_registry(root: Path, port: int | None = None, timeout: float = 30) -> Daemon:
    """Start a registry on 127.0.0.1 storing its blobs under `root`; its address is `127.0.0.1:PORT`."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = root / "registry.yml"
    config.write_text(_REGISTRY_CONFIG.format(root=root / "data", port=port))
    log = root / "registry.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([_program("docker-registry"), "serve", str(config)], stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return _wait(Daemon(process, f"127.0.0.1:{port}", log), lambda: _listens(port), "docker-registry", timeout)
