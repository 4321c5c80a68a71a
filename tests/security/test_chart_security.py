"""Issue 14, "chart defaults": open webhook, unsigned callbacks, no egress policy, Triton open to
every pod, /metrics and /docs on the public Ingress. Each is now refused or closed by default."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from helm_python.errors import HelmError

from tests.unit.test_helm_charts import PLANTED, RELEASE, SERVICE_CHART, manifests, render

F = f"{RELEASE}-earshot"
WEBHOOK = {"ingest": {"enabled": True, "buckets": ["uploads"]}}
METADATA = ipaddress.ip_address("169.254.169.254")


def _render(values: dict[str, Any]) -> list[dict[str, Any]]:
    return manifests(render(SERVICE_CHART, values))


def _policy(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    [found] = [d for d in items if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == f"{F}-{name}"]
    spec: dict[str, Any] = found["spec"]
    return spec


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (WEBHOOK, "secrets.webhookSecret"),  # the old default: a webhook with no secret
        ({"ingest": {"enabled": True}, "secrets": {"webhookSecret": PLANTED["webhookSecret"]}}, "ingest.buckets"),
        ({"callbacks": {"enabled": True}}, "secrets.callbackSecret"),
        ({"api": {"ingress": {"enabled": True, "hosts": [
            {"host": "x.example.org", "paths": [{"path": "/", "pathType": "Prefix"}]}]}}}, "/metrics"),
        ({"api": {"ingress": {"enabled": True, "hosts": [
            {"host": "x.example.org", "paths": [{"path": "/docs", "pathType": "Prefix"}]}]}}}, "/docs"),
        ({**WEBHOOK, "secrets": {"webhookSecret": "short"}}, "webhookSecret"),  # schema: 16+ characters
    ],
)
def test_render_fails_when_a_feature_is_on_without_its_lock(values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmError, match=message.replace(".", r"\.")):
        _render(values)


def test_features_render_once_locked() -> None:
    _render({**WEBHOOK, "secrets": {"webhookSecret": PLANTED["webhookSecret"]}})
    _render({**WEBHOOK, "ingest": {**WEBHOOK["ingest"], "snsTopicArns": ["arn:aws:sns:us-east-1:1:up"]}})
    _render({"callbacks": {"enabled": True}, "secrets": {"existingSecret": "mine"}})
    items = _render({"api": {"ingress": {"enabled": True}}})
    [ingress] = [d for d in items if d["kind"] == "Ingress"]
    paths = [p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert paths == ["/v1"]


def _rule_reaches(rule: dict[str, Any], address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    peers = rule.get("to")
    if not peers:
        return True
    for peer in peers:
        block = peer.get("ipBlock")
        if block is None:
            continue  # pod/namespace selectors select pods, never the node's metadata address
        if address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except", [])
        ):
            return True
    return False


def test_network_policies_are_on_and_deny_both_ways_by_default() -> None:
    items = _render({})
    deny = _policy(items, "default-deny")
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny and "egress" not in deny
    for policy in (d["spec"] for d in items if d["kind"] == "NetworkPolicy"):
        for rule in policy.get("egress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            # no rule opens every port, and none reaches the metadata service (port 80)
            assert ports, rule
            assert not (_rule_reaches(rule, METADATA) and ({80, "http"} & ports) and not rule.get("to")), rule
            if {443, 80} & ports:
                assert not _rule_reaches(rule, METADATA), rule


def test_workers_reach_only_database_broker_storage_triton() -> None:
    egress = _policy(_render({}), "worker-gpu")["egress"]
    ports = [sorted(str(p["port"]) for p in rule["ports"]) for rule in egress]
    assert ports == [["53", "53"], ["5432"], ["5672"], ["443"], ["grpc", "http"]]
    assert egress[4]["to"] == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/component": "triton", "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/name": "earshot"}}}]
    assert _policy(_render({}), "worker-gpu")["ingress"] == []
    with_callbacks = _policy(_render({"callbacks": {"enabled": True}, "secrets": {
        "callbackSecret": PLANTED["callbackSecret"]}}), "worker-cpu")["egress"]
    assert len(with_callbacks) == len(egress) + 1 and not _rule_reaches(with_callbacks[-1], METADATA)
    assert not _rule_reaches(with_callbacks[-1], ipaddress.ip_address("10.0.0.7"))  # cluster services


def test_triton_is_reachable_only_from_workers_and_the_api() -> None:
    triton = _policy(_render({}), "triton")
    [inference] = [r for r in triton["ingress"] if {"port": "grpc", "protocol": "TCP"} in r["ports"]]
    components = sorted(p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in inference["from"])
    assert components == ["api", "worker-cpu", "worker-gpu"]
    only_workers = _policy(_render({"networkPolicy": {"tritonFromApi": False}}), "triton")
    [inference] = [r for r in only_workers["ingress"] if {"port": "grpc", "protocol": "TCP"} in r["ports"]]
    assert sorted(p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in inference["from"]) == [
        "worker-cpu", "worker-gpu"]


def test_bucket_allow_list_and_callback_controls_reach_the_pods() -> None:
    items = _render({**WEBHOOK, "secrets": {"webhookSecret": PLANTED["webhookSecret"]}})
    config = next(d for d in items if d["kind"] == "ConfigMap" and d["metadata"]["name"] == f"{F}-config")["data"]
    assert config["EARSHOT_INGEST_BUCKETS"] == '["uploads"]'
    assert config["EARSHOT_CALLBACK_ALLOW_HTTP"] == "false"
