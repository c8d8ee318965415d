"""Fixtures of the fault suite, and the table it prints at the end of the session.

The broker, cluster, sandbox, pipeline and processor fixtures are the integration
suite's own (imported from ``tests/integration/conftest.py``, documented there); the
broker and the cluster are scoped to this package, so they stop when its tests are done.
Added here:

* ``lone_broker`` (function, `KafkaCluster`): a single-node broker of the test's own in
  a temporary directory, for tests that stop the broker (the session's broker is shared);
* ``pipeline_on`` (function): ``pipeline_on(topics, partitions=3, **Pipeline options)``
  makes the four sample topics and a dead-letter topic with a `TopicFactory` of any
  broker or cluster (``make_pipeline`` always uses the session broker);
* ``fault_table`` (session, `FaultTable`): where each test adds its accounting row.

Known crashes: a test that fails because a processor it ran died of one of the bugs in
``KNOWN_CRASHES`` (recognised by the exact line in the processor's log) is reported as
an expected failure naming the bug and the log line, not as a pass; any other failure
fails. Remove an entry once its bug is fixed.

Every test here is marked ``faults`` (``pytest -m faults``; ``make soak`` runs them
bigger), plus ``kafka`` / ``cluster`` like the integration tests.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.kafka import KafkaCluster, TopicFactory, unique_name
from processor.sandbox import Sandbox
from tests.faults.accounting import FaultTable
from tests.integration import conftest as integration
from tests.integration.conftest import (  # noqa: F401 - fixtures, found by name
    kafka_cluster,
    make_pipeline,
    new_cluster_topic,
    new_topic,
    processors,
    sandbox,
)
from tests.integration.pipeline import Pipeline

HERE = Path(__file__).resolve().parent

# The integration suite's broker and three-node cluster, the same fixtures with the scope
# of this package: a session-scoped copy would keep four idle JVMs (about 15% of a core)
# running through every later test of the session.
kafka_bootstrap = pytest.fixture(scope="package", name="kafka_bootstrap")(
    inspect.unwrap(integration.kafka_bootstrap)
)
kafka_cluster_session = pytest.fixture(scope="package", name="kafka_cluster_session")(
    inspect.unwrap(integration.kafka_cluster_session)
)

_TABLE = pytest.StashKey[FaultTable]()

#: Crashes this suite found that are not fixed yet: the line a processor's log ends
#: with, and the bug.
KNOWN_CRASHES: tuple[tuple[re.Pattern[str], str], ...] = ()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mine = [item for item in items if HERE in item.path.parents]
    for item in mine:
        item.add_marker(pytest.mark.faults)
        if "lone_broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kafka)
    # The integration suite's markers (kafka, cluster), also when only this folder runs.
    integration.pytest_collection_modifyitems(mine)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    table = config.stash.get(_TABLE, None)
    if table is None or not table.rows:
        return
    terminalreporter.section("fault suite: every expected event accounted for")
    for line in table.lines():
        terminalreporter.write_line(line)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call" and report.failed and HERE in item.path.parents:
        crash = known_crash(getattr(item, "funcargs", {}).get("tmp_path"))
        if crash is not None:
            report.outcome = "skipped"
            report.wasxfail = crash
            table = item.config.stash.get(_TABLE, None)
            if table is not None:
                table.note(f"XFAIL {item.name}: {crash}")
    return report


def known_crash(tmp_path: Path | None) -> str | None:
    """The known bug a processor of this test died of, with its log line, if any."""
    if tmp_path is None:
        return None
    for log in sorted(tmp_path.glob("processor-*.log")):
        text = log.read_text(errors="replace")
        for pattern, bug in KNOWN_CRASHES:
            found = pattern.search(text)
            if found:
                return f"known bug: {bug} ({log.name}: {found.group(0)})"
    return None


@pytest.fixture(scope="session")
def fault_table(request: pytest.FixtureRequest) -> FaultTable:
    config = request.config
    if _TABLE not in config.stash:
        config.stash[_TABLE] = FaultTable()
    return config.stash[_TABLE]


@pytest.fixture
def lone_broker(tmp_path: Path) -> Iterator[KafkaCluster]:
    """A single-node broker this test may stop and restart."""
    with KafkaCluster(tmp_path / "lone-broker", nodes=1) as broker:
        yield broker


@pytest.fixture
def pipeline_on(
    sandbox: Sandbox,  # noqa: F811 - the imported fixture, requested by name
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., Pipeline]]:
    factories: list[TopicFactory] = []

    def make(topics: TopicFactory, partitions: int = 3, **options: Any) -> Pipeline:
        factories.append(topics)
        return Pipeline(
            bootstrap=topics.bootstrap,
            topics={
                kind: topics(partitions=partitions)
                for kind in ("page_view", "button_click", "sign_up", "form_submit")
            },
            dead_letter_topic=topics(partitions=1),
            group=unique_name(f"group-{request.node.name}"),
            sandbox=sandbox,
            workdir=tmp_path,
            **options,
        )

    yield make
    for factory in factories:
        factory.cleanup()
