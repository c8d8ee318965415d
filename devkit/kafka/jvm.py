"""The Java that runs Kafka: finding a Java 17+ and building a JVM command line for Kafka.

`java_executable()` is $JAVA_HOME/bin/java or `java` on PATH, checked once per process to be
new enough; `java_command()` is the JVM command line for one Kafka main class (the broker or
its storage tool), sized and tuned for small development and CI machines, logging through
dev/kafka/log4j2.yaml.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from devkit import proc
from devkit.kafka.errors import KafkaDevError
from devkit.kafka.jars import REPO_ROOT, kafka_version

LOG_CONFIG = REPO_ROOT / "dev" / "kafka" / "log4j2.yaml"
MIN_JAVA = 17  # Kafka 4.x brokers run on Java 17+.


@functools.cache
def java_executable() -> str:
    """$JAVA_HOME/bin/java or `java` on PATH, checked to be Java 17 or newer."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    java = str(candidate) if candidate is not None and candidate.is_file() else shutil.which("java")
    if java is None:
        raise KafkaDevError(
            f"java ({MIN_JAVA} or newer) is required to run the local Kafka broker; install a "
            "JRE (e.g. `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME"
        )
    output = proc.run(
        [java, "-version"], what=f"`{java} -version`", timeout=60, error=KafkaDevError
    ).stdout
    match = re.search(r'version "(\d+)(?:\.(\d+))?', output)
    if match is None:
        raise KafkaDevError(f"`{java} -version` printed no version:\n{proc.tail(output)}")
    major = int(match.group(1))
    if major == 1:  # Java 8 and older call themselves "1.8".
        major = int(match.group(2) or 0)
    if major < MIN_JAVA:
        raise KafkaDevError(
            f"Kafka {kafka_version()} needs Java {MIN_JAVA} or newer but {java} is Java {major}; "
            "point JAVA_HOME at a newer JDK"
        )
    return java


def java_command(
    java: str, libs_dir: Path, main_class: str, args: Sequence[str], *, heap: str, logs_dir: Path
) -> list[str]:
    """The command line running `main_class` from the jars in `libs_dir` with `args`."""
    return [
        java,
        f"-Xmx{heap}",
        "-Xms64m",
        # One GC thread and C1-only JIT: the least CPU at start-up and at rest, which matters
        # more on a 2-core CI machine running three brokers than peak throughput does.
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG_CONFIG}",
        f"-Dkafka.logs.dir={logs_dir}",
        "-cp",
        f"{libs_dir}/*",
        main_class,
        *args,
    ]
