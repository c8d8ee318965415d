"""devkit/promtool.py against fake ``apt-get`` and ``dpkg-deb``: the stale-list retry, the
cache, and a clear error when the package cannot be had. (The real fetch runs in the
integration tests, which use the binary.)"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from devkit.promtool import PromtoolError, fetch

APT_GET = """#!/bin/sh
echo "$*" >> "{state}/calls"
case "$1" in
  update)
    [ -e "{state}/update-fails" ] && {{ echo "E: Could not open lock file"; exit 100; }}
    touch "{state}/updated"; exit 0 ;;
  download)
    [ -e "{state}/updated" ] || {{ echo "E: Can't find a source to download version"; exit 100; }}
    echo fake > prometheus_2.42.0+ds-5+deb12u1_amd64.deb; exit 0 ;;
esac
exit 2
"""

DPKG_DEB = """#!/bin/sh
# dpkg-deb -x DEB DIR
mkdir -p "$3/usr/bin"
printf '#!/bin/sh\\necho "promtool, version 2.42.0+ds"\\n' > "$3/usr/bin/promtool"
"""


@pytest.fixture
def fake_debian(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH with fake apt-get and dpkg-deb; returns their state directory."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for name, script in (("apt-get", APT_GET), ("dpkg-deb", DPKG_DEB)):
        path = bin_dir / name
        path.write_text(script.format(state=state) if name == "apt-get" else script)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return state


def test_a_stale_package_list_is_updated_once_and_the_binary_cached(
    fake_debian: Path, tmp_path: Path
) -> None:
    tools = tmp_path / "tools"
    path = fetch(tools)
    assert path == tools / "promtool"
    assert path.stat().st_mode & stat.S_IXUSR
    calls = (fake_debian / "calls").read_text().splitlines()
    assert calls == ["download -q prometheus", "update -q", "download -q prometheus"]
    assert fetch(tools) == path  # cached: apt-get is not asked again
    assert (fake_debian / "calls").read_text().splitlines() == calls
    assert sorted(p.name for p in tools.iterdir() if not p.name.startswith(".")) == ["promtool"]


def test_a_download_that_cannot_be_fixed_says_why(fake_debian: Path, tmp_path: Path) -> None:
    (fake_debian / "update-fails").touch()
    with pytest.raises(PromtoolError, match=r"apt-get update` failed too \(it needs root\)"):
        fetch(tmp_path / "tools")
    assert not (tmp_path / "tools" / "promtool").exists()
