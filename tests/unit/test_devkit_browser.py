"""devkit/browser.py against a fake ``apt-get`` (and ``sudo``): installing only what is
missing, the stale-list retry, and clear errors. (The real install is what the browser
tests run on.)"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from devkit import browser
from devkit.browser import BrowserError, ensure, require

# install creates the two executables once the package list is fresh ("updated").
APT_GET = """#!/bin/sh
echo "$DEBIAN_FRONTEND $*" >> "{state}/calls"
case "$1" in
  update)
    [ -e "{state}/update-fails" ] && {{ echo "E: Could not open lock file"; exit 100; }}
    touch "{state}/updated"; exit 0 ;;
  install)
    [ -e "{state}/updated" ] || {{ echo "E: Unable to locate package chromium"; exit 100; }}
    printf '#!/bin/sh\\necho "Chromium 156.0.8078.114 built on Debian"\\n' > "{chromium}"
    printf '#!/bin/sh\\necho "ChromeDriver 156.0.8078.114"\\n' > "{driver}"
    chmod +x "{chromium}" "{driver}"; exit 0 ;;
esac
exit 2
"""

SUDO = """#!/bin/sh
echo "sudo $*" >> "{state}/calls"
[ "$1" = "-n" ] && shift
exec "$@"
"""


@pytest.fixture
def fake_debian(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH with a fake apt-get (and sudo); returns its state directory, where
    ``chromium`` and ``chromedriver`` are installed."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    scripts = {
        "apt-get": APT_GET.format(
            state=state, chromium=state / "chromium", driver=state / "chromedriver"
        ),
        "sudo": SUDO.format(state=state),
    }
    for name, script in scripts.items():
        path = bin_dir / name
        path.write_text(script)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return state


def executables(state: Path) -> tuple[Path, Path]:
    return state / "chromium", state / "chromedriver"


def test_a_missing_browser_is_installed_after_one_update_and_its_versions_printed(
    fake_debian: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(browser.os, "geteuid", lambda: 0)
    lines = ensure(executables(fake_debian))
    assert lines == [
        f"chromium: Chromium 156.0.8078.114 built on Debian ({fake_debian / 'chromium'})",
        f"chromedriver: ChromeDriver 156.0.8078.114 ({fake_debian / 'chromedriver'})",
    ]
    install = (
        "noninteractive install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 "
        "chromium chromium-driver"
    )
    calls = (fake_debian / "calls").read_text().splitlines()
    assert calls == [install, "noninteractive update -q", install]
    assert ensure(executables(fake_debian)) == lines  # there now: apt-get is not asked again
    assert (fake_debian / "calls").read_text().splitlines() == calls


def test_without_root_apt_get_runs_through_sudo_without_a_password_prompt(
    fake_debian: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(browser.os, "geteuid", lambda: 1000)
    (fake_debian / "updated").touch()
    ensure(executables(fake_debian))
    calls = (fake_debian / "calls").read_text().splitlines()
    assert calls[0].startswith("sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y")
    assert calls[1].startswith("noninteractive install -y")


def test_without_root_or_sudo_the_error_says_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(browser.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrowserError, match="needs root, and sudo is not available"):
        ensure(executables(tmp_path))


def test_a_failing_update_is_reported_with_apt_gets_words(
    fake_debian: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(browser.os, "geteuid", lambda: 0)
    (fake_debian / "update-fails").touch()
    with pytest.raises(BrowserError) as failure:
        ensure(executables(fake_debian))
    assert "Unable to locate package chromium" in str(failure.value)
    assert "Could not open lock file" in str(failure.value)


def test_require_names_the_missing_executables_and_the_command_that_installs_them(
    tmp_path: Path,
) -> None:
    with pytest.raises(BrowserError) as failure:
        require(executables(tmp_path))
    message = str(failure.value)
    assert str(tmp_path / "chromium") in message
    assert "python -m devkit.browser ensure" in message


def test_the_launch_flags_keep_chromium_headless_and_off_the_network() -> None:
    assert {
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    } <= set(browser.CHROMIUM_ARGS)
