"""The image's offline commands as ``docker run --rm`` one-shots, and what the image declares.

``check-config`` and ``preview`` run with no network at all (``--network none``) on a mounted
configuration, hardened like every container here: they must need nothing but the image and
the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import CLICKSTREAM_EXAMPLES, EXAMPLE_CONFIG
from tests.image.deployment import CONFIG_DIR
from tests.image.engine import APP_GID, APP_UID, IMAGE_REF, docker, one_shot

pytestmark = pytest.mark.image

SIGN_UP = CLICKSTREAM_EXAMPLES / "sign_up.v1" / "email_signup.json"
#: Ten minutes after the examples' records, as the README's preview example says.
NOW = "2026-01-01T00:10:00Z"


def mounted_config(tmp_path: Path, text: str) -> list[str]:
    """``--volume`` of a directory holding `text` as config.yaml, at the image's config path."""
    directory = tmp_path / "etc"
    directory.mkdir()
    directory.chmod(0o755)
    (directory / "config.yaml").write_text(text)
    (directory / "config.yaml").chmod(0o644)
    return ["--volume", f"{directory}:{CONFIG_DIR}:ro"]


def test_check_config_validates_a_mounted_config_and_summarises_it(tmp_path: Path) -> None:
    done = one_shot(
        "check-config",
        f"{CONFIG_DIR}/config.yaml",
        docker_args=mounted_config(tmp_path, EXAMPLE_CONFIG.read_text()),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{CONFIG_DIR}/config.yaml: OK")
    for line in (
        "topic web.signups",
        "sign-ups → CompleteRegistration",
        "form-leads → Lead",
        "hashed (SHA-256): user.email, user.phone, user.external_id",
    ):
        assert line in done.stdout


def test_check_config_reports_every_problem_of_a_mounted_config(tmp_path: Path) -> None:
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    raw["delivery"] = {"max_batch_events": 5000}
    raw["kafka"]["bootstrap_server"] = raw["kafka"].pop("bootstrap_servers")
    raw["mappings"][0]["fields"]["user.emial"] = "user.email"
    done = one_shot(
        "check-config",
        f"{CONFIG_DIR}/config.yaml",
        docker_args=mounted_config(tmp_path, yaml.safe_dump(raw, sort_keys=False)),
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: invalid configuration:"), done.stderr
    for problem in (
        "delivery.max_batch_events: value is greater than the maximum of 1000",
        "kafka.bootstrap_server: unknown setting; did you mean bootstrap_servers?",
        "mappings[0].fields.user.emial: unknown TikTok field; did you mean user.email?",
    ):
        assert problem in done.stderr


def test_preview_prints_the_request_body_of_a_mounted_record_file(tmp_path: Path) -> None:
    records = tmp_path / "records"
    records.mkdir()
    records.chmod(0o755)
    (records / "sign_up.json").write_text(SIGN_UP.read_text())
    (records / "sign_up.json").chmod(0o644)
    done = one_shot(
        "preview", "--config", f"{CONFIG_DIR}/config.yaml", "--topic", "web.signups",
        "--now", NOW, "--json", "/records/sign_up.json",
        docker_args=[
            *mounted_config(tmp_path, EXAMPLE_CONFIG.read_text()),
            "--volume", f"{records}:/records:ro",
        ],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (outcome,) = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert outcome["outcome"] == "mapped"
    (event,) = outcome["body"]["data"]
    assert event["event"] == "CompleteRegistration"
    record = json.loads(SIGN_UP.read_text())
    assert re.fullmatch(r"[0-9a-f]{64}", event["user"]["email"])
    assert record["user"]["email"] not in done.stdout  # hashed before it could leave


def test_preview_reads_records_from_standard_input(tmp_path: Path) -> None:
    lines = [
        json.dumps(json.loads(SIGN_UP.read_text())),
        json.dumps({"event_id": "x", "timestamp": "not a time"}),
    ]
    done = one_shot(
        "preview", "--config", f"{CONFIG_DIR}/config.yaml", "--topic", "web.signups",
        "--now", NOW, "--json", "-",
        docker_args=mounted_config(tmp_path, EXAMPLE_CONFIG.read_text()),
        stdin="\n".join(lines) + "\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    outcomes = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert [o["outcome"] for o in outcomes] == ["mapped", "rejected"]
    assert outcomes[1]["line"] == 2


def test_the_image_declares_its_user_entry_point_command_port_and_health_check() -> None:
    done = docker("image", "inspect", "--format", "{{json .Config}}", IMAGE_REF)
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    assert config["User"] == f"{APP_UID}:{APP_GID}"
    assert config["Entrypoint"] == ["tiktok-events"]
    assert config["Cmd"] == ["run", "--config", f"{CONFIG_DIR}/config.yaml"]
    assert list(config["ExposedPorts"]) == ["9464/tcp"]
    test = config["Healthcheck"]["Test"]
    assert test[:2] == ["CMD", "python"]
    assert "/healthz" in test[-1]


def test_the_image_answers_version_and_help_as_its_own_user() -> None:
    version = one_shot("--version")
    assert version.returncode == 0, version.stderr
    assert re.fullmatch(r"tiktok-events \d+\.\d+\.\d+\n", version.stdout)
    done = one_shot("sandbox", "--help")
    assert done.returncode == 0, done.stderr
    assert "--faults" in done.stdout
