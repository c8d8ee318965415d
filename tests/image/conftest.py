"""Fixtures of the image tests: the built image run for real on a Docker engine.

These tests need an engine and the image, which ``make image-test`` provides: it runs
``python -m devkit.image run -- pytest -m image tests/image``, which starts an engine when none
answers, builds the image and sets ``TIKTOK_EVENTS_IMAGE``. Without that variable (a plain
``pytest`` run) every test marked ``image`` here is skipped with that advice; when devkit.image
found that no engine can be had on this machine, they are skipped with its reason. The tests of
devkit.image's own logic (test_devkit_image.py, unmarked) need neither and always run.

The broker and sandbox fixtures are the integration tests' own (tests/integration/conftest.py):
a real single-node KRaft broker on 127.0.0.1 (or KAFKA_BOOTSTRAP_SERVERS) and the TikTok
sandbox on 127.0.0.1, which the containers reach through the host's network.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from devkit.image import IMAGE_ENV, SKIP_ENV
from tests.image.engine import Container
from tests.integration.conftest import (  # the real broker and sandbox fixtures, reused
    group_id,
    kafka_bootstrap,
    make_pipeline,
    new_topic,
    sandbox,
)

__all__ = ["group_id", "kafka_bootstrap", "make_pipeline", "new_topic", "sandbox"]

HERE = Path(__file__).resolve().parent


def _not_ready() -> str | None:
    if os.environ.get(IMAGE_ENV):
        return None
    reason = os.environ.get(SKIP_ENV)
    if reason:
        return reason
    return (
        "the image tests need a Docker engine and the built image: run `make image-test` "
        f"(it sets {IMAGE_ENV})"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = _not_ready()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        # The tests of devkit.image's own logic (unmarked) need no engine and always run.
        if item.get_closest_marker("image") and HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(skip)


StartContainer = Callable[..., Container]


@pytest.fixture
def containers() -> Iterator[StartContainer]:
    """``containers(name, docker_args=(), args=())`` starts one; all are removed after the test."""
    started: list[Container] = []

    def start(name: str, docker_args: Sequence[str] = (), args: Sequence[str] = ()) -> Container:
        container = Container(name, docker_args, args)
        started.append(container)
        return container

    yield start
    for container in started:
        container.remove()
