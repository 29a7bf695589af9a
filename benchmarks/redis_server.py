"""A throwaway redis-server on 127.0.0.1, started for the run when the binary is installed.

Install it with `apt-get install redis-server` (Debian/Ubuntu) or `brew install redis`; without
it the Redis rows are skipped with a note. The server listens on a free loopback port only,
keeps its append-only file in the run's scratch directory (`appendfsync everysec`, the closest
Redis setting to SQLite's synchronous=NORMAL in WAL mode), and is stopped when the run ends.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

INSTALL_HINT = "install redis-server (e.g. `apt-get install redis-server`) to add the Redis rows"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """`with RedisServer(directory) as server:` — `server.address` is None when it could not start,
    and `server.note` then says why."""

    def __init__(self, directory: Path, enabled: bool = True):
        self.directory = directory
        self.enabled = enabled
        self.address: tuple[str, int] | None = None
        self.note = ""
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "RedisServer":
        if not self.enabled:
            return self  # the redis client is not installed (the peer says so) or not selected
        binary = shutil.which("redis-server")
        if binary is None:
            self.note = f"Redis skipped: no redis-server on PATH; {INSTALL_HINT}"
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        arguments = [
            binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(self.directory),
            "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no",
        ]
        self._process = subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._process.poll() is None:
            if _answers(port):
                self.address = ("127.0.0.1", port)
                self.note = f"Redis: {binary} started on 127.0.0.1:{port} for this run (AOF, appendfsync everysec)"
                return self
            time.sleep(0.05)
        self.note = f"Redis skipped: {binary} did not answer on 127.0.0.1:{port}"
        self._stop()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
