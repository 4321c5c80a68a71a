"""Run the curriculum's stage Jobs one after another.

The chart creates every stage Job suspended (no pods, no GPUs held). This script, run by a small
CPU-only Job, resumes them in order: it unsuspends a stage's Job, waits until it completes, then
moves on. A failed stage stops the curriculum (later stages stay suspended) and the script exits
non-zero. It is idempotent, so a restarted orchestrator continues where the last one stopped.

Standard library only: it runs in the app image and talks to the Kubernetes API with the pod's
projected ServiceAccount token. Usage:

    python orchestrate.py [--interval 30] JOB [JOB ...]
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class Api:
    def __init__(self, server: str, namespace: str, token_file: str, ca_file: str | None) -> None:
        self.server = server.rstrip("/")
        self.namespace = namespace
        self.token_file = token_file
        self.context = None
        if self.server.startswith("https://"):
            self.context = ssl.create_default_context(
                cafile=ca_file if ca_file and os.path.exists(ca_file) else None
            )

    def _request(self, method: str, path: str, body: dict | None = None) -> dict | None:
        headers = {"Accept": "application/json"}
        if os.path.exists(self.token_file):
            with open(self.token_file) as f:  # re-read: projected tokens rotate
                headers["Authorization"] = "Bearer " + f.read().strip()
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/merge-patch+json"
        req = urllib.request.Request(self.server + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30, context=self.context) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def job_path(self, name: str) -> str:
        return f"/apis/batch/v1/namespaces/{self.namespace}/jobs/{name}"

    def get_job(self, name: str) -> dict | None:
        return self._request("GET", self.job_path(name))

    def resume_job(self, name: str) -> None:
        self._request("PATCH", self.job_path(name), {"spec": {"suspend": False}})


def job_state(job: dict) -> str:
    """complete | failed | suspended | running, from a Job object."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "complete"
        if cond.get("type") in ("Failed", "FailureTarget"):
            return "failed"
    if (job.get("spec") or {}).get("suspend"):
        return "suspended"
    return "running"


def log(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def run(api: Api, jobs: list[str], interval: float, missing_timeout: float) -> int:
    for name in jobs:
        missing_since: float | None = None
        resumed = False
        while True:
            try:
                job = api.get_job(name)
                if job is not None and job_state(job) == "suspended" and not resumed:
                    api.resume_job(name)
                    resumed = True
                    log("stage_started", job=name)
                    job = api.get_job(name)
            except (urllib.error.URLError, TimeoutError, OSError) as e:  # HTTPError included
                log("api_error", job=name, error=str(e))
                time.sleep(interval)
                continue
            if job is None:
                missing_since = missing_since or time.monotonic()
                if time.monotonic() - missing_since > missing_timeout:
                    log("stage_missing", job=name)
                    return 2
                time.sleep(interval)
                continue
            missing_since = None
            state = job_state(job)
            if state == "complete":
                log("stage_complete", job=name)
                break
            if state == "failed":
                log("stage_failed", job=name)
                return 1
            time.sleep(interval)
    log("curriculum_complete", jobs=jobs)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("jobs", nargs="+", help="stage Job names, in curriculum order")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between polls")
    p.add_argument(
        "--missing-timeout",
        type=float,
        default=600.0,
        help="give up when a stage Job does not exist for this long",
    )
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:  # IPv6
        host = f"[{host}]"
    p.add_argument("--server", default=f"https://{host}:{port}")
    p.add_argument("--token-file", default=f"{SA_DIR}/token")
    p.add_argument("--ca-file", default=f"{SA_DIR}/ca.crt")
    p.add_argument("--namespace", default=None)
    args = p.parse_args(argv)
    namespace = args.namespace or os.environ.get("POD_NAMESPACE")
    if not namespace:
        with open(f"{SA_DIR}/namespace") as f:
            namespace = f.read().strip()
    api = Api(args.server, namespace, args.token_file, args.ca_file)
    return run(api, args.jobs, args.interval, args.missing_timeout)


if __name__ == "__main__":
    sys.exit(main())
