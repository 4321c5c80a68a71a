"""Private servers for fault tests: a PostgreSQL cluster, a RabbitMQ node and a TCP proxy,
each on a spare port, so a test can stop them while the shared ones keep running.

- :class:`PrivatePostgres`: ``initdb`` + ``pg_ctl`` as the postgres user (trust auth,
  127.0.0.1 only, its own socket directory). ``stop()`` is an immediate shutdown (what a
  crash or a failover looks like to clients); ``start()`` brings the same data back.
- :class:`PrivateRabbit`: a second node beside the shared one (own node name, ports, mnesia
  and log directories, no plugins). Its data survives ``stop()``/``start()``.
- :class:`TcpProxy`: forwards a local port to a target; ``cut()`` closes the listener and
  every open connection (clients see "connection refused"), ``restore()`` listens again.
  moto keeps no state across its own restart, so S3 outages are proxy cuts.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), Path("/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float, up: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} did not go {'up' if up else 'down'} in {timeout:.0f} s")


class _PrivateServer(ABC):
    """A server this test suite owns: stopped and its files removed, whatever state it is in."""

    root: Path

    @abstractmethod
    def stop(self) -> None: ...

    def destroy(self) -> None:
        try:
            self.stop()
        except Exception:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


class PrivatePostgres(_PrivateServer):
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="earshot-faults-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.port = free_port()
        self.sock.mkdir()
        shutil.chown(self.root, "postgres")
        shutil.chown(self.sock, "postgres")
        self._as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"])

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, args: list[str]) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-o", opts, "-w", "start"]
        )
        _wait_port(self.port, 30)

    def stop(self) -> None:
        self._as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        _wait_port(self.port, 30, up=False)


class PrivateRabbit(_PrivateServer):
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="earshot-faults-mq-"))
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"faults{uuid.uuid4().hex[:6]}@localhost"
        (self.root / "enabled_plugins").write_text("[].\n")
        shutil.chown(self.root, "rabbitmq")
        (self.root / "enabled_plugins").chmod(0o644)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _env(self) -> dict[str, str]:
        return {
            "HOME": "/var/lib/rabbitmq",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin:/usr/sbin:/sbin"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "none"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "none-advanced.config"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def start(self) -> None:
        env = self._env()
        self.proc = subprocess.Popen(
            ["runuser", "-u", "rabbitmq", "--", "env", *[f"{k}={v}" for k, v in env.items()], "rabbitmq-server"],
            stdout=open(self.root / "stdout.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        _wait_port(self.port, 90)

    def stop(self) -> None:
        subprocess.run(
            ["rabbitmqctl", "-n", self.node, "stop"], capture_output=True, timeout=60, check=False,
            env={**os.environ, "HOME": "/var/lib/rabbitmq"},
        )
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        _wait_port(self.port, 30, up=False)


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self._server: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
            self._conns.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._server is not server:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
