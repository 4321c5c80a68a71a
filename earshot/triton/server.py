"""Run a real ``tritonserver`` from the nvidia-pytriton wheel (development, tests, benchmarks).

Production uses NVIDIA's Triton container, which needs none of this. The wheel ships the
server and the python backend but does not install the backend's stub, and the stub runs
Python in isolated mode (PYTHONPATH is ignored), so the models' environment has to be made
explicit: this venv's ``python3`` first on PATH, which is where ``earshot`` is installed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from earshot.errors import ConfigError, EngineError

READY_TIMEOUT_S = 180.0
EXIT_TIMEOUT_S = 30


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel keeps the server binary, its backends and the python backend stubs."""

    root: Path

    @classmethod
    def find(cls) -> TritonInstall:
        try:
            import pytriton
        except ImportError as exc:
            raise ConfigError(
                "tritonserver is not installed: pip install 'earshot[dev]' (nvidia-pytriton "
                "bundles the server), or run NVIDIA's Triton container",
                code="triton_not_installed",
            ) from exc
        root = Path(pytriton.__file__).resolve().parent / "tritonserver"
        install = cls(root)
        if not install.binary.exists():
            raise ConfigError(f"no tritonserver binary at {install.binary}", code="triton_not_installed")
        return install

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.root / "backends"

    def stub(self, python: tuple[int, int] | None = None) -> Path:
        major, minor = python or sys.version_info[:2]
        path = self.root / "python_backend_stubs" / f"{major}.{minor}" / "triton_python_backend_stub"
        if not path.exists():
            raise ConfigError(
                f"the Triton wheel has no python backend stub for Python {major}.{minor}",
                code="triton_not_installed",
            )
        return path

    def prepare_backends(self) -> Path:
        """The backends directory, with the stub matching this interpreter installed.

        The stub must sit next to libtriton_python.so. Copied atomically (temp file + rename)
        so two launchers starting at once never see half a binary.
        """
        stub = self.stub()
        target = self.backends / "python" / "triton_python_backend_stub"
        if target.exists() and target.stat().st_size == stub.stat().st_size:
            return self.backends
        if not os.access(target.parent, os.W_OK):
            raise ConfigError(
                f"cannot install the python backend stub into {target.parent} (read-only); "
                f"copy {stub} there once",
                code="triton_not_installed",
            )
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.copy2(stub, tmp)
        os.replace(tmp, target)
        return self.backends


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def models_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: this interpreter's bin directory first on PATH.

    The python backend stub starts the first ``python3`` on PATH for every model, so that
    interpreter must be the one with earshot, torch and numpy<2 installed.
    """
    env = dict(os.environ if base is None else base)
    env["PATH"] = _prepend(str(Path(sys.executable).parent), env.get("PATH", ""))
    env.pop("PYTHONHOME", None)
    libdir = python_libdir()
    if libdir is not None:
        env["LD_LIBRARY_PATH"] = _prepend(libdir, env.get("LD_LIBRARY_PATH", ""))
    return env


def python_libdir() -> str | None:
    """The directory of this interpreter's shared libpython, when it has one.

    The stub links ``libpython3.X.so`` from the system library path. If that is another
    3.X build than this venv's (Debian's 3.11.2 next to pyenv's 3.11.7), the venv's stdlib
    extensions fail to load in the stub (``_ssl``: undefined symbol). Putting this
    interpreter's own libpython first makes the stub run exactly the venv's Python.
    """
    import sysconfig

    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if not (sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir and soname):
        return None
    return str(libdir) if (Path(libdir) / str(soname)).exists() else None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _prepend(entry: str, path: str) -> str:
    return os.pathsep.join([entry, *[p for p in path.split(os.pathsep) if p and p != entry]])


@dataclass
class TritonServer:
    """One tritonserver process. ``start()`` returns once it reports ready."""

    repository: Path
    # Every listener binds here (HTTP, gRPC, metrics): loopback unless told otherwise, because
    # tritonserver itself binds 0.0.0.0. In a pod, 0.0.0.0 is passed explicitly.
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    log_path: Path | None = None
    extra_args: Sequence[str] = ()
    env: Mapping[str, str] | None = None
    install: TritonInstall | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def client_host(self) -> str:
        """Where a client on this machine reaches the server (a wildcard bind includes loopback)."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    @property
    def grpc_url(self) -> str:
        return f"{_url_host(self.client_host)}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{_url_host(self.client_host)}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"{_url_host(self.client_host)}:{self.metrics_port}"

    @property
    def shm_prefix(self) -> str:
        # Keyed by the gRPC port: while the port is free, no live server of ours owns these
        # regions, so anything left with this prefix is debris of a crash and safe to remove.
        return f"triton_python_backend_earshot_{self.grpc_port}_"

    def command(self) -> list[str]:
        install = self.install or TritonInstall.find()
        return [
            str(install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={install.backends}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            # Unloading python models is a stub exit per instance; on a busy machine 10 s was
            # not always enough and the server then exits with an error.
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            # Audio tensors are megabytes: grow the stub's shared memory in big steps.
            "--backend-config=python,shm-default-byte-size=16777216",
            "--backend-config=python,shm-growth-byte-size=67108864",
            *self.extra_args,
        ]

    def clean_shm(self) -> int:
        removed = 0
        for path in glob.glob(f"/dev/shm/{self.shm_prefix}*"):
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed += 1
        return removed

    def start(self, *, wait: bool = True, timeout: float = READY_TIMEOUT_S, foreground: bool = False) -> None:
        install = self.install or TritonInstall.find()
        install.prepare_backends()
        # On a restart, the server stopped a moment ago may still be closing its listeners.
        grace = 15.0 if self.process is not None else 0.0
        for port in (self.http_port, self.grpc_port, self.metrics_port):
            deadline = time.monotonic() + grace
            while port_in_use(port, self.client_host):
                if time.monotonic() > deadline:
                    raise EngineError(f"port {port} is already in use", code="triton_port_in_use")
                time.sleep(0.25)
        self.clean_shm()
        out: IO[bytes] | int | None = None
        if self.log_path is not None and not foreground:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
            out = self._log
        self.process = subprocess.Popen(
            self.command(),
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            env=models_env(self.env),
            # Its own process group: stopping the server also stops the model stubs.
            start_new_session=True,
        )
        if wait:
            self.wait_ready(timeout)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def is_ready(self) -> bool:
        try:
            return httpx.get(f"http://{self.http_url}/v2/health/ready", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running():
                code = self.process.returncode if self.process else None
                raise EngineError(
                    f"tritonserver exited with code {code} before it was ready{self._log_tail()}",
                    code="triton_start_failed",
                )
            if self.is_ready():
                return
            time.sleep(0.25)
        self.stop()
        raise EngineError(
            f"tritonserver was not ready after {timeout:.0f} s{self._log_tail()}", code="triton_start_failed"
        )

    def stop(self, timeout: float = EXIT_TIMEOUT_S + 15.0) -> int | None:
        """SIGTERM (Triton unloads models, stubs exit), then SIGKILL for the whole group."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # Stubs left behind by a killed server would hold the model and the shared memory.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        self.clean_shm()
        return proc.returncode

    def kill(self) -> int | None:
        """A crash, as when a node dies: SIGKILL to the server and its stubs, no unloading."""
        proc = self.process
        if proc is None:
            return None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        return self.stop()

    def _log_tail(self, n: int = 3000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()[-n:].decode(errors="replace")
        return f"; log tail:\n{data}"

    def __enter__(self) -> TritonServer:
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
