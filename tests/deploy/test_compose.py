"""docker-compose.yml: valid compose-spec, and a demo whose names, ports and files line up.

No Docker engine is needed: the file is checked against the compose-spec schema
(check-jsonschema's vendored copy), and then every hostname, port, mount, secret and start
condition is followed by hand, as `docker compose up` would need them.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from devkit.kafka import kafka_version
from processor.cli import build_parser
from tests.deploy.conftest import COMPOSE_FILE, DOCKERFILE, ROOT, check_config

EXAMPLE_CONFIG = ROOT / "config" / "example.yaml"
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command if isinstance(command, list) else command.split()


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def _config_file(compose: dict[str, Any], service: dict[str, Any], target: str) -> Path:
    """The repository file a service sees at `target` (through `configs:`)."""
    for ref in service.get("configs", []):
        if isinstance(ref, dict) and ref.get("target") == target:
            return ROOT / compose["configs"][ref["source"]]["file"]
    raise AssertionError(f"nothing is mounted at {target}")


def _processor_config(
    compose: dict[str, Any], services: dict[str, Any]
) -> tuple[Path, dict[str, Any]]:
    processor = services["processor"]
    target = _option(_command(processor), "--config")
    path = _config_file(compose, processor, target)
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    return path, config


def _unescape(text: str) -> str:
    return text.replace("$$", "$")


# --------------------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE_FILE),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_version_key_and_pinned_images(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    assert "version" not in compose, "compose-spec files have no version key"
    for name, service in services.items():
        image = service.get("image", "")
        if "build" in service:
            continue
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", image), f"{name}: pin {image!r}"


def test_depends_on_targets_exist_and_can_meet_their_condition(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for target, spec in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown service {target}"
            condition = spec["condition"]
            assert condition in CONDITIONS, f"{name} → {target}: {condition}"
            dependency = services[target]
            if condition == "service_healthy":
                check = dependency.get("healthcheck", {})
                unhealthy = f"{name} waits for {target} to be healthy, but it has no healthcheck"
                assert check.get("test"), unhealthy
                assert not check.get("disable"), unhealthy
            if condition == "service_completed_successfully":
                assert dependency.get("restart") == "no", f"{target} must be a one-shot"


def test_start_order_reaches_every_service(services: dict[str, Any]) -> None:
    # kafka first; the processor after the topics and the sandbox; the producer after it.
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    processor = services["processor"]["depends_on"]
    assert processor["kafka-init"]["condition"] == "service_completed_successfully"
    assert processor["sandbox"]["condition"] == "service_healthy"
    assert services["producer"]["depends_on"]["processor"]["condition"] == "service_healthy"

    def ancestors(name: str, seen: tuple[str, ...] = ()) -> set[str]:
        assert name not in seen, f"dependency cycle through {name}"
        deps = services[name].get("depends_on", {})
        return set(deps).union(*(ancestors(d, (*seen, name)) for d in deps))

    for name in services:
        ancestors(name)


def test_every_mounted_file_exists(compose: dict[str, Any], services: dict[str, Any]) -> None:
    missing = []
    for name, service in services.items():
        build = service.get("build")
        if build is not None:
            context = ROOT / build["context"]
            if not (context / build.get("dockerfile", "Dockerfile")).is_file():
                missing.append(f"{name}: build {context}")
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source")
            if source.startswith((".", "/")):  # a bind mount of a repository path
                if not (ROOT / source).exists():
                    missing.append(f"{name}: volume {source}")
            else:
                assert source in compose.get("volumes", {}), f"{name}: undeclared volume {source}"
        for kind in ("configs", "secrets"):
            for ref in service.get(kind, []):
                source = ref if isinstance(ref, str) else ref["source"]
                assert source in compose.get(kind, {}), f"{name}: undeclared {kind} {source}"
    for kind in ("configs", "secrets"):
        for key, spec in compose.get(kind, {}).items():
            if not (ROOT / spec["file"]).is_file():
                missing.append(f"{kind}.{key}: {spec['file']}")
    assert not missing, "files docker compose would not find:\n" + "\n".join(missing)


def test_compose_processor_config_passes_check_config(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    path, _ = _processor_config(compose, services)
    proc = check_config(path, services["processor"].get("environment", {}))
    assert proc.returncode == 0, proc.stderr
    assert ": OK" in proc.stdout


def test_compose_processor_config_points_at_the_compose_services(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    _, config = _processor_config(compose, services)
    # Kafka: the kafka service's listener for the compose network.
    host, port = config["kafka"]["bootstrap_servers"].split(":")
    assert host == "kafka"
    assert host in services
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"//{host}:{port}" in advertised
    # TikTok: the sandbox service, on the port its command listens on, at TikTok's path.
    endpoint = urlsplit(config["tiktok"]["endpoint"])
    assert endpoint.hostname == "sandbox"
    sandbox_command = _unescape(" ".join(_command(services["sandbox"])))
    assert f"--port {endpoint.port}" in sandbox_command
    assert "--host 0.0.0.0" in sandbox_command
    assert endpoint.path == "/open_api/v1.3/event/track/"
    # The token: the compose secret, named both in the file and in TIKTOK_ACCESS_TOKEN_FILE.
    processor = services["processor"]
    token_file = processor["environment"]["TIKTOK_ACCESS_TOKEN_FILE"]
    assert config["tiktok"]["access_token_file"] == token_file
    assert token_file in {f"/run/secrets/{s}" for s in processor["secrets"]}
    # The sandbox accepts exactly that token: it reads the same secret.
    assert set(services["sandbox"]["secrets"]) == set(processor["secrets"])
    assert token_file in sandbox_command


def test_compose_mappings_are_the_example_configs(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    """The demo runs config/example.yaml's mappings: change both together."""
    _, config = _processor_config(compose, services)
    example = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    assert config["mappings"] == example["mappings"]


def test_topics_are_created_for_every_mapping_and_the_dead_letters(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    _, config = _processor_config(compose, services)
    script = _unescape(" ".join(_command(services["kafka-init"])))
    match = re.search(r"for topic in ([^;]+);", script)
    assert match is not None, script
    created = set(match.group(1).split())
    wanted = {m["topic"] for m in config["mappings"]} | {config["kafka"]["dead_letter_topic"]}
    assert created == wanted
    assert "--bootstrap-server kafka:9092" in script
    found = re.search(r"--partitions (\d+)", script)
    assert found is not None, script
    partitions = int(found.group(1))
    workers = int(_option(_command(services["processor"]), "--workers"))
    assert partitions >= workers, "partitions >= replicas * workers"
    # The producer writes to the same broker.
    assert _option(_command(services["producer"]), "--bootstrap") == "kafka:9092"


def test_kafka_is_the_broker_version_of_the_tests(services: dict[str, Any]) -> None:
    version = kafka_version()
    assert version.startswith("4.")
    for name in ("kafka", "kafka-init"):
        assert services[name]["image"] == f"apache/kafka:{version}"


def test_prometheus_scrapes_the_processor(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    prometheus = services["prometheus"]
    config_path = _config_file(
        compose, prometheus, _option_eq(prometheus["command"], "--config.file")
    )
    prom = yaml.safe_load(config_path.read_text())
    _, processor_config = _processor_config(compose, services)
    port = processor_config["metrics"]["port"]
    targets = {
        target
        for job in prom["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    # One target whatever --workers says: the parent serves the workers' summed metrics.
    assert f"processor:{port}" in targets, f"scrape targets {sorted(targets)}"
    assert f"127.0.0.1:{port}:{port}" in services["processor"]["ports"]
    # The processor's metrics listen beyond localhost.
    assert processor_config["metrics"]["host"] == "0.0.0.0"  # noqa: S104
    # The alert rules file is the chart's, mounted where rule_files looks.
    for rule_file in prom["rule_files"]:
        source = _config_file(compose, prometheus, rule_file)
        assert source == ROOT / "helm" / "tiktok-events-processor" / "files" / "alerts.yaml"


def test_prometheus_config_passes_promtool(
    compose: dict[str, Any], services: dict[str, Any], promtool_bin: Path, tmp_path: Path
) -> None:
    """prometheus.yml as Prometheus reads it, with each rules file where compose mounts it."""
    prometheus = services["prometheus"]
    config_path = _config_file(
        compose, prometheus, _option_eq(prometheus["command"], "--config.file")
    )
    prom = yaml.safe_load(config_path.read_text())
    prom["rule_files"] = [
        str(_config_file(compose, prometheus, rule_file)) for rule_file in prom["rule_files"]
    ]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(prom))
    proc = subprocess.run(
        [str(promtool_bin), "check", "config", str(local)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _option_eq(args: list[str], name: str) -> str:
    for arg in args:
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"no {name}= in {args}")


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    grafana = services["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    provisioning = ROOT / next(s for s, t in mounts.items() if t == "/etc/grafana/provisioning")
    (datasource_file,) = (provisioning / "datasources").glob("*.yaml")
    (datasource,) = yaml.safe_load(datasource_file.read_text())["datasources"]
    url = urlsplit(datasource["url"])
    assert url.hostname == "prometheus"
    assert url.hostname in services
    assert f"127.0.0.1:{url.port}:{url.port}" in services["prometheus"]["ports"]
    (provider_file,) = (provisioning / "dashboards").glob("*.yaml")
    (provider,) = yaml.safe_load(provider_file.read_text())["providers"]
    dashboard_target = next(
        ref["target"] for ref in grafana["configs"] if ref["source"] == "dashboard"
    )
    assert Path(dashboard_target).parent == Path(provider["options"]["path"])
    assert compose["configs"]["dashboard"]["file"].endswith(
        "helm/tiktok-events-processor/files/dashboard.json"
    )
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == dashboard_target


def test_processor_stops_gracefully_within_compose_grace(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    _, config = _processor_config(compose, services)
    grace = services["processor"]["stop_grace_period"]
    assert grace.endswith("s")
    assert int(grace[:-1]) > config["delivery"].get("drain_timeout_s", 30)


def test_app_services_use_the_dockerfile_image(services: dict[str, Any]) -> None:
    for name in ("processor", "sandbox", "producer"):
        service = services[name]
        assert service["build"]["context"] == "."
        assert ROOT / service["build"]["dockerfile"] == DOCKERFILE
        assert service["image"] == services["processor"]["image"]
    # One-shots and the sandbox replace the image's /healthz check (port 9464 is the processor's).
    assert services["producer"]["healthcheck"] == {"disable": True}
    assert "8080/healthz" in " ".join(services["sandbox"]["healthcheck"]["test"])
    assert "9464/healthz" in " ".join(services["processor"]["healthcheck"]["test"])


def test_app_commands_are_valid_command_lines(services: dict[str, Any]) -> None:
    for name in ("processor", "producer"):
        args = build_parser().parse_args(_command(services[name]))
        assert args.func.__name__ in {"cmd_run", "cmd_produce_sample"}, name


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_sandbox_command_serves_and_accepts_the_secret_token(
    compose: dict[str, Any], services: dict[str, Any], tmp_path: Path
) -> None:
    """Runs the sandbox service's own shell command (its paths moved into a temporary
    directory): it must serve /healthz and accept the compose secret as its token."""
    sandbox = services["sandbox"]
    assert sandbox["entrypoint"] == ["/bin/sh", "-c"]
    (script,) = sandbox["command"]
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secret_name,) = sandbox["secrets"]
    token_source = ROOT / compose["secrets"][secret_name]["file"]
    (secrets / secret_name).write_bytes(token_source.read_bytes())
    port = _free_port()
    script = _unescape(script).replace("/run/secrets/", f"{secrets}/")
    script = script.replace("--port 8080", f"--port {port}")
    script = script.replace("--host 0.0.0.0", "--host 127.0.0.1")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("TIKTOK_SANDBOX_TOKEN", None)
    server = subprocess.Popen(
        ["/bin/sh", "-c", script],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as reply:  # noqa: S310
                    assert reply.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, f"the sandbox exited:\n{server.communicate()[0]}"
                assert time.monotonic() < deadline, "the sandbox did not answer /healthz"
                time.sleep(0.1)

        def track(token: str) -> int:
            body = json.dumps(
                {"event_source": "web", "event_source_id": "D34FV3JC77U1PDQ72P1G", "data": []}
            ).encode()
            request = urllib.request.Request(  # noqa: S310 - a local http URL
                f"{base}/open_api/v1.3/event/track/",
                data=body,
                headers={"Access-Token": token, "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=5) as reply:  # noqa: S310
                code: int = json.load(reply)["code"]
            return code

        token = token_source.read_text().strip()
        # TikTok's answer to an unknown token is 40105; the secret's token gets past that check.
        assert track("not-the-compose-token") == 40105
        assert track(token) != 40105
    finally:
        server.terminate()
        server.communicate(timeout=10)
