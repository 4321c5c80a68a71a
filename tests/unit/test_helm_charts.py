"""The Helm charts, rendered by Helm's own Go engine (helm-python-sdk), no cluster needed.

For each value set the issue lists: lint is clean, every manifest validates against the
Kubernetes schemas (kubernetes-validate, strict), and the things that matter hold: Triton
gets GPUs on GPU nodes, every container is locked down and sized, migrations run as a hook
before the app, no secret leaks outside a Secret, the training stages chain their
checkpoints, two-node training is an Indexed Job with a headless Service, and the schemas
reject bad values.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate as kv
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICE_CHART = ROOT / "helm" / "earshot"
TRAINING_CHART = ROOT / "helm" / "earshot-training"
RELEASE, NAMESPACE = "es", "audio"

# Validate against the oldest Kubernetes the charts declare (Chart.yaml kubeVersion) and the
# newest this kubernetes-validate ships.
KUBE_VERSIONS = ["1.29.0", kv.latest_version()]
# Custom resources kubernetes-validate has no schema for; checked by hand below.
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}

# Recognisable secrets planted in values: none may appear outside a Secret.
PLANTED = {
    "databaseUrl": "postgresql+psycopg://earshot:PLANTED-db-9f1c77@db:5432/earshot",
    "brokerUrl": "amqp://earshot:PLANTED-mq-4b2e19@rabbitmq:5672/earshot",
    "resultBackend": "db+postgresql://earshot:PLANTED-rb-c0ffee@db/earshot",
    "awsAccessKeyId": "AKIAPLANTED0KEY0ID01",
    "awsSecretAccessKey": "PLANTED-aws-secret-5e7d2a1b0c",
    "webhookSecret": "PLANTED-webhook-77aa01",
    "callbackSecret": "PLANTED-callback-99ee11",
    "ingestSource": "amqp://minio:PLANTED-src-1d2d3d@rabbitmq:5672/%2F?queue=s3-events",
    "extra": {"EARSHOT_API_TOKEN_SALT": "PLANTED-extra-0a0b0c"},
}


def _planted_strings(secrets: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for v in secrets.values():
        out.extend(v.values() if isinstance(v, dict) else [v])
    return out


SERVICE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "gpu-off": {"gpu": {"enabled": False}},
    "keda": {"keda": {"enabled": True}, "secrets": {"brokerUrl": PLANTED["brokerUrl"]}},
    "ingress": {
        "api": {
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
                "hosts": [{"host": "earshot.example.org", "paths": [{"path": "/v1", "pathType": "Prefix"}]}],
                "tls": [{"secretName": "earshot-tls", "hosts": ["earshot.example.org"]}],
            },
            "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6},
            "workers": 4,
        }
    },
    "existing-secret": {"secrets": {"existingSecret": "earshot-prod"}, "keda": {"enabled": True}},
    "webhook": {"ingest": {"enabled": True, "buckets": ["uploads"]}, "secrets": {"webhookSecret": PLANTED["webhookSecret"]}},
    "everything": {
        "secrets": PLANTED,
        "serviceAccount": {
            "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/earshot"}
        },
        "config": {
            "outputUrl": "s3://media/earshot-out/",
            "scratchUrl": "s3://media/earshot-scratch/",
            "s3EndpointUrl": "http://minio.storage:9000",
            "extraEnv": {"EARSHOT_MAX_NEW_TOKENS": 512},
        },
        "keda": {"enabled": True},
        "api": {"ingress": {"enabled": True}, "autoscaling": {"enabled": True}},
        "callbacks": {"enabled": True, "allowedHosts": ["hooks.example.org"]},
        "ingest": {
            "enabled": True,
            "sourceFromSecret": True,
            "reconciler": {"enabled": True, "targets": ["s3://media/in/", "s3://media/in2/"]},
        },
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
        "networkPolicy": {
            "enabled": True,
            "apiFrom": [{"namespaceSelector": {"matchLabels": {"name": "ingress-nginx"}}}],
        },
        "triton": {
            "replicas": 2,
            "gpusPerPod": 2,
            "modelRepository": {"source": "s3", "s3Url": "s3://https://minio.storage:9000/models/earshot"},
            "modelWeights": {"pvc": {"claimName": "af3-weights"}},
            "extraArgs": ["--model-control-mode=explicit", "--load-model=af3"],
        },
    },
    "local-engine": {
        "config": {"engine": "local", "modelPath": "s3://models/af3"},
        "triton": {"enabled": False},
        "workers": {"gpu": {"gpusPerPod": 1}},
        "ingest": {"enabled": True, "source": "sqs://https://sqs.eu-west-1.amazonaws.com/123456789012/earshot-uploads"},
    },
}

TRAINING_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "all-stages": {
        "runName": "meetings-v1",
        "baseModel": "s3://models/audio-flamingo-3",
        "checkpoints": {"root": "s3://train/ckpt/"},
        "secrets": {k: PLANTED[k] for k in ("databaseUrl", "awsAccessKeyId", "awsSecretAccessKey")},
        "stages": {
            name: {"datasets": [{"uri": f"s3://train/data/{name}.jsonl", "weight": 1.0}]}
            for name in ("stage1", "stage2", "stage3", "stage3_5", "stage4")
        },
    },
    "two-nodes": {"nodes": 2, "gpusPerNode": 8},
    "skip-stage2-pvc": {
        "stages": {"stage2": {"enabled": False}, "stage1": {"gpusPerNode": 1}},
        "checkpoints": {"root": "/data/checkpoints"},
        "storage": {"pvc": {"claimName": "training-data"}},
    },
    "gpu-off": {"gpu": {"enabled": False}, "gpusPerNode": 0},
}


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module", autouse=True)
def _cache_kubernetes_schemas() -> Any:
    """kubernetes-validate re-reads its JSON schema files on every call (70% of its time here);
    memoise that pure file read for this module's tests."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kv.utils, "schema_contents", functools.lru_cache(maxsize=None)(kv.utils.schema_contents))
        yield


@functools.cache
def _chart(path: str) -> Any:
    return helm.Chart.load(path)


def render(chart_dir: Path, values: dict[str, Any]) -> dict[str, str]:
    return _chart(str(chart_dir)).render(values, name=RELEASE, namespace=NAMESPACE)


def manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                docs.append(doc)
    return docs


@functools.cache
def _docs(chart: str, set_name: str) -> tuple[str, ...]:
    sets = SERVICE_SETS if chart == "service" else TRAINING_SETS
    chart_dir = SERVICE_CHART if chart == "service" else TRAINING_CHART
    return tuple(json.dumps(d) for d in manifests(render(chart_dir, sets[set_name])))


def docs(chart: str, set_name: str) -> list[dict[str, Any]]:
    """Rendered manifests (fresh copies, so a test may mutate them)."""
    return [json.loads(d) for d in _docs(chart, set_name)]


def by_kind(items: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in items if d["kind"] == kind]


def one(items: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in items if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (
        f"expected one {kind}/{name}, got {[d['metadata']['name'] for d in by_kind(items, kind)]}"
    )
    return found[0]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    kind = doc["kind"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return doc["spec"]["template"]["spec"]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind == "Pod":
        return doc["spec"]
    return None


def workloads(items: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(d, spec) for d in items if (spec := pod_spec(d)) is not None]


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("initContainers") or []) + list(spec["containers"])


def container(doc: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod_spec(doc)
    assert spec is not None
    [c] = [c for c in all_containers(spec) if c["name"] == name]
    return c


def is_hook(doc: dict[str, Any]) -> bool:
    return "helm.sh/hook" in doc["metadata"]["annotations"]


def insecure(items: list[dict[str, Any]]) -> list[str]:
    """Every way a pod or container falls short of the secure defaults."""
    problems = []
    for doc, spec in workloads(items):
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        psc = spec.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True:
            problems.append(f"{where}: pod runAsNonRoot")
        if psc.get("runAsUser") == 0:
            problems.append(f"{where}: pod runs as uid 0")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: pod seccompProfile")
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                problems.append(f"{where}: {flag}")
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for c in all_containers(spec):
            cw = f"{where}[{c['name']}]"
            sc = c.get("securityContext") or {}
            if sc.get("runAsNonRoot") is not True:
                problems.append(f"{cw}: runAsNonRoot")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{cw}: allowPrivilegeEscalation")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{cw}: readOnlyRootFilesystem")
            if sc.get("privileged"):
                problems.append(f"{cw}: privileged")
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []) or caps.get("add"):
                problems.append(f"{cw}: capabilities")
            res = c.get("resources") or {}
            requests, limits = res.get("requests") or {}, res.get("limits") or {}
            if not {"cpu", "memory"} <= set(requests):
                problems.append(f"{cw}: cpu/memory requests")
            if not {"cpu", "memory"} <= set(limits):
                problems.append(f"{cw}: cpu/memory limits")
            # A read-only root filesystem needs somewhere to write.
            tmp = [m for m in c.get("volumeMounts") or [] if m["mountPath"] == "/tmp"]
            if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
                problems.append(f"{cw}: no emptyDir on /tmp")
    return problems


def gpu_amount(c: dict[str, Any], resource: str = "nvidia.com/gpu") -> tuple[Any, Any]:
    res = c.get("resources") or {}
    return (res.get("requests") or {}).get(resource), (res.get("limits") or {}).get(resource)


# --------------------------------------------------------------------------- render, lint, validate


def _check_lint(chart_dir: Path, values: dict[str, Any]) -> None:
    report = helm.lint(str(chart_dir), values)
    errors = [m for m in report["messages"] if m["severity"] >= 3]
    assert report["errors"] == [] and errors == [], report


def _check_kubernetes_schemas(items: list[dict[str, Any]]) -> None:
    assert items
    for doc in items:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as e:
                pytest.fail(
                    f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: "
                    f"{'.'.join(map(str, e.path))}: {e.message}"
                )
            except kv.SchemaNotFoundError:
                pytest.fail(f"{doc['apiVersion']} {doc['kind']} has no schema in Kubernetes {version}")


@pytest.mark.parametrize("set_name", sorted(SERVICE_SETS))
def test_service_chart_lints_and_validates(set_name: str) -> None:
    _check_lint(SERVICE_CHART, SERVICE_SETS[set_name])
    _check_kubernetes_schemas(docs("service", set_name))


@pytest.mark.parametrize("set_name", sorted(TRAINING_SETS))
def test_training_chart_lints_and_validates(set_name: str) -> None:
    _check_lint(TRAINING_CHART, TRAINING_SETS[set_name])
    _check_kubernetes_schemas(docs("training", set_name))


def test_lint_and_validation_catch_broken_charts(tmp_path: Path) -> None:
    """The two checks above can fail: a broken template and an invalid manifest are caught."""
    broken = tmp_path / "earshot"
    shutil.copytree(SERVICE_CHART, broken)
    (broken / "templates" / "broken.yaml").write_text("{{ .Values.api.nope.deeper }}\n")
    assert helm.lint(str(broken))["errors"]

    deployment = one(docs("service", "defaults"), "Deployment", f"{RELEASE}-earshot-api")
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = {"lots": True}
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBE_VERSIONS[-1], strict=True)
    deployment = one(docs("service", "defaults"), "Deployment", f"{RELEASE}-earshot-api")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    with pytest.raises(kv.ValidationError):  # strict: unknown fields are errors
        kv.validate(deployment, KUBE_VERSIONS[-1], strict=True)


def test_service_chart_has_every_component() -> None:
    items = docs("service", "defaults")
    f = f"{RELEASE}-earshot"
    for name in ("api", "worker-cpu", "worker-gpu", "triton"):
        one(items, "Deployment", f"{f}-{name}")
    for name in ("api", "triton"):
        one(items, "Service", f"{f}-{name}")
    one(items, "ConfigMap", f"{f}-config")
    one(items, "Secret", f"{f}-secrets")
    sa = one(items, "ServiceAccount", f)
    assert sa["automountServiceAccountToken"] is False
    assert {p["metadata"]["name"] for p in by_kind(items, "PodDisruptionBudget")} == {
        f"{f}-api",
        f"{f}-worker-cpu",
        f"{f}-worker-gpu",
        f"{f}-triton",
    }
    assert not by_kind(items, "Ingress") and not by_kind(items, "HorizontalPodAutoscaler")
    assert not by_kind(items, "ScaledObject")
    assert not any(d["metadata"]["name"].endswith("-ingest") for d in items)  # ingest is opt-in
    one(items, "NetworkPolicy", f"{f}-default-deny")  # on by default (issue 14)

    api = container(one(items, "Deployment", f"{f}-api"), "api")
    assert api["args"][:1] == ["api"] and "0.0.0.0" in api["args"]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for queue, concurrency in (("cpu", "2"), ("gpu", "4")):  # gpu: 2 pods x 4 calls per Triton GPU
        worker = container(one(items, "Deployment", f"{f}-worker-{queue}"), f"worker-{queue}")
        assert worker["args"] == ["worker", "--queues", queue, "--concurrency", concurrency, "--pool", "prefork"]
    config = one(items, "ConfigMap", f"{f}-config")["data"]
    assert config["EARSHOT_ENGINE"] == "triton"
    assert config["EARSHOT_TRITON_URL"] == f"{f}-triton:8001"

    items = docs("service", "webhook")
    ingest = container(one(items, "Deployment", f"{f}-ingest"), "ingest")
    one(items, "Service", f"{f}-ingest")
    assert ingest["args"] == ["ingest", "run", "--source", "$(EARSHOT_INGEST_SOURCE)"]
    assert {"name": "EARSHOT_INGEST_SOURCE", "value": "webhook://0.0.0.0:8080"} in ingest["env"]
    assert one(items, "ConfigMap", f"{f}-config")["data"]["EARSHOT_INGEST_BUCKETS"] == '["uploads"]'


# --------------------------------------------------------------------------- what matters


def test_triton_requests_gpus_on_gpu_nodes() -> None:
    items = docs("service", "defaults")
    triton = one(items, "Deployment", f"{RELEASE}-earshot-triton")
    spec = triton["spec"]["template"]["spec"]
    c = container(triton, "triton")
    assert gpu_amount(c) == (1, 1)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    # Health, ports and the model repository.
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }
    assert c["command"] == ["tritonserver"]
    assert "--model-repository=/models" in c["args"] and "--metrics-port=8002" in c["args"]
    shm = [v for v in spec["volumes"] if v["name"] == "dshm"]
    assert shm[0]["emptyDir"]["medium"] == "Memory"
    # Only pods that use GPUs go to GPU nodes.
    items += [d for d in docs("service", "webhook") if d["metadata"]["name"] == f"{RELEASE}-earshot-ingest"]
    for name in ("api", "ingest", "worker-cpu", "worker-gpu"):
        other = one(items, "Deployment", f"{RELEASE}-earshot-{name}")["spec"]["template"]["spec"]
        assert "nodeSelector" not in other and "tolerations" not in other
        assert gpu_amount(other["containers"][0]) == (None, None)


def test_gpu_placement_comes_from_values() -> None:
    values: dict[str, Any] = {
        "gpu": {
            "resourceName": "nvidia.com/mig-3g.40gb",
            # Helm merges maps with the defaults: null removes the default GPU label.
            "nodeSelector": {
                "nvidia.com/gpu.present": None,
                "cloud.google.com/gke-accelerator": "nvidia-h100-80gb",
            },
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
            ],
        },
        "triton": {"gpusPerPod": 2, "nodeSelector": {"pool": "inference"}},
    }
    items = manifests(render(SERVICE_CHART, values))
    triton = one(items, "Deployment", f"{RELEASE}-earshot-triton")
    spec = triton["spec"]["template"]["spec"]
    assert gpu_amount(spec["containers"][0], "nvidia.com/mig-3g.40gb") == (2, 2)
    assert spec["nodeSelector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-h100-80gb",
        "pool": "inference",
    }
    assert spec["tolerations"] == values["gpu"]["tolerations"]


def test_gpu_off_requests_no_gpus_anywhere() -> None:
    items = docs("service", "gpu-off")
    triton = one(items, "Deployment", f"{RELEASE}-earshot-triton")
    args = triton["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--allow-gpu-metrics=false" in args
    assert "--model-repository=/models-cpu" in args  # the image's KIND_CPU variant
    for doc, spec in workloads(items):
        assert "nodeSelector" not in spec and "tolerations" not in spec, doc["metadata"]["name"]
        for c in all_containers(spec):
            assert "nvidia.com/gpu" not in json.dumps(c["resources"]), doc["metadata"]["name"]


def test_local_engine_puts_gpu_workers_on_gpu_nodes() -> None:
    items = docs("service", "local-engine")
    assert not [d for d in items if "triton" in d["metadata"]["name"]]
    worker = one(items, "Deployment", f"{RELEASE}-earshot-worker-gpu")
    spec = worker["spec"]["template"]["spec"]
    assert gpu_amount(spec["containers"][0]) == (1, 1)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    config = one(items, "ConfigMap", f"{RELEASE}-earshot-config")["data"]
    assert config["EARSHOT_ENGINE"] == "local" and config["EARSHOT_MODEL_PATH"] == "s3://models/af3"
    # A non-webhook source needs no Service.
    assert not [s for s in by_kind(items, "Service") if s["metadata"]["name"].endswith("-ingest")]


@pytest.mark.parametrize(
    ("chart", "set_name"),
    [("service", s) for s in sorted(SERVICE_SETS)] + [("training", s) for s in sorted(TRAINING_SETS)],
)
def test_every_container_is_locked_down_and_sized(chart: str, set_name: str) -> None:
    items = docs(chart, set_name)
    assert workloads(items)
    assert insecure(items) == []


def test_security_check_can_fail() -> None:
    items = manifests(render(SERVICE_CHART, {"securityContext": {"allowPrivilegeEscalation": True}}))
    assert f"Deployment/{RELEASE}-earshot-api[api]: allowPrivilegeEscalation" in insecure(items)
    job = one(docs("service", "defaults"), "Job", f"{RELEASE}-earshot-migrate")
    del job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]
    assert insecure([job]) == [f"Job/{RELEASE}-earshot-migrate[migrate]: cpu/memory limits"]
    # Values cannot drop a limit in the first place (null deletes a default key in Helm).
    with pytest.raises(helm.HelmValuesError, match="cpu"):
        render(SERVICE_CHART, {"migrations": {"resources": {"limits": {"cpu": None}}}})


def test_init_containers_are_covered() -> None:
    """Two-node training has init containers; they get the same treatment as the rest."""
    items = docs("training", "two-nodes")
    inits = [c for _, spec in workloads(items) for c in spec.get("initContainers") or []]
    assert len(inits) == 5
    assert insecure(items) == []
    job = _stage_jobs(items)[0]
    job["spec"]["template"]["spec"]["initContainers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    assert any("[wait-for-rank0]: readOnlyRootFilesystem" in p for p in insecure([job]))


@pytest.mark.parametrize("set_name", ["defaults", "existing-secret", "everything"])
def test_migrations_run_as_a_hook_before_the_app(set_name: str) -> None:
    values = SERVICE_SETS[set_name]
    items = docs("service", set_name)
    fullname = f"{RELEASE}-earshot"
    job = one(items, "Job", f"{fullname}-migrate")
    ann = job["metadata"]["annotations"]
    assert set(ann["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    job_weight = int(ann["helm.sh/hook-weight"])
    assert "before-hook-creation" in ann["helm.sh/hook-delete-policy"]
    migrate = container(job, "migrate")
    assert migrate["args"] == ["db", "upgrade"]

    # Pre-install hooks run before any ordinary release resource exists. So the app must not
    # be a hook, and the Job may only use hook resources (created earlier) or external ones.
    hooks = [d for d in items if is_hook(d)]
    assert {d["kind"] for d in hooks} <= {"Job", "Secret"}
    for kind in ("Deployment", "ConfigMap", "ServiceAccount", "Service"):
        assert not [d for d in by_kind(items, kind) if is_hook(d)]
    release_only = {(d["kind"], d["metadata"]["name"]) for d in items if not is_hook(d)}
    spec = pod_spec(job)
    assert spec is not None
    assert ("ServiceAccount", spec.get("serviceAccountName", "default")) not in release_only
    refs = json.dumps(spec)
    for kind, name in release_only:
        if kind in ("ConfigMap", "Secret"):
            assert f'"{name}"' not in refs, f"migration Job uses {kind}/{name}, which does not exist yet"

    [db_env] = [e for e in migrate["env"] if e["name"] == "EARSHOT_DATABASE_URL"]
    secret_ref = db_env["valueFrom"]["secretKeyRef"]
    assert secret_ref["key"] == "EARSHOT_DATABASE_URL"
    existing = values.get("secrets", {}).get("existingSecret")
    if existing:
        assert secret_ref["name"] == existing
        assert not [d for d in hooks if d["kind"] == "Secret"]
    else:
        hook_secret = one(items, "Secret", secret_ref["name"])
        assert is_hook(hook_secret)
        assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < job_weight
        if values.get("secrets", {}).get("databaseUrl"):
            assert (
                base64.b64decode(hook_secret["data"]["EARSHOT_DATABASE_URL"]).decode()
                == PLANTED["databaseUrl"]
            )


def test_migrations_can_be_switched_off() -> None:
    items = manifests(render(SERVICE_CHART, {"migrations": {"enabled": False}}))
    assert not [d for d in items if is_hook(d)]


@pytest.mark.parametrize(
    ("chart", "set_name", "planted"),
    [
        ("service", "everything", PLANTED),
        ("training", "all-stages", TRAINING_SETS["all-stages"]["secrets"]),
    ],
)
def test_no_secret_outside_a_secret(chart: str, set_name: str, planted: dict[str, Any]) -> None:
    items = docs(chart, set_name)
    needles = _planted_strings(planted)
    assert len(needles) >= 3
    encoded = [base64.b64encode(n.encode()).decode() for n in needles]
    configmaps = by_kind(items, "ConfigMap")
    assert configmaps
    for doc in items:
        if doc["kind"] == "Secret":
            continue
        text = json.dumps(doc)
        for needle in needles + encoded:
            assert needle not in text, f"a planted secret leaked into {doc['kind']}/{doc['metadata']['name']}"
    # The planted values did reach the chart's Secret: the search above looked for real data.
    secret_values: set[str] = set()
    for s in by_kind(items, "Secret"):
        secret_values |= {base64.b64decode(v).decode() for v in (s.get("data") or {}).values()}
    assert set(needles) <= secret_values


def test_existing_secret_is_used_and_no_secret_is_made() -> None:
    items = docs("service", "existing-secret")
    assert not by_kind(items, "Secret")
    for doc, spec in workloads(items):
        for c in spec["containers"]:
            refs = [e["secretRef"]["name"] for e in c.get("envFrom") or [] if "secretRef" in e]
            refs += [
                e["valueFrom"]["secretKeyRef"]["name"]
                for e in c.get("env") or []
                if "secretKeyRef" in (e.get("valueFrom") or {})
            ]
            assert refs and set(refs) == {"earshot-prod"}, doc["metadata"]["name"]
    auth = one(items, "TriggerAuthentication", f"{RELEASE}-earshot-rabbitmq")
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "host", "name": "earshot-prod", "key": "EARSHOT_BROKER_URL"}
    ]


def test_keda_scales_workers_on_queue_length() -> None:
    items = docs("service", "keda")
    fullname = f"{RELEASE}-earshot"
    auth = one(items, "TriggerAuthentication", f"{fullname}-rabbitmq")
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    for queue in ("cpu", "gpu"):
        deployment = one(items, "Deployment", f"{fullname}-worker-{queue}")
        assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
        so = one(items, "ScaledObject", f"{fullname}-worker-{queue}")
        spec = so["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": deployment["metadata"]["name"],
        }
        assert 0 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
        [trigger] = spec["triggers"]
        assert trigger["type"] == "rabbitmq"
        assert trigger["metadata"]["queueName"] == queue and trigger["metadata"]["mode"] == "QueueLength"
        assert int(trigger["metadata"]["value"]) > 0
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    # The secret the trigger reads is the one the pods read.
    assert auth["spec"]["secretTargetRef"][0]["name"] == f"{fullname}-secrets"
    one(items, "Secret", f"{fullname}-secrets")
    # The API keeps its own replica count.
    assert one(items, "Deployment", f"{fullname}-api")["spec"]["replicas"] == 2


def test_ingress_and_hpa_point_at_the_api() -> None:
    items = docs("service", "ingress")
    fullname = f"{RELEASE}-earshot"
    ingress = one(items, "Ingress", f"{fullname}-api")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"][0]["secretName"] == "earshot-tls"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = one(items, "Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    hpa = one(items, "HorizontalPodAutoscaler", f"{fullname}-api")
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{fullname}-api"
    api = one(items, "Deployment", f"{fullname}-api")
    assert "replicas" not in api["spec"]
    # several uvicorn workers per pod: the CLI's multiprocess metrics land in the /tmp emptyDir
    args = api["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--workers") + 1] == "4"
    default_args = one(docs("service", "defaults"), "Deployment", f"{fullname}-api")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert default_args[default_args.index("--workers") + 1] == "1"


def test_servicemonitors_networkpolicies_and_reconciler() -> None:
    items = docs("service", "everything")
    fullname = f"{RELEASE}-earshot"
    monitors = {m["metadata"]["name"]: m for m in by_kind(items, "ServiceMonitor")}
    assert set(monitors) == {f"{fullname}-api", f"{fullname}-triton"}
    for component, port in (("api", "http"), ("triton", "metrics")):
        m = monitors[f"{fullname}-{component}"]
        assert m["metadata"]["labels"]["release"] == "prometheus"
        service = one(items, "Service", f"{fullname}-{component}")
        assert m["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert m["spec"]["endpoints"][0]["port"] == port
        assert port in {p["name"] for p in service["spec"]["ports"]}
    policies = {p["metadata"]["name"]: p for p in by_kind(items, "NetworkPolicy")}
    assert f"{fullname}-default-deny" in policies and f"{fullname}-triton" in policies
    triton_np = policies[f"{fullname}-triton"]["spec"]
    grpc_rule = next(r for r in triton_np["ingress"] if {"port": "grpc", "protocol": "TCP"} in r["ports"])
    assert grpc_rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE
    cronjobs = by_kind(items, "CronJob")
    assert [
        c["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"] for c in cronjobs
    ] == [
        ["ingest", "scan", "s3://media/in/", "--min-age", "600"],
        ["ingest", "scan", "s3://media/in2/", "--min-age", "600"],
    ]
    # Triton reads its repository from S3 and its weights from the PVC.
    triton = one(items, "Deployment", f"{fullname}-triton")
    c = container(triton, "triton")
    assert "--model-repository=s3://https://minio.storage:9000/models/earshot" in c["args"]
    assert {"name": "EARSHOT_MODEL_PATH", "value": "/weights"} in c["env"]
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in triton["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["af3-weights"]
    assert gpu_amount(c) == (2, 2)
    # The ingest source comes from the Secret, not from values.
    ingest = container(one(items, "Deployment", f"{fullname}-ingest"), "ingest")
    [src] = [e for e in ingest["env"] if e["name"] == "EARSHOT_INGEST_SOURCE"]
    assert src["valueFrom"]["secretKeyRef"] == {"name": f"{fullname}-secrets", "key": "EARSHOT_INGEST_SOURCE"}
    # IRSA role on the ServiceAccount.
    sa = one(items, "ServiceAccount", fullname)
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")


@pytest.mark.parametrize(
    ("chart", "set_name"),
    [("service", s) for s in sorted(SERVICE_SETS)] + [("training", s) for s in sorted(TRAINING_SETS)],
)
def test_services_select_pods_and_named_ports_exist(chart: str, set_name: str) -> None:
    items = docs(chart, set_name)
    pods = [
        (d["spec"]["template"]["metadata"]["labels"], d["spec"]["template"]["spec"])
        for d in items
        if d["kind"] in ("Deployment", "Job")
    ]
    for svc in by_kind(items, "Service"):
        selected = [spec for labels, spec in pods if svc["spec"]["selector"].items() <= labels.items()]
        assert selected, f"Service {svc['metadata']['name']} selects no pod"
        names = {p["name"] for spec in selected for c in spec["containers"] for p in c.get("ports") or []}
        for port in svc["spec"]["ports"]:
            if isinstance(port.get("targetPort"), str):
                assert port["targetPort"] in names, (svc["metadata"]["name"], port)
    for pdb in by_kind(items, "PodDisruptionBudget"):
        assert any(pdb["spec"]["selector"]["matchLabels"].items() <= labels.items() for labels, _ in pods)


# --------------------------------------------------------------------------- training


def _stage_jobs(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    jobs = [j for j in by_kind(items, "Job") if "earshot.dev/stage" in j["metadata"]["annotations"]]
    return sorted(jobs, key=lambda j: int(j["metadata"]["annotations"]["earshot.dev/stage-index"]))


def _flag(args: list[str], flag: str) -> str:
    assert args.count(flag) == 1, (flag, args)
    return args[args.index(flag) + 1]


def _train_args(job: dict[str, Any]) -> list[str]:
    c = container(job, "train")
    args = list(c.get("args") or [])
    if c.get("command") == ["torchrun"]:
        args = args[args.index("earshot") + 1 :]
    assert args[:2] == ["train", "run"]
    return args


@pytest.mark.parametrize("set_name", ["defaults", "all-stages", "two-nodes"])
def test_stage_n_reads_the_checkpoint_stage_n_minus_1_writes(set_name: str) -> None:
    values = TRAINING_SETS[set_name]
    items = docs("training", set_name)
    jobs = _stage_jobs(items)
    assert [_flag(_train_args(j), "--stage") for j in jobs] == [
        "stage1",
        "stage2",
        "stage3",
        "stage3_5",
        "stage4",
    ]
    resume = [_flag(_train_args(j), "--resume-from") for j in jobs]
    output = [_flag(_train_args(j), "--output") for j in jobs]
    assert resume[0] == values.get("baseModel", "s3://earshot-models/audio-flamingo-3")
    for n in range(1, len(jobs)):
        assert resume[n] == output[n - 1], f"stage {n} does not read stage {n - 1}'s checkpoint"
    assert len(set(output)) == len(output) and resume[0] not in output
    run = values.get("runName", RELEASE)
    root = values.get("checkpoints", {}).get("root", "s3://earshot-training/checkpoints").rstrip("/")
    assert output == [f"{root}/{run}/{s}" for s in ("stage1", "stage2", "stage3", "stage3_5", "stage4")]
    for job in jobs:
        assert _flag(_train_args(job), "--config") == "/config/curriculum.yaml"
        assert job["spec"]["suspend"] is True, "stage Jobs wait, suspended, for the orchestrator"

    # The orchestrator resumes them in this order, and may touch nothing else.
    fullname = f"{RELEASE}-earshot-training"
    orchestrator = one(items, "Job", f"{fullname}-orchestrator")
    assert "suspend" not in orchestrator["spec"]
    command = container(orchestrator, "orchestrator")["command"]
    assert command[:2] == ["python", "/scripts/orchestrate.py"]
    assert command[-len(jobs) :] == [j["metadata"]["name"] for j in jobs]
    role = one(items, "Role", f"{fullname}-orchestrator")
    assert role["rules"] == [
        {
            "apiGroups": ["batch"],
            "resources": ["jobs"],
            "verbs": ["get", "patch"],
            "resourceNames": [j["metadata"]["name"] for j in jobs],
        }
    ]
    assert pod_spec(orchestrator)["serviceAccountName"] == f"{fullname}-orchestrator"  # type: ignore[index]
    # Only the orchestrator holds a Kubernetes API token.
    for doc, spec in workloads(items):
        assert spec["automountServiceAccountToken"] is False
        has_token = any("serviceAccountToken" in json.dumps(v) for v in spec.get("volumes") or [])
        assert has_token == (doc is orchestrator)

    # The curriculum file carries the same chain and the per-stage settings.
    curriculum = yaml.safe_load(one(items, "ConfigMap", f"{fullname}-curriculum")["data"]["curriculum.yaml"])
    stages = curriculum["stages"]
    assert [s["name"] for s in stages] == ["stage1", "stage2", "stage3", "stage3_5", "stage4"]
    assert [s["resume_from"] for s in stages] == resume and [s["output"] for s in stages] == output
    assert [s["max_audio_windows"] for s in stages] == [1, 1, 5, 20, 20]
    assert [s["trainable"] for s in stages] == [
        ["projector"],
        ["encoder", "projector"],
        ["encoder", "projector", "llm"],
        ["think_lora"],
        ["encoder", "projector", "llm"],
    ]
    assert stages[3]["lora"]["rank"] == 16
    if set_name == "all-stages":
        assert stages[2]["datasets"] == [{"uri": "s3://train/data/stage3.jsonl", "weight": 1}]


def test_a_disabled_stage_is_skipped_in_the_chain() -> None:
    items = docs("training", "skip-stage2-pvc")
    jobs = _stage_jobs(items)
    assert [_flag(_train_args(j), "--stage") for j in jobs] == ["stage1", "stage3", "stage3_5", "stage4"]
    assert _flag(_train_args(jobs[1]), "--resume-from") == "/data/checkpoints/es/stage1"
    # stage1 overrides gpusPerNode to 1: a plain process, no torchrun; the others use torchrun.
    assert container(jobs[0], "train").get("command") is None
    assert gpu_amount(container(jobs[0], "train")) == (1, 1)
    torch = container(jobs[1], "train")
    assert torch["command"] == ["torchrun"]
    assert "--standalone" in torch["args"] and "--nproc-per-node=8" in torch["args"]
    for job in jobs:
        volumes = pod_spec(job)["volumes"]  # type: ignore[index]
        assert {"name": "data", "persistentVolumeClaim": {"claimName": "training-data"}} in volumes


def test_training_gpu_off_runs_plain_processes() -> None:
    for job in _stage_jobs(docs("training", "gpu-off")):
        spec = pod_spec(job)
        assert spec is not None and "nodeSelector" not in spec and "tolerations" not in spec
        c = container(job, "train")
        assert c.get("command") is None and gpu_amount(c) == (None, None)


def test_training_stages_run_on_gpu_nodes() -> None:
    for job in _stage_jobs(docs("training", "defaults")):
        spec = pod_spec(job)
        assert spec is not None
        assert gpu_amount(container(job, "train")) == (8, 8)
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert "completionMode" not in job["spec"] and "subdomain" not in spec
    assert not by_kind(docs("training", "defaults"), "Service")


def test_two_node_training_is_an_indexed_job_with_a_headless_service() -> None:
    items = docs("training", "two-nodes")
    [svc] = by_kind(items, "Service")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    svc_name = svc["metadata"]["name"]
    jobs = _stage_jobs(items)
    assert len(jobs) == 5
    for job in jobs:
        name = job["metadata"]["name"]
        assert len(name) + 2 <= 63, "pod hostnames <job>-<index> must be DNS labels"
        spec = job["spec"]
        assert spec["completionMode"] == "Indexed"
        assert spec["completions"] == spec["parallelism"] == 2
        pod = spec["template"]["spec"]
        assert pod["subdomain"] == svc_name
        assert svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
        c = container(job, "train")
        assert c["command"] == ["torchrun"]
        args = c["args"]
        assert "--nnodes=2" in args and "--nproc-per-node=8" in args and "--no-python" in args
        assert f"--master-addr={name}-0.{svc_name}" in args
        assert "--node-rank=$(NODE_RANK)" in args
        [rank] = [e for e in c["env"] if e["name"] == "NODE_RANK"]
        assert (
            rank["valueFrom"]["fieldRef"]["fieldPath"]
            == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        )
        assert gpu_amount(c) == (8, 8)
        [wait] = pod["initContainers"]
        assert wait["command"][:2] == ["python", "/scripts/wait_for_host.py"]
        assert wait["command"][2] == f"{name}-0.{svc_name}"


def test_training_scripts_configmap_carries_the_files_verbatim() -> None:
    items = docs("training", "defaults")
    data = one(items, "ConfigMap", f"{RELEASE}-earshot-training-scripts")["data"]
    for name in ("orchestrate.py", "wait_for_host.py"):
        assert data[name] == (TRAINING_CHART / "files" / name).read_text()


def test_rendered_curriculum_is_accepted_by_the_training_runner() -> None:
    """The runner's own parser (earshot.training.config) reads what the chart renders."""
    import earshot.training.config as training_config
    items = docs("training", "all-stages")
    text = one(items, "ConfigMap", f"{RELEASE}-earshot-training-curriculum")["data"]["curriculum.yaml"]
    curriculum = training_config.parse_curriculum(yaml.safe_load(text))
    jobs = _stage_jobs(items)
    assert [st.name for st in curriculum.stages] == [_flag(_train_args(j), "--stage") for j in jobs]
    assert curriculum.run == "meetings-v1" and curriculum.cache_dir.startswith("/tmp/")
    assert curriculum.stage("stage3_5").is_lora and curriculum.stage("stage3_5").lora.rank == 16
    for st, job in zip(curriculum.stages, jobs, strict=True):
        assert st.resume_from == _flag(_train_args(job), "--resume-from")
        assert st.output == _flag(_train_args(job), "--output")
        assert st.max_audio_windows == training_config.RECIPE[st.name]["max_audio_windows"]
        assert st.trainable == training_config.RECIPE[st.name]["trainable"]


def _earshot_cli_parser() -> Any:
    """Parse an `earshot ...` argument list with the real CLI, without running anything."""
    import typer

    import services.cli.main as cli
    root = typer.main.get_command(cli.app)

    def parse(args: list[str]) -> dict[str, Any]:
        args, command, name = list(args), root, "earshot"
        while hasattr(command, "list_commands"):  # a group: descend into the named subcommand
            name = args.pop(0)
            command = command.get_command(command.make_context(name, [], resilient_parsing=True), name)
            assert command is not None, f"`earshot` has no command {name!r}"
        params: dict[str, Any] = command.make_context(name, args).params
        return params

    return parse


def test_every_rendered_command_line_parses_with_the_real_cli() -> None:
    """Each `earshot` argument list the charts render is accepted by the actual console script."""
    parse = _earshot_cli_parser()
    seen = set()
    for chart, sets in (("service", SERVICE_SETS), ("training", TRAINING_SETS)):
        for set_name in sets:
            for doc, spec in workloads(docs(chart, set_name)):
                for c in all_containers(spec):
                    if c.get("command") in (["tritonserver"],) or (c.get("command") or [""])[0] == "python":
                        continue
                    args = _train_args(doc) if c["name"] == "train" else c["args"]
                    params = parse(args)
                    seen.add(" ".join(args[:2]))
                    if args[0] == "worker":
                        assert params["queues"] in ("cpu", "gpu") and params["concurrency"] >= 1
    assert {"api --host", "worker --queues", "ingest run", "ingest scan", "db upgrade", "train run"} <= seen
    with pytest.raises(Exception, match="--queue"):
        parse(["worker", "--queue", "cpu"])


# --------------------------------------------------------------------------- values.schema.json


@pytest.mark.parametrize(
    ("chart_dir", "bad", "message"),
    [
        (SERVICE_CHART, {"api": {"replicas": "two"}}, "/api/replicas"),
        (SERVICE_CHART, {"triton": {"gpusPerPod": 1.5}}, "/triton/gpusPerPod"),
        (SERVICE_CHART, {"gpu": {"enabled": "yes"}}, "/gpu/enabled"),
        (SERVICE_CHART, {"replicaCount": 3}, "replicaCount"),
        (SERVICE_CHART, {"api": {"ingres": {"enabled": True}}}, "ingres"),
        (SERVICE_CHART, {"workers": {"cpu": {"queue": ["cpu"]}}}, "queue"),
        (SERVICE_CHART, {"config": {"engine": "vllm"}}, "/config/engine"),
        (SERVICE_CHART, {"config": {"extraEnv": {"BAD NAME": "x"}}}, "BAD NAME"),
        (TRAINING_CHART, {"nodes": "2"}, "/nodes"),
        (TRAINING_CHART, {"stages": {"stage3": {"learningRate": "fast"}}}, "/stages/stage3/learningRate"),
        (TRAINING_CHART, {"stages": {"stage5": {"enabled": True}}}, "stage5"),
        (TRAINING_CHART, {"stages": {"stage1": {"trainable": ["decoder"]}}}, "/stages/stage1/trainable"),
        (TRAINING_CHART, {"epochs": 3}, "epochs"),
    ],
)
def test_schema_rejects_wrong_types_and_unknown_keys(
    chart_dir: Path, bad: dict[str, Any], message: str
) -> None:
    chart = _chart(str(chart_dir))
    with pytest.raises(helm.HelmValuesError) as err:
        chart.render(bad, name=RELEASE, namespace=NAMESPACE)
    assert message in str(err.value)
    assert helm.lint(str(chart_dir), bad)["errors"]


FREE_FORM = (
    "Labels",
    "Annotations",
    "annotations",
    "labels",
    "nodeSelector",
    "extraEnv",
    "extra",
    "resources",
    "affinity",
    "strategy",
)


def value_paths(values: dict[str, Any]) -> list[str]:
    """The documented value paths: leaves, with maps users fill freely (labels, resources, ...) as one
    entry, and the five stages' identical keys folded into stages.<stage>.KEY."""

    def leaves(v: Any, path: str) -> list[str]:
        if isinstance(v, dict) and v and not path.endswith(FREE_FORM):
            return [p for k, sub in v.items() for p in leaves(sub, f"{path}.{k}" if path else k)]
        return [path]

    return sorted({re.sub(r"^stages\.stage[0-9_]+\.", "stages.<stage>.", p) for p in leaves(values, "")})


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _uncovered(schema: dict[str, Any], node: dict[str, Any], value: Any, path: str) -> list[str]:
    """Value paths the schema does not describe, and closed objects that are left open."""
    node = _resolve(schema, node)
    missing = []
    if isinstance(value, dict):
        props = node.get("properties")
        if props is None:  # a free-form map (labels, annotations, env): must say what its values are
            if "additionalProperties" not in node and node.get("type") != "object":
                missing.append(f"{path} (no schema)")
            return missing
        if node.get("additionalProperties") is not False:
            missing.append(f"{path} (additionalProperties not false)")
        for key, sub in value.items():
            if key not in props:
                missing.append(f"{path}.{key}")
            else:
                missing += _uncovered(schema, props[key], sub, f"{path}.{key}")
    elif not node:
        missing.append(f"{path} (empty schema)")
    return missing


@pytest.mark.parametrize("chart_dir", [SERVICE_CHART, TRAINING_CHART])
def test_schema_covers_every_value_and_readme_documents_it(chart_dir: Path) -> None:
    schema = json.loads((chart_dir / "values.schema.json").read_text())
    values = yaml.safe_load((chart_dir / "values.yaml").read_text())
    assert _uncovered(schema, schema, values, "") == []
    # The defaults themselves satisfy the schema (Helm checks the merged values on render).
    _chart(str(chart_dir)).validate_schema({})
    readme = (chart_dir / "README.md").read_text()
    table = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.M))

    paths = value_paths(values)
    assert len(paths) > 40
    undocumented = [p for p in paths if p not in table]
    assert undocumented == []
    assert "helm install" in readme


# --------------------------------------------------------------------------- images


def _stages(dockerfile: str) -> list[str]:
    return re.split(r"(?m)^FROM\s", dockerfile)[1:]


def test_app_dockerfile_is_multistage_non_root_without_compilers() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    stages = _stages(text)
    assert len(stages) >= 2
    final = stages[-1]
    assert re.search(r"(?m)^COPY --from=builder /opt/venv /opt/venv$", final)
    users = re.findall(r"(?m)^USER\s+(\S+)", final)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    for compiler in ("build-essential", "gcc", "g++", "clang", "-dev "):
        assert compiler not in final, f"{compiler} in the final stage"
    assert "build-essential" in stages[0]
    assert re.search(r'(?m)^ENTRYPOINT \[.*"earshot"\]', final)
    assert 'EXTRAS="model,triton,api"' in text


def test_triton_image_is_non_root_and_dockerignore_keeps_sources() -> None:
    text = (ROOT / "docker" / "triton.Dockerfile").read_text()
    assert re.search(r"(?m)^FROM nvcr\.io/nvidia/tritonserver:\$\{TRITON_VERSION\}-py3$", text)
    assert "COPY model_repo/ /models/" in text and '".[model]"' in text
    assert "prepare_repository(Path('/models'), Path('/models-cpu'), cpu=True)" in text
    users = re.findall(r"(?m)^USER\s+(\S+)", text)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "tests", "**/__pycache__", ".env"):
        assert entry in ignored
    for needed in ("earshot", "services", "workers", "model_repo", "migrations", "pyproject.toml"):
        assert needed not in ignored
