"""Fixtures of the deployment checks: the fetched tools, `helm template` and its manifests.

The checks need helm and hadolint, which `python -m devkit.helm fetch helm hadolint` puts in
.cache/tools/ (`make test` runs it first). When a tool is missing they are skipped with a loud
reason, except in CI (``CI`` set), where a missing tool fails them: CI must never pass without
having checked the chart and the Dockerfile.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.helm import HADOLINT, HELM, Tool, cached

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tiktok-events-processor"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

#: Values-file cases: None is the chart's defaults, then every file in the chart's ci/.
VALUES_CASES: list[Path | None] = [None, *CI_VALUES]
VALUES_IDS = ["default", *(p.stem for p in CI_VALUES)]

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]


def _tool(tool: Tool) -> Path:
    path = cached(tool)
    if path is not None:
        return path
    message = (
        f"\n\n!!! {tool.name} {tool.version} is not fetched: the deployment checks that need it "
        f"DID NOT RUN.\n!!! Fetch it with `python -m devkit.helm fetch helm hadolint` "
        f"(`make test` does).\n"
    )
    if os.environ.get("CI"):
        pytest.fail(message + "!!! CI must run them, so this is a failure.", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    return _tool(HELM)


@pytest.fixture(scope="session")
def hadolint_bin() -> Path:
    return _tool(HADOLINT)


@pytest.fixture(scope="session")
def promtool_bin() -> Path:
    """Prometheus's promtool, fetched by devkit.promtool (Debian's prometheus package)."""
    try:
        from devkit import promtool  # noqa: PLC0415 - another module's tool, optional here
    except ImportError:
        pytest.skip("devkit.promtool is not in this tree: the promtool check did not run")
    path = promtool.cached()
    if path is not None:
        return path
    message = (
        "\n\n!!! promtool is not fetched: the Prometheus config check DID NOT RUN.\n"
        "!!! Fetch it with `python -m devkit.promtool fetch`.\n"
    )
    if os.environ.get("CI"):
        pytest.fail(message + "!!! CI must run it, so this is a failure.", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment that keeps helm away from the user's own helm config, cache and repos."""
    home = tmp_path_factory.mktemp("helm-home")
    env = dict(os.environ)
    env.update(
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
        KUBECONFIG=str(home / "kubeconfig"),
    )
    return env


HelmRun = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def helm(helm_bin: Path, helm_env: dict[str, str]) -> HelmRun:
    """Runs helm with the arguments given; returns the completed process (never raises)."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(helm_bin), *args],
            cwd=ROOT,
            env=helm_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run


def template_args(
    values: Path | None = None, sets: Mapping[str, str] | None = None, *extra: str
) -> list[str]:
    args = ["template", "release", str(CHART), "--namespace", "streaming"]
    if values is not None:
        args += ["--values", str(values)]
    for key, value in (sets or {}).items():
        args += ["--set", f"{key}={value}"]
    return [*args, *extra]


@pytest.fixture(scope="session")
def render(helm: HelmRun) -> Render:
    """`helm template` → its manifests, parsed; fails the test with helm's error if it fails."""

    def run(values: Path | None = None, sets: Mapping[str, str] | None = None) -> list[Manifest]:
        proc = helm(*template_args(values, sets))
        assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
        return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]

    return run


def only(manifests: Sequence[Manifest], kind: str, name_suffix: str = "") -> Manifest:
    """The one manifest of `kind` (whose name ends with `name_suffix`)."""
    found = [
        m for m in manifests if m["kind"] == kind and m["metadata"]["name"].endswith(name_suffix)
    ]
    assert len(found) == 1, f"expected one {kind}*{name_suffix}, found {len(found)}"
    return found[0]


def processor_container(manifests: Sequence[Manifest]) -> Manifest:
    deployment = only(manifests, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["processor"]
    container: Manifest = containers[0]
    return container


def rendered_config(manifests: Sequence[Manifest]) -> str:
    """The processor configuration file in the release's ConfigMap."""
    configmaps = [
        m for m in manifests if m["kind"] == "ConfigMap" and "config.yaml" in m.get("data", {})
    ]
    assert len(configmaps) == 1, "expected one ConfigMap holding config.yaml"
    text: str = configmaps[0]["data"]["config.yaml"]
    return text


def load_values(path: Path | None) -> dict[str, Any]:
    """The chart's values.yaml merged with a values file (deep merge of mappings, as helm)."""
    merged: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    if path is not None:
        _deep_merge(merged, yaml.safe_load(path.read_text()) or {})
    return merged


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> None:
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def check_config(path: Path, environment: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m processor check-config PATH`` with a deployment's environment (and none
    of the caller's KAFKA_*/TIKTOK_* variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "TIKTOK_"))}
    env.update(environment)
    return subprocess.run(
        [sys.executable, "-m", "processor", "check-config", str(path)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
