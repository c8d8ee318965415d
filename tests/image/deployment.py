"""A processor container set up as the Helm chart sets up its pod, for one `Pipeline`.

The chart mounts the configuration directory at /etc/tiktok-events, the token Secret as a
directory at /var/run/secrets/tiktok-events (the file ``access-token``, named by
TIKTOK_ACCESS_TOKEN_FILE) and an emptyDir at /tmp (TMPDIR), all on a read-only root. Here the
same paths are bind mounts of a test's files, and the metrics port is the pipeline's (given as
METRICS_PORT, which the image's HEALTHCHECK asks too), because the container shares the host's
network with everything else on this machine.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.image.engine import SecretDir
from tests.integration.pipeline import TOKEN, Pipeline

CONFIG_DIR = "/etc/tiktok-events"
TOKEN_DIR = "/var/run/secrets/tiktok-events"
TOKEN_KEY = "access-token"
#: The container's one writable place, a tmpfs (the chart's emptyDir, compose's tmpfs).
TMP_DIR = "/tmp"  # noqa: S108 - inside the container, not the host's


@dataclass
class Deployment:
    """The mounts and environment of a processor container for `pipeline`."""

    pipeline: Pipeline
    config_dir: Path
    secret: SecretDir

    @classmethod
    def of(cls, pipeline: Pipeline, workdir: Path) -> Deployment:
        config_dir = workdir / "etc"
        config_dir.mkdir()
        config_dir.chmod(0o755)
        shutil.copyfile(pipeline.config_path, config_dir / "config.yaml")
        (config_dir / "config.yaml").chmod(0o644)
        return cls(pipeline, config_dir, SecretDir(workdir / "secret", TOKEN_KEY, TOKEN))

    def docker_args(self) -> list[str]:
        return [
            "--tmpfs", TMP_DIR, "--env", f"TMPDIR={TMP_DIR}",
            "--env", f"METRICS_PORT={self.pipeline.metrics_port}",
            "--env", f"TIKTOK_ACCESS_TOKEN_FILE={TOKEN_DIR}/{TOKEN_KEY}",
            "--volume", f"{self.config_dir}:{CONFIG_DIR}:ro",
            "--volume", f"{self.secret.path}:{TOKEN_DIR}:ro",
        ]  # fmt: skip
