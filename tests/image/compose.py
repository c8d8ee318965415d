"""docker-compose.yml's own services, made runnable on this machine's engine.

docker-compose.yml is the whole demo stack. Here the services that run the project's image,
``sandbox``, ``processor`` and ``producer``, are taken from it as they are (their commands,
environment, secrets, read-only roots, tmpfs, health checks, stop grace periods, restart policies
and start conditions) and only these changes are made, each because this machine differs from
a developer's:

1. no top-level ``name``: Debian's compose (docker-compose 1.29, the only one Debian bookworm
   packages) refuses the key; the name is given with ``-p`` instead, which is the same thing;
2. ``configs`` become read-only bind mounts of the same files at the same targets: compose 1.29
   ignores ``configs`` outside a swarm, and mounting a file config is what the compose plugin
   does with it anyway;
3. host networking (``network_mode: host``, no ``ports``) with ``kafka`` and ``sandbox`` as
   names of 127.0.0.1: the engine has no bridge network, so the services' own addresses
   (``kafka:9092``, ``http://sandbox:8080``) must lead to this machine's loopback, where the
   test's broker listens on 9092 and the sandbox service on 8080;
4. the image is still built by compose (``pull_policy: build``), on the host's network;
5. ``kafka`` (the apache/kafka image) is the test's local KRaft broker instead, and
   ``kafka-init`` creates the same topics with the same partition count, with the project's
   image (confluent-kafka's admin client) instead of apache/kafka's shell tools;
6. ``prometheus`` and ``grafana`` are left out: their images cannot be pulled here (their
   configuration is checked offline by tests/deploy/);
7. the producer sends `PRODUCER_COUNT` records at `PRODUCER_RATE` a second, not 60,000 at 50 a
   second (20 minutes).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from tests.image.engine import IMAGE_REF

#: The services of docker-compose.yml that run the project's image.
APP_SERVICES = ("sandbox", "processor", "producer")
#: Services whose images cannot be pulled here.
LEFT_OUT = ("prometheus", "grafana")
LOOPBACK_NAMES = ("kafka", "sandbox")
#: Where the services expect them: the broker at kafka:9092, the sandbox at sandbox:8080, the
#: processor's metrics at 9464 (deploy/compose/processor.yaml).
BROKER_PORT = 9092
SANDBOX_PORT = 8080
METRICS_PORT = 9464
PRODUCER_COUNT = 2000
PRODUCER_RATE = 1000

_KAFKA_INIT = """
import sys, time
from confluent_kafka.admin import AdminClient, NewTopic

topics, partitions = sys.argv[1].split(","), int(sys.argv[2])
admin = AdminClient({"bootstrap.servers": "kafka:%d" % int(sys.argv[3])})
existing = set(admin.list_topics(timeout=30).topics)
wanted = [NewTopic(t, num_partitions=partitions) for t in topics if t not in existing]
for topic, future in (admin.create_topics(wanted, operation_timeout=30) if wanted else {}).items():
    future.result()
# Like kafka-topics.sh --list at the end of the real kafka-init, once the broker's metadata
# shows every topic (it can lag a creation by a moment).
deadline = time.monotonic() + 30
while not set(topics) <= set(listed := admin.list_topics(timeout=30).topics):
    if time.monotonic() > deadline:
        sys.exit("topics missing after creation: %s" % sorted(set(topics) - set(listed)))
    time.sleep(0.2)
print("\\n".join(sorted(listed)))
"""


def init_topics(kafka_init: dict[str, Any]) -> tuple[list[str], int]:
    """The topics and partition count of docker-compose.yml's kafka-init script."""
    script = "\n".join(kafka_init["command"])
    topics = re.search(r"for topic in ([^;]+); do", script)
    partitions = re.search(r"--partitions (\d+)", script)
    assert topics, f"kafka-init's script changed: {script}"
    assert partitions, f"kafka-init's script changed: {script}"
    return topics.group(1).split(), int(partitions.group(1))


def _producer_command(command: list[str]) -> list[str]:
    changed = list(command)
    for option, value in (("--count", PRODUCER_COUNT), ("--rate", PRODUCER_RATE)):
        changed[changed.index(option) + 1] = str(value)
    return changed


def local_stack(doc: dict[str, Any], root: Path) -> dict[str, Any]:
    """docker-compose.yml (`doc`, parsed) with the changes of this module's docstring."""
    services: dict[str, Any] = {}
    for name in APP_SERVICES:
        service = copy.deepcopy(doc["services"][name])
        for ref in service.pop("configs", []):
            source = root / doc["configs"][ref["source"]]["file"]
            service.setdefault("volumes", []).append(f"{source}:{ref['target']}:ro")
        service.pop("ports", None)
        service["network_mode"] = "host"
        service["extra_hosts"] = [f"{host}:127.0.0.1" for host in LOOPBACK_NAMES]
        service["build"] = {**service["build"], "context": str(root), "network": "host"}
        service["build"]["dockerfile"] = str(root / service["build"]["dockerfile"])
        services[name] = service
    services["producer"]["command"] = _producer_command(services["producer"]["command"])

    topics, partitions = init_topics(doc["services"]["kafka-init"])
    services["kafka-init"] = {
        "image": IMAGE_REF,
        "pull_policy": "never",
        "network_mode": "host",
        "extra_hosts": [f"{host}:127.0.0.1" for host in LOOPBACK_NAMES],
        "read_only": True,
        "entrypoint": ["python", "-c", _KAFKA_INIT],
        "command": [",".join(topics), str(partitions), str(BROKER_PORT)],
        "restart": "no",
    }
    for service in services.values():
        depends_on = service.get("depends_on", {})
        depends_on.pop("kafka", None)
    secrets = {
        name: {"file": str(root / secret["file"])} for name, secret in doc["secrets"].items()
    }
    return {"services": services, "secrets": secrets}
