"""End-to-end benchmark: Kafka → ``tiktok-events run`` → the TikTok sandbox, nothing mocked.

Starts what it needs: the ``make kafka-up`` broker when it runs, else a temporary one-node
broker; the sandbox in its own process (``python -m processor sandbox``, so its CPU is its
own). Produces N sample records once (4 topics x 4 partitions), then runs, each on a fresh
consumer group against a reset sandbox:

* the raw loop (baseline): a plain confluent-kafka consumer in its own process doing
  ``consume(1000)`` and ``orjson.loads`` per record, no commits;
* ``python -m processor run --workers 1``, then ``--workers 2``.

Then, unless skipped:

* outage: 1,000,000 records wait on fresh topics while the sandbox answers HTTP 503 to
  everything for 60 s; one worker runs through it, the faults are cleared, and it must
  deliver every event;
* steady latency: records produced at 5,000/s for 30 s while one worker runs with
  ``delivery.linger_ms: 200``; p50/p99 from the processor's own
  ``tiktok_events_end_to_end_latency_seconds`` histogram, interpolated within buckets as
  Prometheus's ``histogram_quantile`` does.

Figures (the machine is small and noisy: CPU per record, from the OS's accounting, is the
stable one; the rates move with whatever else runs):

* ``*_cpu_us_per_record``: user + system CPU of the whole process tree (the processor and
  the workers it reaped; start-up and the SIGTERM drain included) from ``os.wait4``, per
  record read. The raw loop's includes its interpreter start-up too;
  ``baseline_loop_cpu_us_per_record`` is its loop alone;
* ``*_records_per_s`` / ``*_events_per_s``: records (or accepted events) over the time from
  the first accepted event to the last; for the raw loop, records over its consume time;
* ``*_peak_rss_mb``: the peak of the summed VmRSS of the process and its children, sampled
  every 0.2 s; ``*_max_process_rss_mb``: the largest VmHWM of one of them (``ru_maxrss``
  from ``os.wait4`` would do, but on Linux a child's starts at its parent's RSS at the
  fork, i.e. at this script's);
* ``sandbox_cpu_us_per_event``: the sandbox process's CPU (/proc) per accepted event, one
  worker's run (what the receiving end costs, and is not counted as the relay's);
  ``sandbox_capacity_events_per_core_s`` is the events one core of it takes a second at
  that cost (its own benchmark, ``bench/sandbox.py``, measures it alone);
* ``outage_drain_s``: from clearing the faults to the last event accepted (the wait for
  the next retry included: the backoff has grown to its maximum by then);
* ``load_average``: the mean 1-minute load average sampled while the stages ran (the
  benchmark's own broker, sandbox and processor included).

With ``--repeat R`` every stage runs R times (the records are produced once) and each
figure is the median (booleans: all of them). ``--json`` prints one JSON object holding
every figure as the last line. Exits 1, naming the stage, when any run does not deliver
every expected event. Everything started is stopped on the way out, Ctrl-C included.

    .venv/bin/python bench/e2e.py [--records 300000] [--repeat 1] [--json]
                                  [--skip-outage] [--skip-latency]
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import inspect
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import httpx
import orjson
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.sandbox_process import TOKEN, cpu_seconds  # noqa: E402
from devkit.kafka import (  # noqa: E402
    KafkaCluster,
    admin_client,
    delete_topics,
    free_port,
    running_bootstrap,
    unique_name,
)
from processor.kafka.producer import ensure_topics, produce_sample  # noqa: E402
from processor.sample import DEFAULT_TOPICS, generate  # noqa: E402
from processor.sandbox.protocol import TRACK_PATH  # noqa: E402

PARTITIONS = 4
#: The generator's spacing of record timestamps (``ClickstreamGenerator`` step_ms).
STEP_S = 0.003
#: Records generated at once when producing many (the generator holds ~4 kB a record).
CHUNK = 100_000
LATENCY_METRIC = "tiktok_events_end_to_end_latency_seconds"
#: The delivery settings of every run: the defaults (max_buffered_events 20,000 among
#: them), with TikTok's default request budget of 15/s lifted to measure the relay.
DELIVERY: Mapping[str, Any] = {"max_requests_per_s": 10_000}
SAMPLE_INTERVAL_S = 0.2
POLL_S = 0.05


class StageFailed(Exception):
    """A stage did not deliver every expected event (or could not run)."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage


# -- processes ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    """What ``os.wait4`` says of a reaped process and the children it reaped.

    Its ``ru_maxrss`` is left out: on Linux a child's starts at its parent's RSS at the fork,
    so it would report this script's memory. :class:`TreeSampler` reads VmHWM instead.
    """

    cpu_s: float
    exit_code: int


def kill_group(process: subprocess.Popen[Any]) -> None:
    """SIGKILL ``process``'s process group (it leads one) and reap it, unless it was reaped."""
    if process.returncode is not None:
        return  # its group id may be someone else's by now
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(process.pid, 0)
    process.returncode = -signal.SIGKILL


def exited(process: subprocess.Popen[Any]) -> bool:
    """Whether ``process`` has exited, without reaping it (its rusage is still to come)."""
    return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def reap(process: subprocess.Popen[Any], timeout: float) -> Usage:
    """Wait for ``process`` (SIGKILL its group after ``timeout``) and return its usage."""
    deadline = time.monotonic() + timeout
    while not exited(process) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    # Unreaped, its pid (the group id) cannot be reused yet: SIGKILL what is left of the group
    # (all of it when overdue; else a helper such as multiprocessing's resource tracker).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    _pid, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return Usage(cpu_s=usage.ru_utime + usage.ru_stime, exit_code=process.returncode)


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants, from the parent ids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


_MEMORY = re.compile(r"^(VmRSS|VmHWM):\s+(\d+)", re.MULTILINE)


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in kB: its resident memory now and its peak since its exec
    ((0, 0) once it is gone or a zombie)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    found = dict(_MEMORY.findall(status))
    return int(found.get("VmRSS", 0)), int(found.get("VmHWM", 0))


class TreeSampler:
    """In a thread, every 0.2 s: the summed VmRSS of a process tree (keeping the peak), the
    largest VmHWM of any of its processes, and the 1-minute load average."""

    def __init__(self, root: int, loads: list[float]) -> None:
        self._root = root
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)
        self.loads = loads
        self.peak_kb = 0
        self.max_process_kb = 0

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        """The peak of the tree's summed RSS."""
        return self.peak_kb / 1024

    @property
    def max_process_mb(self) -> float:
        """The most one process of the tree held (its high-water mark, so peaks between
        samples count too)."""
        return self.max_process_kb / 1024

    def _run(self) -> None:
        while True:
            memory = [memory_kb(pid) for pid in process_tree(self._root)]
            self.peak_kb = max(self.peak_kb, sum(rss for rss, _ in memory))
            self.max_process_kb = max([self.max_process_kb, *(hwm for _, hwm in memory)])
            self.loads.append(os.getloadavg()[0])
            if self._stop.wait(SAMPLE_INTERVAL_S):
                return


def log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    tail = text.strip().splitlines()[-lines:]
    return ("; log " + str(path) + ":\n  " + "\n  ".join(tail)) if tail else ""


# -- the baseline, run alone --------------------------------------------------------------


def raw_loop(bootstrap: str, group: str, topics: list[str], count: int, timeout: float) -> None:
    """Read ``count`` records with ``consume(1000)``, ``orjson.loads`` each, nothing else,
    no commits; print one JSON line: records, consume seconds, CPU seconds of the loop.

    Run alone by ``python -c`` (see :func:`raw_loop_command`), so its process holds only
    what a plain consumer needs and ``os.wait4`` accounts for that alone.
    """
    import time  # noqa: PLC0415 - this function is the whole program of its process

    import orjson  # noqa: PLC0415
    from confluent_kafka import Consumer  # noqa: PLC0415

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(topics)
    seen = 0
    started = None
    cpu_started = time.process_time()
    deadline = time.monotonic() + timeout
    while seen < count and time.monotonic() < deadline:
        batch = consumer.consume(num_messages=1000, timeout=0.5)
        if batch and started is None:
            started = time.monotonic()
        for message in batch:
            if message.error() is None:
                orjson.loads(message.value())
                seen += 1
    took = time.monotonic() - (started or time.monotonic())
    loop_cpu = time.process_time() - cpu_started
    consumer.close()
    print(orjson.dumps({"records": seen, "seconds": took, "loop_cpu_s": loop_cpu}).decode())


def raw_loop_command(*args: Any) -> list[str]:
    source = textwrap.dedent(inspect.getsource(raw_loop))
    call = f"raw_loop({', '.join(repr(a) for a in args)})"
    return [sys.executable, "-c", f"{source}\n{call}\n"]


# -- the sandbox --------------------------------------------------------------------------


class SandboxControl:
    """The sandbox's admin API (``/sandbox/...``) and its process's CPU."""

    def __init__(self, url: str, pid: int) -> None:
        self.url = url
        self.endpoint = url + TRACK_PATH
        self.pid = pid
        self._http = httpx.Client(base_url=url, timeout=10)

    def close(self) -> None:
        self._http.close()

    def reset(self) -> None:
        self._http.post("/sandbox/reset").raise_for_status()

    def set_faults(self, spec: str) -> None:
        self._http.post("/sandbox/faults", json={"spec": spec}).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = self._http.get("/sandbox/stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    def accepted(self) -> int:
        return int(self.stats()["events"]["accepted"])

    def cpu_s(self) -> float:
        return cpu_seconds(self.pid) or 0.0


# -- the histogram ------------------------------------------------------------------------


def histogram_buckets(text: str, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of histogram ``name`` in a Prometheus text exposition,
    summed over its label sets, by bound."""
    line = re.compile(rf"^{re.escape(name)}_bucket\{{([^}}]*)\}} (\S+)", re.MULTILINE)
    totals: dict[float, float] = {}
    for labels, value in line.findall(text):
        bound = re.search(r'le="([^"]+)"', labels)
        if bound:
            le = float(bound.group(1))  # "+Inf" parses as inf
            totals[le] = totals.get(le, 0.0) + float(value)
    return sorted(totals.items())


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile as Prometheus's ``histogram_quantile`` computes it: linear
    interpolation within the bucket the rank falls in (the lowest starting at 0); a rank in
    the +Inf bucket gives the highest finite bound. None without observations."""
    if not buckets or buckets[-1][0] != math.inf or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == math.inf:
                return lower
            if bound <= 0 or count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return None


# -- the benchmark ------------------------------------------------------------------------


def progress(message: str) -> None:
    print(f"e2e: {message}", file=sys.stderr, flush=True)


class Bench:
    """The broker, the sandbox and the topics one run shares, and its stages."""

    def __init__(self, stack: ExitStack, args: argparse.Namespace) -> None:
        self.stack = stack
        self.args = args
        self.workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-e2e-")))
        # Byte-compiled first, as the image is at build: where PYTHONDONTWRITEBYTECODE is
        # set, every process start would otherwise compile the package again (~0.1 s CPU).
        compileall.compile_dir(ROOT / "processor", quiet=1)
        # Neither the processor nor the sandbox may pick up this shell's overrides.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "TIKTOK_"))}
        self.env["TMPDIR"] = str(self.workdir)  # the workers' metric files stay in here
        self.token_file = self.workdir / "token"
        self.token_file.write_text(TOKEN)
        self.token_file.chmod(0o600)
        self.loads: list[float] = []
        self.groups: list[str] = []
        self.shared_broker = False
        self.bootstrap, self.broker = self._start_broker()
        self.sandbox = self._start_sandbox()
        self.records = self.events = 0
        self.main_topics: dict[str, str] = {}
        self.outage_topics: dict[str, str] = {}
        self.outage_events = 0

    # -- set-up ---------------------------------------------------------------------------

    def _start_broker(self) -> tuple[str, str]:
        bootstrap = running_bootstrap()
        if bootstrap:
            self.shared_broker = True
            self.stack.callback(self._forget_groups, bootstrap)
            return bootstrap, "make kafka-up broker"
        progress("starting a temporary one-node broker")
        cluster = self.stack.enter_context(KafkaCluster(self.workdir / "kafka", nodes=1))
        return cluster.bootstrap_servers, "temporary one-node KafkaCluster"

    def _forget_groups(self, bootstrap: str) -> None:
        """On the shared broker: delete this run's consumer groups, best effort."""
        if not self.groups:
            return
        admin = admin_client(bootstrap)
        for future in admin.delete_consumer_groups(self.groups, request_timeout=10).values():
            with contextlib.suppress(Exception):
                future.result(timeout=10)

    def spawn(self, name: str, command: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        """Start ``command`` in its own process group (killed on the way out); its output
        goes to ``<workdir>/<name>.log``."""
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=out, stderr=out,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        self.stack.callback(kill_group, process)
        return process, log

    def _start_sandbox(self) -> SandboxControl:
        command = [sys.executable, "-m", "processor", "sandbox", "--port", "0"]
        command += ["--log-level", "warning", "--max-stored-events", "1000"]
        env = {**self.env, "TIKTOK_SANDBOX_TOKEN": TOKEN}  # not on the command line
        log = self.workdir / "sandbox.log"
        with log.open("ab") as errors:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=errors,
                stdin=subprocess.DEVNULL, start_new_session=True, text=True,
            )  # fmt: skip
        self.stack.callback(kill_group, process)
        line = process.stdout.readline() if process.stdout else ""
        if process.stdout:
            process.stdout.close()
        match = re.search(r"(http://[^\s)]+)", line)
        if not match:
            raise StageFailed("start-up", f"the sandbox did not start: {line!r}{log_tail(log)}")
        control = SandboxControl(match.group(1), process.pid)
        self.stack.callback(control.close)
        return control

    def new_topics(self, label: str) -> dict[str, str]:
        suffix = unique_name("e2e")
        topics = {kind: f"bench.{label}.{kind}.{suffix}" for kind in DEFAULT_TOPICS}
        ensure_topics(self.bootstrap, list(topics.values()), partitions=PARTITIONS)
        if self.shared_broker:  # leave it as it was
            self.stack.callback(delete_topics, self.bootstrap, list(topics.values()))
        return topics

    def prepare(self) -> None:
        """Produce the records every stage reads (once)."""
        args = self.args
        self.main_topics = self.new_topics("main")
        progress(f"producing {args.records:,} records to 4 topics x {PARTITIONS} partitions")
        self.records = args.records
        self.events = self.produce_generated(
            self.main_topics, args.records, seed=9, start=time.time() - 300
        )
        if not args.skip_outage:
            self.outage_topics = self.new_topics("outage")
            progress(f"producing {args.outage_records:,} records for the outage")
            # All in the past: a million records span 50 minutes of timestamps.
            start = time.time() - args.outage_records * STEP_S - 60
            self.outage_events = self.produce_generated(
                self.outage_topics, args.outage_records, seed=1000, start=start
            )

    def produce_generated(
        self, topics: dict[str, str], count: int, *, seed: int, start: float
    ) -> int:
        """Produce ``count`` sample records, generated a chunk at a time (the generator
        holds ~4 kB a record: this script stays small beside what it measures); returns
        the events they should become."""
        events = 0
        for i, first in enumerate(range(0, count, CHUNK)):
            n = min(CHUNK, count - first)
            chunk_start = start + first * STEP_S
            records, expected = generate(n, seed=seed + i, start=chunk_start, topics=topics)
            if produce_sample(self.bootstrap, records) != n:
                raise StageFailed("produce", "the broker did not acknowledge every record")
            events += sum(expected.values())
            del records
        return events

    def write_config(self, name: str, topics: dict[str, str], **delivery: Any) -> tuple[Path, int]:
        """The example configuration on ``topics`` with a fresh consumer group, the sandbox's
        endpoint and token, the request budget lifted and metrics on a free port."""
        raw = yaml.safe_load((ROOT / "config" / "example.yaml").read_text())
        group = unique_name(f"bench-e2e-{name}")
        self.groups.append(group)
        raw["kafka"].update(bootstrap_servers=self.bootstrap, group_id=group)
        raw["tiktok"] = {
            "pixel_code": raw["tiktok"]["pixel_code"],
            "endpoint": self.sandbox.endpoint,
            "access_token_file": str(self.token_file),
        }
        raw["delivery"] = {**DELIVERY, **delivery}
        port = free_port()
        raw["metrics"] = {"host": "127.0.0.1", "port": port}
        kind_of = {topic: kind for kind, topic in DEFAULT_TOPICS.items()}
        for mapping in raw["mappings"]:
            mapping["topic"] = topics[kind_of[mapping["topic"]]]
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path, port

    # -- running the processor ------------------------------------------------------------

    def start_processor(self, name: str, config: Path, workers: int) -> tuple[Any, Path]:
        command = [sys.executable, "-m", "processor", "run", "--config", str(config)]
        command += ["--workers", str(workers), "--log-format", "text"]
        process, log = self.spawn(name, command)
        if self.args.profile:
            self.profile(name, process.pid)
        return process, log

    def profile(self, name: str, pid: int) -> None:
        """``py-spy record`` on ``pid`` and its workers until they exit: collapsed stacks
        (one line a stack, its sample count last) in ``<profile>/<name>.txt``. Only
        running threads are sampled, so the counts follow CPU time."""
        out = Path(self.args.profile).resolve()
        out.mkdir(parents=True, exist_ok=True)
        py_spy = Path(sys.executable).with_name("py-spy")
        command = [str(py_spy), "record", "--pid", str(pid), "--subprocesses", "--nonblocking"]
        command += ["--rate", "250", "--format", "raw", "-o", str(out / f"{name}.txt")]
        self.spawn(f"{name}-py-spy", command)

    def wait_for_events(
        self, stage: str, process: Any, log: Path, total: int, timeout: float
    ) -> tuple[float, float]:
        """Poll the sandbox until ``total`` events are accepted: (first seen, all seen)."""
        first = None
        deadline = time.monotonic() + timeout
        while True:
            accepted = self.sandbox.accepted()
            now = time.monotonic()
            if accepted and first is None:
                first = now
            if accepted >= total and first is not None:
                break
            if exited(process) or now > deadline:
                why = "the processor exited" if exited(process) else f"not within {timeout:.0f} s"
                raise StageFailed(stage, f"{accepted:,} of {total:,} events accepted: {why}"
                                  + log_tail(log))  # fmt: skip
            time.sleep(POLL_S)
        if accepted != total:
            raise StageFailed(stage, f"{accepted:,} events accepted, {total:,} expected")
        return first, now

    def hold(self, stage: str, process: Any, log: Path, seconds: float) -> None:
        """Let ``process`` run for ``seconds``; it must not exit meanwhile."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if exited(process):
                raise StageFailed(stage, "the processor exited" + log_tail(log))
            time.sleep(0.5)

    def stop(self, stage: str, process: Any) -> Usage:
        """SIGTERM (a graceful drain) and reap; the CPU of the whole tree comes with it."""
        os.kill(process.pid, signal.SIGTERM)  # not Popen.send_signal: it would reap
        usage = reap(process, timeout=90)
        if usage.exit_code != 0:
            progress(f"warning: {stage}: the processor exited {usage.exit_code} after SIGTERM")
        return usage

    # -- the stages -----------------------------------------------------------------------

    def baseline(self) -> dict[str, Any]:
        stage = "baseline"
        group = unique_name("bench-e2e-raw")
        self.groups.append(group)
        topics = list(self.main_topics.values())
        timeout = max(120.0, self.records / 5000)
        process, log = self.spawn(
            stage, raw_loop_command(self.bootstrap, group, topics, self.records, timeout)
        )
        loads: list[float] = []
        with TreeSampler(process.pid, loads) as sampler:
            usage = reap(process, timeout + 60)
        self.loads += loads
        lines = log.read_text().strip().splitlines()
        result = orjson.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
        if result.get("records") != self.records:
            raise StageFailed(stage, f"read {result.get('records')} of {self.records:,} records"
                              + log_tail(log))  # fmt: skip
        return {
            "baseline_records_per_s": self.records / max(result["seconds"], 1e-9),
            "baseline_cpu_us_per_record": usage.cpu_s * 1e6 / self.records,
            "baseline_loop_cpu_us_per_record": result["loop_cpu_s"] * 1e6 / self.records,
            "baseline_peak_rss_mb": sampler.peak_mb,
            "baseline_max_process_rss_mb": sampler.max_process_mb,
            "baseline_load_average": statistics.fmean(loads or [0.0]),
        }

    def throughput(self, workers: int) -> dict[str, Any]:
        prefix = "one_worker" if workers == 1 else "two_workers" if workers == 2 else f"w{workers}"
        stage = f"{workers} worker{'s' if workers > 1 else ''}"
        self.sandbox.reset()
        config, _port = self.write_config(prefix, self.main_topics)
        sandbox_before = self.sandbox.cpu_s()
        launched = time.monotonic()
        process, log = self.start_processor(prefix, config, workers)
        loads: list[float] = []
        with TreeSampler(process.pid, loads) as sampler:
            timeout = max(180.0, self.records / 1000)
            first, done = self.wait_for_events(stage, process, log, self.events, timeout)
            sandbox_cpu = self.sandbox.cpu_s() - sandbox_before
            usage = self.stop(stage, process)
        self.loads += loads
        took = max(done - first, POLL_S)
        return {
            f"{prefix}_records_per_s": self.records / took,
            f"{prefix}_events_per_s": self.events / took,
            f"{prefix}_cpu_us_per_record": usage.cpu_s * 1e6 / self.records,
            f"{prefix}_peak_rss_mb": sampler.peak_mb,
            f"{prefix}_max_process_rss_mb": sampler.max_process_mb,
            f"{prefix}_sandbox_cpu_us_per_event": sandbox_cpu * 1e6 / self.events,
            f"{prefix}_startup_s": first - launched,
            f"{prefix}_seconds": took,
            f"{prefix}_load_average": statistics.fmean(loads or [0.0]),
        }

    def outage(self) -> dict[str, Any]:
        stage, args = "outage", self.args
        self.sandbox.reset()
        config, _port = self.write_config(stage, self.outage_topics)
        self.sandbox.set_faults("http=503:1")
        try:
            process, log = self.start_processor(stage, config, 1)
            loads: list[float] = []
            with TreeSampler(process.pid, loads) as sampler:
                self.hold(stage, process, log, args.outage_s)
                during = sampler.peak_mb
                refused = sum(self.sandbox.stats()["faults"]["http"].values())
                self.sandbox.set_faults("")
                recovered = time.monotonic()
                delivered, drain = self.drain(stage, process, log, recovered)
                usage = self.stop(stage, process)
        finally:
            with contextlib.suppress(httpx.HTTPError):  # the next stage must not inherit it
                self.sandbox.set_faults("")
        self.loads += loads
        return {
            "outage_records": args.outage_records,
            "outage_events": self.outage_events,
            "outage_s": args.outage_s,
            "outage_http_503_answers": refused,
            "outage_peak_rss_mb": sampler.peak_mb,
            "outage_peak_rss_during_outage_mb": during,
            "outage_max_process_rss_mb": sampler.max_process_mb,
            "outage_drain_s": drain,
            "outage_cpu_us_per_record": usage.cpu_s * 1e6 / args.outage_records,
            "outage_all_delivered": delivered,
            "outage_load_average": statistics.fmean(loads or [0.0]),
        }

    def drain(
        self, stage: str, process: Any, log: Path, recovered: float
    ) -> tuple[bool, float | None]:
        """After the outage: (every event delivered, seconds it took from the recovery)."""
        timeout = max(300.0, self.args.outage_records / 2000)
        try:
            _first, done = self.wait_for_events(stage, process, log, self.outage_events, timeout)
        except StageFailed as exc:
            progress(f"FAILED: {exc}")
            return False, None
        return True, done - recovered

    def wait_ready(self, stage: str, process: Any, log: Path, port: int) -> None:
        """Until the processor's /readyz says it holds partitions."""
        deadline = time.monotonic() + 90
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=2) as http:
            while time.monotonic() < deadline:
                if exited(process):
                    break
                with contextlib.suppress(httpx.HTTPError):
                    if http.get("/readyz").status_code == 200:
                        return
                time.sleep(0.2)
        raise StageFailed(stage, "the processor never became ready" + log_tail(log))

    def produce_steadily(self, topics: dict[str, str]) -> dict[str, Any]:
        """``produce-sample`` at the steady rate, in its own process; its JSON summary."""
        args = self.args
        count = int(args.steady_rate * args.steady_s)
        command = [sys.executable, "-m", "processor", "produce-sample"]
        command += ["--bootstrap", self.bootstrap, "--count", str(count)]
        command += ["--rate", str(args.steady_rate), "--seed", "13", "--json"]
        command += ["--partitions", str(PARTITIONS), "--topics"]
        command += [",".join(f"{kind}={topic}" for kind, topic in topics.items())]
        process, log = self.spawn("steady-producer", command)
        usage = reap(process, args.steady_s + 180)
        lines = log.read_text().strip().splitlines()
        if usage.exit_code != 0 or not lines or not lines[-1].startswith("{"):
            raise StageFailed("steady", "produce-sample failed" + log_tail(log))
        summary: dict[str, Any] = orjson.loads(lines[-1])
        return summary

    def steady(self) -> dict[str, Any]:
        stage, args = "steady", self.args
        topics = self.new_topics("steady")
        self.sandbox.reset()
        config, port = self.write_config(stage, topics, linger_ms=200)
        process, log = self.start_processor(stage, config, 1)
        loads: list[float] = []
        with TreeSampler(process.pid, loads) as sampler:
            self.wait_ready(stage, process, log, port)
            produced = self.produce_steadily(topics)
            events = sum(produced["expected_events"].values())
            self.wait_for_events(stage, process, log, events, 120)
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            usage = self.stop(stage, process)
        self.loads += loads
        buckets = histogram_buckets(metrics, LATENCY_METRIC)
        return {
            "steady_rate": args.steady_rate,
            "steady_produced_per_s": produced["produced"] / max(produced["seconds"], 1e-9),
            "steady_records": produced["produced"],
            "steady_events": events,
            "steady_p50_latency_s": histogram_quantile(0.5, buckets),
            "steady_p99_latency_s": histogram_quantile(0.99, buckets),
            "steady_latency_observations": int(buckets[-1][1]) if buckets else 0,
            "steady_cpu_us_per_record": usage.cpu_s * 1e6 / max(produced["produced"], 1),
            "steady_peak_rss_mb": sampler.peak_mb,
            "steady_load_average": statistics.fmean(loads or [0.0]),
        }

    def run_round(self, figures: dict[str, Any]) -> None:
        """Every stage once, into ``figures`` (which keeps what was measured on a failure)."""
        progress("raw loop (baseline)")
        figures |= self.baseline()
        for workers in (1, 2):
            progress(f"processor, --workers {workers}")
            figures |= self.throughput(workers)
        figures["cpu_ratio_baseline_to_one"] = (
            figures["baseline_cpu_us_per_record"] / figures["one_worker_cpu_us_per_record"]
        )
        figures["records_ratio_one_to_baseline"] = (
            figures["one_worker_records_per_s"] / figures["baseline_records_per_s"]
        )
        figures["records_ratio_two_to_one"] = (
            figures["two_workers_records_per_s"] / figures["one_worker_records_per_s"]
        )
        figures["sandbox_cpu_us_per_event"] = figures["one_worker_sandbox_cpu_us_per_event"]
        figures["sandbox_capacity_events_per_core_s"] = 1e6 / max(
            figures["sandbox_cpu_us_per_event"], 1e-9
        )
        if not self.args.skip_outage:
            progress(f"outage: HTTP 503 for {self.args.outage_s:g} s, then recovery")
            figures |= self.outage()
        if not self.args.skip_latency:
            progress(
                f"steady latency: {self.args.steady_rate:,} records/s for {self.args.steady_s:g} s"
            )
            figures |= self.steady()


# -- the report ---------------------------------------------------------------------------

#: Figures a skipped stage leaves out, reported as null so the keys are always there.
OPTIONAL_KEYS = (
    "sandbox_capacity_events_per_core_s",
    "outage_peak_rss_mb",
    "outage_all_delivered",
    "outage_drain_s",
    "steady_p50_latency_s",
    "steady_p99_latency_s",
)


def merge_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds (booleans: all of them)."""
    merged: dict[str, Any] = {}
    for key in dict.fromkeys(k for r in rounds for k in r):
        values = [r[key] for r in rounds if key in r]
        if all(isinstance(v, bool) for v in values):
            merged[key] = all(values)
        elif all(isinstance(v, int) for v in values):
            merged[key] = statistics.median_low(values)  # counts stay whole
        elif all(isinstance(v, int | float) for v in values):
            merged[key] = statistics.median(values)
        else:
            merged[key] = values[0]
    return merged


def rounded(value: Any, key: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, float):
        return value
    if key.endswith("_per_s"):
        return round(value)
    return round(value, 4 if key.endswith("latency_s") else 3 if abs(value) < 100 else 1)


def fmt(value: Any, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def print_table(s: dict[str, Any]) -> None:
    machine = s["machine"]
    print(
        f"{s['records']:,} records ({s['events']:,} events) on 4 topics x {PARTITIONS} partitions;"
        f" {machine['broker']}; {machine['cpus']} CPUs; Python {machine['python']};"
        f" load average {fmt(s['load_average'], '.2f')} while measuring"
        f" ({s['load_average_at_start']:.2f} before)"
    )
    head = (
        "",
        "records/s",
        "events/s",
        "CPU µs/rec",
        "peak RSS MB",
        "max proc MB",
        "sandbox µs/ev",
    )
    print(f"{head[0]:<22}" + "".join(f"{h:>14}" for h in head[1:]))
    for label, p in (("raw loop (baseline)", "baseline"), ("run --workers 1", "one_worker"),
                     ("run --workers 2", "two_workers")):  # fmt: skip
        cells = (
            fmt(s.get(f"{p}_records_per_s"), ",.0f"),
            fmt(s.get(f"{p}_events_per_s"), ",.0f"),
            fmt(s.get(f"{p}_cpu_us_per_record"), ".2f"),
            fmt(s.get(f"{p}_peak_rss_mb"), ".0f"),
            fmt(s.get(f"{p}_max_process_rss_mb"), ".0f"),
            fmt(s.get(f"{p}_sandbox_cpu_us_per_event"), ".1f"),
        )
        print(f"{label:<22}" + "".join(f"{c:>14}" for c in cells))
    if "cpu_ratio_baseline_to_one" in s:
        print(
            f"CPU per record, baseline / one worker: {s['cpu_ratio_baseline_to_one']:.3f}; "
            f"records/s one worker / baseline: {s['records_ratio_one_to_baseline']:.3f}; "
            f"two workers / one: {s['records_ratio_two_to_one']:.2f}; "
            f"first event after {s['one_worker_startup_s']:.1f} s (one worker); "
            f"the sandbox takes {s['sandbox_capacity_events_per_core_s']:,.0f} events/s a core"
        )
    if s.get("outage_records") is not None:
        print(
            f"outage: {s['outage_records']:,} records waiting, HTTP 503 for {s['outage_s']:g} s "
            f"({s['outage_http_503_answers']:,} answers): peak RSS "
            f"{s['outage_peak_rss_mb']:.0f} MB ({s['outage_peak_rss_during_outage_mb']:.0f} MB "
            f"during the outage); drained in {fmt(s['outage_drain_s'], '.1f', ' s')} after "
            f"recovery; every event delivered: {'yes' if s['outage_all_delivered'] else 'NO'}"
        )
    if s.get("steady_records") is not None:
        print(
            f"steady: {s['steady_produced_per_s']:,.0f} records/s for "
            f"{s['steady_records']:,} records, linger 200 ms: end-to-end latency p50 "
            f"{fmt(s['steady_p50_latency_s'], '.3f', ' s')}, p99 "
            f"{fmt(s['steady_p99_latency_s'], '.3f', ' s')}; "
            f"{s['steady_cpu_us_per_record']:.1f} CPU µs/record"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=1, help="rounds; figures are medians")
    parser.add_argument("--json", action="store_true", help="print a JSON object last")
    parser.add_argument("--skip-outage", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--outage-records", type=int, default=1_000_000)
    parser.add_argument("--outage-s", type=float, default=60.0)
    parser.add_argument("--steady-rate", type=int, default=5000, help="records/s")
    parser.add_argument("--steady-s", type=float, default=30.0)
    parser.add_argument(
        "--profile", metavar="DIR", help="sample each processor run with py-spy into DIR"
    )
    args = parser.parse_args(argv)
    if args.records < 1 or args.repeat < 1 or args.outage_records < 1:
        parser.error("--records, --repeat and --outage-records must be at least 1")
    return args


def summarise(
    bench: Bench | None, rounds: list[dict[str, Any]], started: float, load_at_start: float
) -> dict[str, Any]:
    summary: dict[str, Any] = {"records": bench.records if bench else 0}
    summary["events"] = bench.events if bench else 0
    summary |= dict.fromkeys(OPTIONAL_KEYS)
    summary |= merge_rounds(rounds) if rounds else {}
    summary["rounds"] = len(rounds)
    loads = bench.loads if bench else []
    summary["load_average"] = statistics.fmean(loads) if loads else None
    summary["load_average_at_start"] = load_at_start
    summary["seconds"] = time.monotonic() - started
    summary["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.platform(),
        "broker": bench.broker if bench else None,
    }
    return {key: rounded(value, key) for key, value in summary.items()}


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (``args[0]``): unwinding the ExitStack stops everything."""


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Installed, not inherited: a shell starting this in the background ignores SIGINT.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    started, load_at_start = time.monotonic(), os.getloadavg()[0]
    rounds: list[dict[str, Any]] = []
    bench: Bench | None = None
    failure: StageFailed | None = None
    try:
        with ExitStack() as stack:
            bench = Bench(stack, args)
            bench.prepare()
            for number in range(args.repeat):
                if args.repeat > 1:
                    progress(f"round {number + 1} of {args.repeat}")
                rounds.append({})
                bench.run_round(rounds[-1])
    except StageFailed as exc:
        failure = exc
    except Interrupted as exc:
        progress(f"stopped by {signal.Signals(exc.args[0]).name}; so is everything it started")
        return 128 + int(exc.args[0])
    summary = summarise(bench, rounds, started, load_at_start)
    if failure is None and summary["outage_all_delivered"] is False:
        failure = StageFailed("outage", "not every event was delivered after the recovery")
    if failure is not None:
        summary["failed_stage"] = failure.stage
    print_table(summary)
    if args.json:
        print(orjson.dumps(summary).decode())
    if failure is not None:
        print(f"e2e: FAILED in stage {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
