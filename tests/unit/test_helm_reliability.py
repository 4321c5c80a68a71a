"""The chart's reliability parts: the sweeper on by default, worker node names from the pod
name, the Grafana dashboard and the PrometheusRule alerts on metrics Earshot really exports."""

from __future__ import annotations

import json
import re
from typing import Any

import kubernetes_validate as kv
import pytest
import yaml

from earshot.jobs import watchdog
from tests.unit.test_helm_charts import (
    SERVICE_CHART,
    _check_lint,
    _earshot_cli_parser,
    by_kind,
    container,
    manifests,
    one,
    render,
)

F = "es-earshot"
ALERTS: dict[str, Any] = {"metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}}}}


def _items(values: dict[str, Any]) -> list[dict[str, Any]]:
    return manifests(render(SERVICE_CHART, values))


def _exported_metrics() -> set[str]:
    """Metric names the sweeper, the bridge and the dead-letter gauge export."""
    names = {g._name for g in vars(watchdog).values() if hasattr(g, "_name") and hasattr(g, "_type")}
    return names | {"earshot_ingest_dead_letters_pending", "earshot_ingest_paused", "earshot_ingest_messages_total"}


def test_sweeper_runs_by_default_with_its_metrics_port_and_a_network_policy() -> None:
    items = _items({})
    sweeper = one(items, "Deployment", f"{F}-sweeper")
    c = container(sweeper, "sweeper")
    assert c["args"][:2] == ["jobs", "reap"]
    params = _earshot_cli_parser()(c["args"])
    assert params["interval"] == 60 and params["metrics_port"] == 9108 and params["metrics_host"] == "0.0.0.0"
    assert c["ports"] == [{"name": "metrics", "containerPort": 9108, "protocol": "TCP"}]
    assert sweeper["spec"]["replicas"] == 1
    policy = one(items, "NetworkPolicy", f"{F}-sweeper")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"] and len(policy["egress"]) == 4
    for version in ("1.29.0", kv.latest_version()):
        kv.validate(sweeper, version, strict=True)
    assert not any(d["metadata"]["name"].endswith("-sweeper") for d in _items({"sweeper": {"enabled": False}}))


def test_each_worker_pod_gets_its_own_celery_node_name() -> None:
    for queue in ("cpu", "gpu"):
        c = container(one(_items({}), "Deployment", f"{F}-worker-{queue}"), f"worker-{queue}")
        env = {e["name"]: e for e in c["env"]}
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert env["EARSHOT_WORKER_HOSTNAME"]["value"] == "earshot@$(POD_NAME)"
        # declared before use, so Kubernetes expands $(POD_NAME)
        names = [e["name"] for e in c["env"]]
        assert names.index("POD_NAME") < names.index("EARSHOT_WORKER_HOSTNAME")


def test_dashboard_is_valid_json_on_exported_metrics() -> None:
    cm = one(_items({}), "ConfigMap", f"{F}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["earshot-reliability.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("stuck", "oldest", "error code", "queue depth", "callbacks", "dead letters"):
        assert topic in titles, topic
    used = {m for e in exprs for m in re.findall(r"earshot_[a-z_]+", e)}
    assert used <= _exported_metrics(), used - _exported_metrics()


def test_alerts_cover_the_failure_modes_on_exported_metrics() -> None:
    items = _items(ALERTS)
    _check_lint(SERVICE_CHART, ALERTS)
    [rule] = by_kind(items, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    rules = rule["spec"]["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert {
        "EarshotJobsStuck", "EarshotOldestJobTooOld", "EarshotJobFailureRate", "EarshotQueueBacklog",
        "EarshotCallbacksPending", "EarshotDeadLetters",
    } <= names
    used = {m for r in rules for m in re.findall(r"earshot_[a-z_]+", r["expr"])}
    assert used <= _exported_metrics(), used - _exported_metrics()
    # annotations keep Prometheus' own template syntax after Helm rendered them
    assert "{{ $value }}" in yaml.safe_dump(rule)
    assert not by_kind(_items({}), "PrometheusRule")  # needs the operator's CRDs: opt-in


@pytest.mark.parametrize("bad", [{"sweeper": {"intervalSeconds": "often"}}, {"metrics": {"prometheusRule": {"failureRatio": 2}}}])
def test_schema_rejects_bad_reliability_values(bad: dict[str, Any]) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmValuesError):
        render(SERVICE_CHART, bad)
