"""The command line, run as users run it: a subprocess of `python -m processor`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import (
    CLICKSTREAM_EXAMPLES,
    EXAMPLE_CONFIG,
    EXAMPLE_TOPICS,
    EXAMPLES_NOW,
    ROOT,
    SCHEMAS,
)

TIKTOK_SCHEMA = json.loads((SCHEMAS / "tiktok" / "event_track.v1.3.json").read_text())


def cli(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "TIKTOK_"))}
    return subprocess.run(
        [sys.executable, "-m", "processor", *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**clean, **(env or {})},
        timeout=60,
        check=False,
    )


def test_check_config_summarises_the_example() -> None:
    done = cli("check-config", str(EXAMPLE_CONFIG))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "config/example.yaml: OK" in out
    for line in (
        "important-page-views → ViewContent  web D34FV3JC77U1PDQ72P1G",
        "sign-ups → CompleteRegistration",
        "button-clicks → ClickButton",
        "form-leads → Lead",
        "hashed (SHA-256): user.email, user.phone, user.external_id",
        "when page.type in ['product', 'comparison', 'announcement', 'release']",
        "token from environment variable TIKTOK_ACCESS_TOKEN (not set)",
    ):
        assert line in out
    assert "ClickButton is a legacy TikTok event" in done.stderr


def test_check_config_with_three_mistakes_names_all_three(tmp_path: Path) -> None:
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    raw["kafka"]["group_idd"] = raw["kafka"].pop("group_id")
    raw["delivery"]["max_in_flight"] = 0
    raw["mappings"][0]["when"] = {"field": "page.type", "regex": "[unclosed"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    done = cli("check-config", str(bad))
    assert done.returncode == 1
    assert "kafka.group_idd: unknown setting; did you mean group_id?" in done.stderr
    assert "delivery.max_in_flight: value is less than the minimum of 1" in done.stderr
    assert "mappings[0].when.regex: invalid regular expression" in done.stderr


def test_check_config_never_prints_the_token() -> None:
    done = cli("check-config", str(EXAMPLE_CONFIG), env={"TIKTOK_ACCESS_TOKEN": "tok-12345-secret"})
    assert done.returncode == 0
    assert "(set)" in done.stdout
    assert "tok-12345-secret" not in done.stdout + done.stderr


def preview_json(topic: str, path: Path) -> list[dict[str, Any]]:
    done = cli(
        "preview", "--json", "--config", str(EXAMPLE_CONFIG), "--topic", topic,
        "--now", str(EXAMPLES_NOW), str(path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


ALL_EXAMPLES = sorted(CLICKSTREAM_EXAMPLES.glob("*/*.json"))


@pytest.mark.parametrize("example", ALL_EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_preview_of_every_example_is_a_valid_tiktok_body_or_a_filter(example: Path) -> None:
    (line,) = preview_json(EXAMPLE_TOPICS[example.parent.name], example)
    if line["outcome"] == "filtered":
        assert example.stem in {"blog_not_an_event", "newsletter_anonymous"}
        return
    assert line["outcome"] == "mapped", line
    jsonschema.validate(line["body"], TIKTOK_SCHEMA)
    assert line["body"]["event_source_id"] == "D34FV3JC77U1PDQ72P1G"


def test_preview_hashes_equal_the_reference_vectors() -> None:
    examples = CLICKSTREAM_EXAMPLES
    signup = preview_json("web.signups", examples / "sign_up.v1" / "email_signup.json")[0]
    user = signup["body"]["data"][0]["user"]
    assert user["email"] == "86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d"
    assert user["phone"] == "a8acc3a90a7b4e4dc65e93db9240ed26523050ef754d63b75b5161de76781436"
    assert user["external_id"] == "8dec7f953696ab23765e83f9d8252c223414f6b6e8b4e64842c6a4a6625599d6"
    lead = preview_json("web.forms", examples / "form_submit.v1" / "contact_sales.json")[0]
    user = lead["body"]["data"][0]["user"]
    assert user["email"] == "076bc95cb6fca21c74b3376044f67ff8fe3f13fffcc62bbbdfd945da6a23c13f"
    assert user["phone"] == "abbf04d6f629b136344993dfb197f1fd9296f712eaf103ebc22b1cc29fb0f135"
    click = preview_json(
        "web.clicks", examples / "button_click.v1" / "add_to_wishlist_known_user.json"
    )[0]
    user = click["body"]["data"][0]["user"]
    assert user["email"] == "848a771458438fc2ec420560d769fb9b9b86851ee338ec56517baabd79d3bb4f"
    assert user["phone"] == "9f7ec22d72092cd3c0b58726ed9c2d91b92e51a3f29837508fb2948bb22dd2fd"
    assert user["external_id"] == "80fba0ae1c48e3978e43e4efc365e14e12ea0c830ba8ba5b9a2dafc7e3f2ab8b"


def test_preview_reads_json_lines_from_stdin_and_explains_each() -> None:
    good = json.loads(
        (CLICKSTREAM_EXAMPLES / "page_view.v1" / "product_from_tiktok_ad.json").read_text()
    )
    blog = json.loads(
        (CLICKSTREAM_EXAMPLES / "page_view.v1" / "blog_not_an_event.json").read_text()
    )
    bad_email = dict(good, user={"email": "nope"})
    lines = [
        json.dumps(good),
        "",
        "{broken",
        json.dumps(blog),
        json.dumps(bad_email),
        json.dumps({"type": 1}),
    ]
    done = cli(
        "preview", "--json", "--config", str(EXAMPLE_CONFIG), "--topic", "web.pageviews",
        "--now", "2026-01-01T00:10:00Z", "-", stdin="\n".join(lines).encode(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(o["line"], o["outcome"]) for o in out] == [
        (1, "mapped"), (3, "rejected"), (4, "filtered"), (5, "mapped"), (6, "rejected"),
    ]  # fmt: skip
    assert out[1]["stage"] == "decode"
    # A bad email is left out of the event, which goes out with the rest.
    assert out[3]["dropped"] == [{"field": "user.email", "reason": "not a valid email address"}]
    assert "email" not in out[3]["body"]["data"][0].get("user", {})
    assert out[4]["stage"] == "input-schema"
    # The keys each event carries, in the order of the body's events: what was sent (the
    # email left out is no key).
    assert out[0]["match_keys"] == out[3]["match_keys"] == [["ttclid", "ttp", "ip+ua"]]


def test_preview_text_mode_prints_the_body_and_reasons() -> None:
    blog = CLICKSTREAM_EXAMPLES / "page_view.v1" / "blog_not_an_event.json"
    product = CLICKSTREAM_EXAMPLES / "page_view.v1" / "product_from_tiktok_ad.json"
    data = (
        json.dumps(json.loads(product.read_text()))
        + "\n"
        + json.dumps(json.loads(blog.read_text()))
    )
    done = cli(
        "preview", "--config", str(EXAMPLE_CONFIG), "--topic", "web.pageviews",
        "--now", str(EXAMPLES_NOW), stdin=data.encode(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (
        "line 1: ViewContent via important-page-views → POST https://business-api.tiktok.com"
        in done.stdout
    )
    assert '"event_source_id": "D34FV3JC77U1PDQ72P1G"' in done.stdout
    assert (
        "line 2: filtered (no mapping's `when` rule matched: important-page-views)" in done.stdout
    )
    assert "  match keys of ViewContent: ttclid, ttp, ip+ua" in done.stdout
    assert done.stdout.splitlines()[-2:] == [
        "match keys over 1 event:",
        "  ViewContent: 1 event, ttclid 100 %, ttp 100 %, ip+ua 100 %",
    ]


def test_preview_of_an_unmapped_topic_fails_clearly() -> None:
    done = cli("preview", "--config", str(EXAMPLE_CONFIG), "--topic", "nope", stdin=b"{}")
    assert done.returncode == 1
    assert "no mapping reads topic 'nope'" in done.stderr


def test_missing_config_file_is_one_clear_line() -> None:
    done = cli("check-config", "does/not/exist.yaml")
    assert done.returncode == 1
    assert "does/not/exist.yaml: cannot read" in done.stderr


def test_sandbox_subcommand_takes_its_options_in_any_order() -> None:
    command = [sys.executable, "-m", "processor", "sandbox", "--host", "127.0.0.1", "--port", "0"]
    with subprocess.Popen(
        [*command, "--token", "t-1"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            assert "sandbox listening on http://127.0.0.1:" in process.stdout.readline()
        finally:
            process.terminate()
            process.wait(10)
    assert cli("sandbox", "--faults", "nonsense=1").returncode == 2


def _example_with(tmp_path: Path, **kafka: Any) -> Path:
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    raw["kafka"].update(kafka)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_a_problem_is_one_line_even_when_the_file_puts_line_breaks_in_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(EXAMPLE_CONFIG.read_text() + '"line\\nbreak\\u2028key": 1\n')
    done = cli("check-config", str(path))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: invalid configuration:",
        "  line\\x0abreak\\x2028key: unknown setting",
    ]


def test_run_refuses_what_librdkafka_refuses_before_connecting(tmp_path: Path) -> None:
    # The dead-letter producer is idempotent, and librdkafka refuses acks=1 with that.
    path = _example_with(tmp_path, settings={"acks": 1})
    done = cli("run", "--config", str(path), env={"TIKTOK_ACCESS_TOKEN": "t-1"})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        "error: invalid configuration:",
        "  kafka.settings.acks: librdkafka cannot build the dead-letter producer: "
        "`acks` must be set to `all` when `enable.idempotence` is true",
    ]


def test_check_config_warns_about_clients_it_cannot_build_without_the_deployment(
    tmp_path: Path,
) -> None:
    # The password comes from the deployment's environment (KAFKA_SETTING_SASL_PASSWORD).
    settings = {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "u"}
    done = cli("check-config", str(_example_with(tmp_path, settings=settings)))
    assert done.returncode == 0, done.stderr
    assert (
        "warning: kafka.settings.sasl.username: librdkafka cannot build the Kafka consumer: "
        "sasl.username and sasl.password must be set" in done.stderr
    )
    with_password = cli(
        "check-config",
        str(_example_with(tmp_path, settings=settings)),
        env={"KAFKA_SETTING_SASL_PASSWORD": "p"},
    )
    assert "warning: kafka.settings" not in with_password.stderr


def test_an_unexpected_failure_while_loading_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from processor import cli as cli_module  # noqa: PLC0415 - in-process, to inject the failure

    def load_pipeline(path: object, **_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli_module, "load_pipeline", load_pipeline)
    assert cli_module.main(["check-config", "some.yaml"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: invalid configuration:",
        "  some.yaml: cannot be loaded (RuntimeError: boom); a bug in the processor, please report it",
    ]


def test_the_sample_written_to_files_previews_with_its_match_key_summary(tmp_path: Path) -> None:
    folder = tmp_path / "sample"
    done = cli("produce-sample", "--output", str(folder), "--count", "600", "--seed", "5", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["produced"] == 600
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted(f"{t}.jsonl" for t in EXAMPLE_TOPICS.values())
    assert sum(len(p.read_bytes().splitlines()) for p in folder.iterdir()) == 600
    shown = cli(
        "preview", "--config", str(EXAMPLE_CONFIG), "--topic", "web.signups",
        str(folder / "web.signups.jsonl"),
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    registrations = summary["expected_events"]["CompleteRegistration"]
    lines = shown.stdout.splitlines()
    assert lines[-2] == f"match keys over {registrations:,} events:"
    assert lines[-1].startswith(f"  CompleteRegistration: {registrations:,} events, email 100 %")


def test_produce_sample_needs_a_broker_or_a_folder() -> None:
    done = cli("produce-sample", "--count", "5")
    assert done.returncode == 2
    assert "one of the arguments --bootstrap --output is required" in done.stderr
