"""The Kafka broker jars: the pinned version, fetching them with Maven, and their cache.

`kafka_version()` reads the version from dev/kafka/pom.xml, the single place it is written
down. `fetch()` runs Maven once on that pom and caches the jars in .cache/kafka/libs-<version>/;
a marker file holding the pom's digest makes every later call a no-op, and `fetched_libs_dir()`
says whether the cache is complete without fetching anything.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from devkit import proc
from devkit.kafka.errors import KafkaDevError

REPO_ROOT = Path(__file__).resolve().parents[2]
POM = REPO_ROOT / "dev" / "kafka" / "pom.xml"
CACHE_DIR = REPO_ROOT / ".cache" / "kafka"

# Written last into a libs dir; holds the digest of the pom the jars were copied for.
_FETCH_MARKER = ".fetched"


def kafka_version(pom: Path = POM) -> str:
    """The Kafka version pinned in dev/kafka/pom.xml, the single place it is written down."""
    text = pom.read_text(encoding="utf-8")
    match = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", text)
    if match is None:
        raise KafkaDevError(f"{pom} has no <kafka.version> property")
    return match.group(1)


@dataclass(frozen=True)
class FetchResult:
    """Where the jars of one Kafka version are, and whether this call had to run Maven."""

    version: str
    libs_dir: Path
    downloaded: bool  # False: the cache was complete and Maven was not run.
    seconds: float


def fetched_libs_dir(*, cache_dir: Path = CACHE_DIR, pom: Path = POM) -> Path | None:
    """The cached libs dir for the pom's Kafka version if it is complete, else None."""
    libs_dir = cache_dir / f"libs-{kafka_version(pom)}"
    try:
        marker = (libs_dir / _FETCH_MARKER).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    # The digest covers the whole pom, so changing a dependency re-fetches even at the same
    # Kafka version.
    return libs_dir if marker == _pom_digest(pom) else None


def fetch(*, cache_dir: Path = CACHE_DIR, pom: Path = POM, timeout: float = 900.0) -> FetchResult:
    """Copy the broker jars into `cache_dir`/libs-<version>/ with Maven, unless already there.

    Runs ``mvn -q -B -f <pom> dependency:copy-dependencies`` without standard input, so it works
    in CI. Maven copies into a staging dir that is renamed into place only once complete: an
    interrupted fetch never leaves a libs dir that looks usable.
    """
    started = time.monotonic()
    version = kafka_version(pom)
    cached = fetched_libs_dir(cache_dir=cache_dir, pom=pom)
    if cached is not None:
        return FetchResult(version, cached, downloaded=False, seconds=time.monotonic() - started)

    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaDevError(
            "mvn (Apache Maven 3) is required to fetch the Kafka broker jars from Maven Central; "
            "install it (e.g. `apt-get install maven`) and retry"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"libs-{version}"
    staging = Path(tempfile.mkdtemp(prefix=f".libs-{version}-", dir=cache_dir))
    command = [
        mvn,
        "-q",
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
    ]
    try:
        proc.run(
            command,
            what=f"fetching the Kafka {version} jars with mvn",
            timeout=timeout,
            error=KafkaDevError,
        )
        if not any(staging.glob("kafka_2.13-*.jar")):
            raise KafkaDevError(f"mvn succeeded but copied no kafka_2.13 jar (pom: {pom})")
        (staging / _FETCH_MARKER).write_text(_pom_digest(pom) + "\n", encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # Gone already when the rename happened.
    return FetchResult(version, target, downloaded=True, seconds=time.monotonic() - started)


def _pom_digest(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()
