"""The shipped configs are valid: recipes/serve.yaml, the Kubernetes manifests and their serve.yaml."""

from __future__ import annotations

from pathlib import Path

import yaml

from slmforge.serve.config import from_dict, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_recipe_is_a_valid_serve_config():
    cfg = load_config(ROOT / "recipes" / "serve.yaml")
    assert {m.name for m in cfg.models} >= {"smollm", "minilm"} and cfg.host == "127.0.0.1"
    assert cfg.guard and cfg.guard["default"] == {"pii": "redact", "injection": "block"}


def test_kubernetes_manifests():
    docs = {}
    for f in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            docs[doc["kind"]] = doc
    assert set(docs) >= {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "Kustomization"}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert (
        c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    )
    assert c["startupProbe"] and c["resources"]["limits"]["cpu"] and c["resources"]["requests"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]
    assert (
        docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"]
        == docs["Deployment"]["metadata"]["name"]
    )
    assert docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    cfg = from_dict(yaml.safe_load(docs["ConfigMap"]["data"]["serve.yaml"]))
    assert cfg.host == "0.0.0.0" and not cfg.auth.open_on_loopback and cfg.audit.log_json
    listed = set(docs["Kustomization"]["resources"])
    assert listed == {f.name for f in (ROOT / "deploy" / "k8s").glob("*.yaml")} - {"kustomization.yaml"}


def _k8s() -> dict:
    return {
        doc["kind"]: doc
        for f in sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
        for doc in yaml.safe_load_all(f.read_text())
    }


def test_kubernetes_network_policy_admits_only_the_serve_port_and_dns():
    docs = _k8s()
    policy, deployment = docs["NetworkPolicy"]["spec"], docs["Deployment"]
    assert policy["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}  # both default-deny for these pods
    port = deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert port == yaml.safe_load(docs["ConfigMap"]["data"]["serve.yaml"])["port"]
    assert [p for rule in policy["ingress"] for p in rule["ports"]] == [{"protocol": "TCP", "port": port}]
    assert all(rule.get("from") for rule in policy["ingress"])  # never from anywhere
    egress = [p for rule in policy["egress"] for p in rule["ports"]]
    assert {p["port"] for p in egress} == {53} and all(rule.get("to") for rule in policy["egress"])


def test_kubernetes_image_is_pinned_by_digest():
    import re

    (container,) = _k8s()["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert re.fullmatch(r"[a-z0-9./:_-]+@sha256:[0-9a-f]{64}", container["image"]), container["image"]
