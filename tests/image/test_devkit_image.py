"""devkit.image's own logic, without an engine: these run in every ``pytest``, unmarked.

What the stand-in base image is built from (this machine's apt sources and pip settings), the
base image the Dockerfile names, the comparison of the image's packages with the lock, and the
rule that no engine at all means a skip and not a failure.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

from devkit import image
from devkit.lock import RUNTIME_LOCK, parse_lock
from tests.conftest import ROOT

#: The markers' environment of an image on CPython 3.11 (the stand-in's) on x86_64 Linux.
PY311_LINUX = {
    "implementation_name": "cpython",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "6.1.0",
    "platform_system": "Linux",
    "python_full_version": "3.11.2",
    "python_version": "3.11",
    "sys_platform": "linux",
}


def test_apt_sources_reads_one_line_and_deb822_files_as_apt_does(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://source.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/keys/one.gpg] http://one.example/debian trixie main\n"
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n"
        "URIs: http://off.example/debian\n"
        "Suites: bookworm\n"
        "Components: main\n"
        "Enabled: no\n"
        "\n"
        "Types: deb deb-src\n"
        "# a comment inside the stanza\n"
        "URIs: http://two.example/debian http://three.example/debian\n"
        "Suites: bookworm bookworm-updates\n"
        "Components: main contrib\n"
        "Signed-By: /keys/two.gpg\n"
    )
    (tmp_path / "sources.list.d" / "other.list.disabled").write_text(
        "deb http://disabled.example/debian bookworm main\n"
    )
    sources = image.apt_sources(tmp_path)
    assert [s.uri for s in sources] == [
        "http://one.example/debian",
        "http://two.example/debian",
        "http://three.example/debian",
    ]
    assert sources[0].keyring == "/keys/one.gpg"
    mirror = image.debian_mirror("bookworm", tmp_path)
    assert (mirror.uri, mirror.keyring) == ("http://two.example/debian", "/keys/two.gpg")
    with pytest.raises(image.ImageError, match="serves Debian bullseye main"):
        image.debian_mirror("bullseye", tmp_path)


def test_the_base_image_is_the_one_the_dockerfile_builds_every_stage_from(tmp_path: Path) -> None:
    assert image.dockerfile_base() == image.Base("python:3.12.12-slim-bookworm", "bookworm")
    two = tmp_path / "Dockerfile"
    two.write_text("FROM python:3.12.12-slim-bookworm AS builder\nFROM debian:bookworm\n")
    with pytest.raises(image.ImageError, match="one base image"):
        image.dockerfile_base(two)


def test_the_stand_in_gets_this_machines_pip_settings_less_its_local_paths() -> None:
    text = image._pip_conf(
        {"index-url": "https://mirror.example/simple", "find-links": "/opt/wheels",
         "cert": "/host/only/ca.pem", "default-timeout": "180"},
        "/etc/ssl/certs/ca-certificates.crt",
    )  # fmt: skip
    assert "index-url = https://mirror.example/simple" in text
    assert "default-timeout = 180" in text
    assert "/opt/wheels" not in text
    assert "/host/only" not in text
    assert "cert = /etc/ssl/certs/ca-certificates.crt" in text


def test_the_stand_ins_python_version_is_read_from_its_dpkg_status(tmp_path: Path) -> None:
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text(
        "Package: python3-venv\nVersion: 3.11.2-1+b1\n\n"
        "Package: python3\nStatus: install ok installed\nVersion: 3.11.2-1+b1\n\n"
    )
    assert image._dpkg_version(tmp_path, "python3") == "3.11.2"
    with pytest.raises(image.ImageError, match="python3-pip is not installed"):
        image._dpkg_version(tmp_path, "python3-pip")


def _contents(pins_for: dict[str, str], *, extra: dict[str, str] | None = None) -> image.Contents:
    installed = {canonicalize_name(n): Version(v) for n, v in {**pins_for, **(extra or {})}.items()}
    return image.Contents(
        freeze="",
        environment=dict(PY311_LINUX),
        installed=installed,
        editable={canonicalize_name("tiktok-events-processor"): Version("0.1.0")},
    )


def test_the_image_must_hold_exactly_the_locks_pins_less_the_build_backend() -> None:
    pins = parse_lock((ROOT / RUNTIME_LOCK.path).read_text(), RUNTIME_LOCK.path)
    runtime = {str(p.name): str(p.version) for p in pins if p.name != "setuptools"}
    exact = _contents(runtime, extra={"pip": "23.0.1"})
    assert image.lock_mismatches(exact, pins) == []

    name, version = sorted(runtime.items())[0]
    broken = dict(runtime)
    broken.pop(name)
    broken["httpx"] = "0.0.1"
    setuptools = next(str(p.version) for p in pins if p.name == "setuptools")
    wrong = _contents(broken, extra={"requests": "2.0.0", "setuptools": setuptools})
    problems = image.lock_mismatches(wrong, pins)
    assert f"{name}: pinned {version} by requirements.lock, not installed" in problems
    assert any(p.startswith("httpx: 0.0.1 installed") for p in problems), problems
    assert "requests 2.0.0: installed, but requirements.lock does not pin it" in problems
    assert any("the build backend was left in the image" in p for p in problems), problems

    not_editable = image.Contents("", dict(PY311_LINUX), exact.installed, {})
    assert image.lock_mismatches(not_editable, pins) == [
        "tiktok-events-processor: expected an editable install of 0.1.0"
    ]


def test_no_engine_and_no_way_to_start_one_skips_the_image_tests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(image, "engine_info", lambda: None)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(image.EngineUnavailable, match="not root"):
        image.ensure_engine()
    # `run` still runs the command, which sees why, so pytest reports the tests as skipped.
    probe = f"import os, sys; sys.exit(0 if 'not root' in os.environ['{image.SKIP_ENV}'] else 3)"
    assert image.main(["run", "--", sys.executable, "-c", probe]) == 0
