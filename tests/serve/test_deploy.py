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
