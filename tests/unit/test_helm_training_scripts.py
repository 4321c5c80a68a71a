"""The training chart's scripts (helm/earshot-training/files/), run for real.

orchestrate.py talks to a fake Kubernetes API server here (a real HTTP server that keeps Job
objects and applies merge patches), so the ordering it promises is checked end to end: a
stage's Job is resumed only after the previous one completed, a failure stops the
curriculum, and a restarted orchestrator carries on where the last one stopped.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

FILES = Path(__file__).resolve().parents[2] / "helm" / "earshot-training" / "files"
NAMESPACE = "audio"
JOBS = [f"es-earshot-training-{s}" for s in ("stage1", "stage2", "stage3", "stage3-5", "stage4")]


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"earshot_training_{name}", FILES / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeKube:
    """Jobs in one namespace. A resumed Job completes (or fails) after `polls_to_finish` GETs."""

    def __init__(
        self,
        jobs: list[str],
        fail: AbstractSet[str] = frozenset(),
        done: AbstractSet[str] = frozenset(),
        errors_first: int = 0,
        polls_to_finish: int = 2,
    ) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        for name in jobs:
            job: dict[str, Any] = {
                "metadata": {"name": name},
                "spec": {"suspend": name not in done},
                "status": {},
            }
            if name in done:
                job["status"]["conditions"] = [{"type": "Complete", "status": "True"}]
            self.jobs[name] = job
        self.order = jobs
        self.fail = fail
        self.polls_to_finish = polls_to_finish
        self.polls: dict[str, int] = {}
        self.errors_left = errors_first
        self.patched: list[str] = []
        self.violations: list[str] = []
        self.auth: set[str] = set()
        self.lock = threading.Lock()

    def handle(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.auth.add(headers.get("Authorization", ""))
            if self.errors_left:
                self.errors_left -= 1
                return 503, {"kind": "Status", "code": 503}
            prefix = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/"
            if not path.startswith(prefix):
                return 404, {"kind": "Status", "code": 404}
            name = path[len(prefix) :]
            job = self.jobs.get(name)
            if job is None:
                return 404, {"kind": "Status", "code": 404}
            if method == "PATCH":
                if headers.get("Content-Type") != "application/merge-patch+json":
                    return 415, {"kind": "Status", "code": 415}
                patch = json.loads(body)
                if patch == {"spec": {"suspend": False}} and job["spec"]["suspend"]:
                    index = self.order.index(name)
                    earlier = [self.jobs[n] for n in self.order[:index]]
                    if any(self._state(j) != "Complete" for j in earlier):
                        self.violations.append(name)
                    self.patched.append(name)
                job["spec"].update(patch["spec"])
                return 200, job
            if not job["spec"]["suspend"] and "conditions" not in job["status"]:
                self.polls[name] = self.polls.get(name, 0) + 1
                if self.polls[name] >= self.polls_to_finish:
                    kind = "Failed" if name in self.fail else "Complete"
                    job["status"]["conditions"] = [{"type": kind, "status": "True"}]
            return 200, job

    @staticmethod
    def _state(job: dict[str, Any]) -> str | None:
        conditions = job["status"].get("conditions") or []
        return conditions[0]["type"] if conditions else None


@pytest.fixture
def kube_server() -> Iterator[Any]:
    servers = []

    def start(kube: FakeKube) -> str:
        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                code, payload = kube.handle(self.command, self.path, self.headers, self.rfile.read(length))
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PATCH = _serve

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def run_orchestrator(url: str, tmp_path: Path, jobs: list[str], *extra: str) -> int:
    token = tmp_path / "token"
    token.write_text("projected-token-123\n")
    orchestrate = load("orchestrate")
    return orchestrate.main(
        [
            "--server",
            url,
            "--token-file",
            str(token),
            "--namespace",
            NAMESPACE,
            "--interval",
            "0.01",
            *extra,
            *jobs,
        ]
    )


def test_stages_run_strictly_one_after_another(
    kube_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kube = FakeKube(JOBS)
    assert run_orchestrator(kube_server(kube), tmp_path, JOBS) == 0
    assert kube.patched == JOBS
    assert kube.violations == []
    assert all(FakeKube._state(j) == "Complete" for j in kube.jobs.values())
    assert kube.auth == {"Bearer projected-token-123"}
    events = [json.loads(line)["event"] for line in capsys.readouterr().out.splitlines()]
    assert events[-1] == "curriculum_complete"
    assert events.count("stage_started") == 5 and events.count("stage_complete") == 5


def test_a_failed_stage_stops_the_curriculum(kube_server: Any, tmp_path: Path) -> None:
    kube = FakeKube(JOBS, fail={JOBS[2]})
    assert run_orchestrator(kube_server(kube), tmp_path, JOBS) == 1
    assert kube.patched == JOBS[:3]
    assert [kube.jobs[n]["spec"]["suspend"] for n in JOBS[3:]] == [True, True]


def test_a_restarted_orchestrator_continues_where_it_stopped(kube_server: Any, tmp_path: Path) -> None:
    kube = FakeKube(JOBS, done=set(JOBS[:2]))
    assert run_orchestrator(kube_server(kube), tmp_path, JOBS) == 0
    assert kube.patched == JOBS[2:]
    assert kube.violations == []


def test_api_errors_are_retried(kube_server: Any, tmp_path: Path) -> None:
    kube = FakeKube(JOBS[:2], errors_first=3)
    assert run_orchestrator(kube_server(kube), tmp_path, JOBS[:2]) == 0
    assert kube.patched == JOBS[:2]


def test_a_missing_stage_job_gives_up(kube_server: Any, tmp_path: Path) -> None:
    kube = FakeKube(JOBS[:1])
    rc = run_orchestrator(
        kube_server(kube), tmp_path, [JOBS[0], "es-earshot-training-nope"], "--missing-timeout", "0.2"
    )
    assert rc == 2
    assert kube.patched == JOBS[:1]


def test_job_state_reads_conditions() -> None:
    orchestrate = load("orchestrate")
    assert orchestrate.job_state({"spec": {"suspend": True}}) == "suspended"
    assert orchestrate.job_state({"spec": {"suspend": False}, "status": {"active": 2}}) == "running"
    assert (
        orchestrate.job_state(
            {"spec": {}, "status": {"conditions": [{"type": "SuccessCriteriaMet", "status": "True"}]}}
        )
        == "complete"
    )
    assert (
        orchestrate.job_state(
            {
                "spec": {},
                "status": {
                    "conditions": [
                        {"type": "Failed", "status": "False"},
                        {"type": "Suspended", "status": "True"},
                    ]
                },
            }
        )
        == "running"
    )
    assert (
        orchestrate.job_state(
            {"spec": {}, "status": {"conditions": [{"type": "FailureTarget", "status": "True"}]}}
        )
        == "failed"
    )


def test_wait_for_host_succeeds_for_a_known_host_and_times_out_otherwise() -> None:
    wait = load("wait_for_host")
    assert wait.main(["localhost", "--timeout", "5"]) == 0
    assert wait.main(["no-such-host.invalid", "--timeout", "0.3", "--interval", "0.1"]) == 1
