"""The Helm chart: lint, schema, rendered manifests valid for Kubernetes, and the rules it keeps.

Every values case (the defaults and each file of the chart's ci/) is linted with
`helm lint --strict`, rendered with `helm template`, validated by kubernetes-validate (strict:
unknown fields fail) for a recent Kubernetes, and its rendered processor configuration must
pass `tiktok-events check-config`.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from devkit.helm import CONFIG_SCHEMA, VALUES_SCHEMA, sync_values_schema
from processor.cli import build_parser
from processor.loop import STOP_OVERHEAD_S
from tests.deploy.conftest import (
    CHART,
    ROOT,
    VALUES_CASES,
    VALUES_IDS,
    HelmRun,
    Manifest,
    Render,
    check_config,
    load_values,
    only,
    processor_container,
    rendered_config,
    template_args,
)

#: Kubernetes versions the manifests must be valid for: a widely run one and the newest known.
K8S_VERSIONS = ["1.33.0", kubernetes_validate.utils.latest_version()]

#: Custom resources kubernetes-validate has no schema for. They are skipped there on purpose
#: (and only these: any other kind without a schema fails), and checked structurally instead.
CUSTOM_RESOURCES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}

EXAMPLE_CONFIG = ROOT / "config" / "example.yaml"
ALERTS = CHART / "files" / "alerts.yaml"
DASHBOARD = CHART / "files" / "dashboard.json"


def _kinds(manifests: list[Manifest]) -> list[str]:
    return sorted(m["kind"] for m in manifests)


# --------------------------------------------------------------------------------------------
# helm lint, kubernetes-validate, check-config
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_helm_lint_strict_passes(helm: HelmRun, values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)]
    if values is not None:
        args += ["--values", str(values)]
    proc = helm(*args)
    assert proc.returncode == 0, f"helm lint --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert "0 chart(s) failed" in proc.stdout


def test_ci_values_include_every_option() -> None:
    full = load_values(CHART / "ci" / "full-values.yaml")
    for option in ("serviceMonitor", "prometheusRule", "dashboard", "podDisruptionBudget"):
        assert full[option]["enabled"] is True, option
    assert full["autoscaling"]["keda"]["enabled"] is True
    assert full["workers"] > 1
    assert full["token"]["value"], "full values exercise the chart-made Secret"
    hpa = load_values(CHART / "ci" / "hpa-values.yaml")
    assert hpa["autoscaling"]["hpa"]["enabled"] is True
    assert hpa["token"]["existingSecret"], "hpa values exercise an existing Secret"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_rendered_manifests_are_valid_kubernetes(
    render: Render, values: Path | None, version: str
) -> None:
    manifests = render(values)
    assert manifests
    skipped = set()
    for manifest in manifests:
        where = f"{manifest.get('kind')} {manifest.get('metadata', {}).get('name')}"
        # Whatever the kind: an object Kubernetes can take at all.
        assert {"apiVersion", "kind", "metadata"} <= set(manifest), where
        assert manifest["metadata"].get("name"), where
        key = (manifest["apiVersion"], manifest["kind"])
        if key in CUSTOM_RESOURCES:
            assert isinstance(manifest.get("spec"), dict), where
            assert manifest["spec"], where
            skipped.add(key)
            continue
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{where} is not valid for Kubernetes {version}: {exc.message} at "
                f"{'.'.join(str(p) for p in exc.path)}"
            )
    # Skipping happens only for the custom resources listed, never by accident.
    assert skipped <= CUSTOM_RESOURCES


def test_kubernetes_validate_catches_a_broken_manifest(render: Render) -> None:
    """The check above can fail: a misspelt field in the Deployment is rejected."""
    deployment = copy.deepcopy(only(render(), "Deployment"))
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 60
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_rendered_config_passes_check_config(
    render: Render, values: Path | None, tmp_path: Path
) -> None:
    manifests = render(values)
    config = tmp_path / "config.yaml"
    config.write_text(rendered_config(manifests))
    # The pod's own environment, as the Deployment sets it.
    env = {v["name"]: v["value"] for v in processor_container(manifests)["env"] if "value" in v}
    proc = check_config(config, env)
    assert proc.returncode == 0, f"check-config rejected the rendered config:\n{proc.stderr}"
    assert ": OK" in proc.stdout
    token_file = env["TIKTOK_ACCESS_TOKEN_FILE"]
    assert f"token from file {token_file}" in proc.stdout


def test_rendered_config_is_values_config_plus_mappings(render: Render) -> None:
    values = load_values(CHART / "ci" / "full-values.yaml")
    rendered = yaml.safe_load(rendered_config(render(CHART / "ci" / "full-values.yaml")))
    assert rendered == {**values["config"], "mappings": values["mappings"]}


def test_default_mappings_are_the_example_configs() -> None:
    """values.yaml ships config/example.yaml's mappings: change both together."""
    example = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    assert load_values(None)["mappings"] == example["mappings"]


# --------------------------------------------------------------------------------------------
# The values schema
# --------------------------------------------------------------------------------------------


def test_values_schema_embeds_the_processor_config_schema() -> None:
    current = json.loads(VALUES_SCHEMA.read_text())
    synced = sync_values_schema(current, json.loads(CONFIG_SCHEMA.read_text()))
    assert synced == current, (
        "helm/tiktok-events-processor/values.schema.json is out of step with "
        "schemas/config.schema.json: run `python -m devkit.helm sync-schema`"
    )


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("workers=0", "/workers"),
        ("replicas=3", "replicas"),  # a typo of replicaCount
        ("logFormat=xml", "/logFormat"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("token.mountPath=relative/dir", "/token/mountPath"),
        ("config.delivery.max_batch_events=5000", "/config/delivery/max_batch_events"),
        ("config.kafka.group_protocol=eager", "/config/kafka/group_protocol"),
        ("config.kafka.bootstrap_server=kafka:9092", "bootstrap_server"),
        ("config.tiktok.pixel_code=not-a-pixel", "/config/tiktok/pixel_code"),
        ("mappings[0].name=x", "/mappings/0"),  # --set replaces the list: name alone is not enough
    ],
)
def test_values_schema_rejects_bad_values(helm: HelmRun, setting: str, complaint: str) -> None:
    key, value = setting.split("=", 1)
    proc = helm(*template_args(None, {key: value}))
    assert proc.returncode != 0, f"--set {setting} was accepted"
    assert "schema" in proc.stderr, proc.stderr
    assert complaint in proc.stderr, proc.stderr


# --------------------------------------------------------------------------------------------
# Rules the templates enforce
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sets",
    [
        {"terminationGracePeriodSeconds": "30"},  # equal to the default drain timeout
        {"terminationGracePeriodSeconds": "44"},  # no room for the final commit
        {"terminationGracePeriodSeconds": "10"},
        {"config.delivery.drain_timeout_s": "90"},  # longer than the default grace period
    ],
    ids=["equal", "no-room-to-commit", "shorter", "drain-raised"],
)
def test_grace_period_not_longer_than_drain_timeout_fails(
    helm: HelmRun, sets: dict[str, str]
) -> None:
    proc = helm(*template_args(None, sets))
    assert proc.returncode != 0
    assert "terminationGracePeriodSeconds" in proc.stderr
    assert "drain_timeout_s" in proc.stderr


def test_grace_period_of_drain_timeout_plus_the_stop_overhead_renders(render: Render) -> None:
    # The processor's stop takes at most drain_timeout_s + 15 s (tests/faults measure it).
    manifests = render(None, {"terminationGracePeriodSeconds": "45"})
    pod = only(manifests, "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 45


def test_hpa_and_keda_together_fail(helm: HelmRun) -> None:
    sets = {"autoscaling.hpa.enabled": "true", "autoscaling.keda.enabled": "true"}
    proc = helm(*template_args(None, sets))
    assert proc.returncode != 0
    assert "choose one" in proc.stderr


def test_more_members_than_partitions_fails(helm: HelmRun, render: Render) -> None:
    sets = {"replicaCount": "4", "workers": "2", "topicPartitions": "6"}
    proc = helm(*template_args(None, sets))
    assert proc.returncode != 0
    assert "4 replicas \N{MULTIPLICATION SIGN} 2 workers = 8" in proc.stderr
    render(None, {**sets, "topicPartitions": "8"})  # exactly enough: fine


# --------------------------------------------------------------------------------------------
# What the rendered objects say
# --------------------------------------------------------------------------------------------


def test_default_release_objects(render: Render) -> None:
    manifests = render()
    assert _kinds(manifests) == [
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    deployment = only(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == load_values(None)["replicaCount"]


def test_full_values_release_objects(render: Render) -> None:
    manifests = render(CHART / "ci" / "full-values.yaml")
    assert _kinds(manifests) == [
        "ConfigMap",
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "PrometheusRule",
        "ScaledObject",
        "Secret",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    # KEDA owns the replica count.
    assert "replicas" not in only(manifests, "Deployment")["spec"]
    scaled = only(manifests, "ScaledObject")
    assert (
        scaled["spec"]["scaleTargetRef"]["name"]
        == only(manifests, "Deployment")["metadata"]["name"]
    )
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == "tiktok-events-prod"


def test_hpa_values_release_objects(render: Render) -> None:
    manifests = render(CHART / "ci" / "hpa-values.yaml")
    hpa = only(manifests, "HorizontalPodAutoscaler")
    assert (
        hpa["spec"]["scaleTargetRef"]["name"] == only(manifests, "Deployment")["metadata"]["name"]
    )
    assert "replicas" not in only(manifests, "Deployment")["spec"]
    assert not [m for m in manifests if m["kind"] == "Secret"], "existingSecret: no chart Secret"


def test_token_is_a_mounted_secret_file(render: Render) -> None:
    manifests = render(CHART / "ci" / "full-values.yaml")
    values = load_values(CHART / "ci" / "full-values.yaml")
    container = processor_container(manifests)
    pod = only(manifests, "Deployment")["spec"]["template"]["spec"]
    secret = only(manifests, "Secret")
    key = values["token"]["key"]
    assert base64.b64decode(secret["data"][key]).decode() == values["token"]["value"]

    volume = next(
        v
        for v in pod["volumes"]
        if v.get("secret", {}).get("secretName") == secret["metadata"]["name"]
    )
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    # A directory mount: the kubelet refreshes it when the Secret changes; a subPath never is.
    assert "subPath" not in mount
    assert mount["readOnly"] is True
    env = {e["name"]: e for e in container["env"]}
    assert env["TIKTOK_ACCESS_TOKEN_FILE"]["value"] == f"{mount['mountPath']}/{key}"
    # The token never travels in an environment variable.
    assert "TIKTOK_ACCESS_TOKEN" not in env
    assert values["token"]["value"] not in json.dumps(container)


PIXEL_SETS = {
    "token.pixels[0].name": "shop-eu",
    "token.pixels[0].eventSourceId": "CEU7PIXEL0000000001",
    "token.pixels[0].existingSecret": "shop-eu-token",
    "token.pixels[1].name": "shop-us",
    "token.pixels[1].eventSourceId": "CUS7PIXEL0000000002",
    "token.pixels[1].existingSecret": "shop-us-token",
    "token.pixels[1].key": "token",
}


def test_a_token_per_pixel_is_mounted_and_written_into_the_config(
    render: Render, tmp_path: Path
) -> None:
    manifests = render(CHART / "ci" / "full-values.yaml", sets=PIXEL_SETS)
    container = processor_container(manifests)
    pod = only(manifests, "Deployment")["spec"]["template"]["spec"]
    root = load_values(CHART / "ci" / "full-values.yaml")["token"]["mountPath"].rstrip("/")
    expected = {
        "shop-eu": ("shop-eu-token", "access-token", "CEU7PIXEL0000000001"),
        "shop-us": ("shop-us-token", "token", "CUS7PIXEL0000000002"),
    }
    rendered = yaml.safe_load(rendered_config(manifests))
    assert rendered["tiktok"]["pixels"] == [
        {
            "name": name,
            "event_source_id": source,
            "access_token_file": f"{root}-pixels/{name}/{key}",
        }
        for name, (_, key, source) in expected.items()
    ]
    for name, (secret, key, _) in expected.items():
        volume = next(v for v in pod["volumes"] if v["name"] == f"token-{name}")
        assert volume["secret"]["secretName"] == secret
        assert volume["secret"]["items"] == [{"key": key, "path": key}]
        mount = next(m for m in container["volumeMounts"] if m["name"] == f"token-{name}")
        # A directory mount beside the default token's, refreshed when the Secret changes.
        assert mount == {
            "name": f"token-{name}",
            "mountPath": f"{root}-pixels/{name}",
            "readOnly": True,
        }
    kubernetes_validate.validate(only(manifests, "Deployment"), K8S_VERSIONS[-1], strict=True)
    # The processor takes the rendered configuration once the files are where the pod has them.
    for pixel in rendered["tiktok"]["pixels"]:
        local = tmp_path / pixel["name"]
        local.write_text(f"token-of-{pixel['name']}")
        pixel["access_token_file"] = str(local)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(rendered))
    env = {v["name"]: v["value"] for v in container["env"] if "value" in v}
    default = tmp_path / "default-token"
    default.write_text("default-token")
    proc = check_config(config, {**env, "TIKTOK_ACCESS_TOKEN_FILE": str(default)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "shop-eu" in proc.stdout
    assert "token-of-" not in proc.stdout + proc.stderr


def test_pixels_in_both_token_and_config_are_refused(helm: HelmRun) -> None:
    sets = {
        **PIXEL_SETS,
        "config.tiktok.pixels[0].name": "shop-fr",
        "config.tiktok.pixels[0].event_source_id": "CFR7PIXEL0000000003",
        "config.tiktok.pixels[0].access_token_env": "TIKTOK_TOKEN_SHOP_FR",
    }
    proc = helm(*template_args(CHART / "ci" / "full-values.yaml", sets))
    assert proc.returncode != 0
    assert "token.pixels or in config.tiktok.pixels, not both" in proc.stderr


def test_existing_secret_is_mounted_instead(render: Render) -> None:
    manifests = render(CHART / "ci" / "hpa-values.yaml")
    pod = only(manifests, "Deployment")["spec"]["template"]["spec"]
    secrets = [v["secret"] for v in pod["volumes"] if "secret" in v]
    assert secrets[0]["secretName"] == "tiktok-credentials"
    assert secrets[0]["items"] == [{"key": "access-token", "path": "access-token"}]


def test_config_change_rolls_the_pods_token_change_does_not(render: Render) -> None:
    def checksum(sets: dict[str, str]) -> str:
        pod = only(render(None, sets), "Deployment")["spec"]["template"]
        value: str = pod["metadata"]["annotations"]["checksum/config"]
        return value

    base = checksum({})
    assert checksum({"config.delivery.linger_ms": "100"}) != base
    assert checksum({"token.value": "rotated-token"}) == base
    # The checksum is that of the file the ConfigMap holds (less the block's final newline).
    text = rendered_config(render())
    assert hashlib.sha256(text.rstrip("\n").encode()).hexdigest() == base


def test_pod_security(render: Render) -> None:
    for values in (None, CHART / "ci" / "full-values.yaml"):
        manifests = render(values)
        pod = only(manifests, "Deployment")["spec"]["template"]["spec"]
        container = processor_container(manifests)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert security["runAsUser"] != 0
        # A read-only root needs a writable /tmp (multiprocessing, tempfile).
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts  # noqa: S108 - the pod's own emptyDir
        assert container["resources"]["requests"]


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_probes_ports_and_workers(render: Render, values: Path | None) -> None:
    settings = load_values(values)
    workers = settings["workers"]
    port = settings["config"]["metrics"]["port"]
    manifests = render(values)
    container = processor_container(manifests)

    args = container["args"]
    assert args[:3] == ["run", "--config", "/etc/tiktok-events/config.yaml"]
    parsed = build_parser().parse_args(args)  # a command line tiktok-events accepts
    assert parsed.workers == workers
    assert args[args.index("--workers") + 1] == str(workers)
    # One port whatever the workers: the pod's parent process serves them all.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # The config mount holds config.yaml where --config looks.
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert mount["mountPath"] == "/etc/tiktok-events"

    service = only(manifests, "Service")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports
    assert service["spec"]["publishNotReadyAddresses"] is True
    pod_labels = only(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitors = [m for m in manifests if m["kind"] == "ServiceMonitor"]
    for monitor in monitors:
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == list(ports)
        assert (
            monitor["spec"]["selector"]["matchLabels"].items()
            <= service["metadata"]["labels"].items()
        )


def test_grace_period_exceeds_drain_in_every_case(render: Render) -> None:
    for values in VALUES_CASES:
        settings = load_values(values)
        drain = settings["config"].get("delivery", {}).get("drain_timeout_s", 30)
        pod = only(render(values), "Deployment")["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= drain + STOP_OVERHEAD_S


def test_rolling_update_takes_the_old_pod_down_first(render: Render) -> None:
    strategy = only(render(), "Deployment")["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxSurge"] == 0


def test_prometheus_rule_is_the_alerts_file(render: Render) -> None:
    rule = only(render(CHART / "ci" / "full-values.yaml"), "PrometheusRule")
    alerts: dict[str, Any] = yaml.safe_load(ALERTS.read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboard_configmap_is_the_dashboard_file(render: Render) -> None:
    configmap = only(render(CHART / "ci" / "full-values.yaml"), "ConfigMap", "-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    (content,) = configmap["data"].values()
    assert json.loads(content) == json.loads(DASHBOARD.read_text())


@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_install_notes_render(helm: HelmRun, values: Path | None) -> None:
    args = ["install", "release", str(CHART), "--dry-run=client", "--namespace", "streaming"]
    if values is not None:
        args += ["--values", str(values)]
    proc = helm(*args)
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    settings = load_values(values)
    # Without a token the NOTES say how to create the Secret the pods wait for.
    no_token = not settings["token"]["existingSecret"] and not settings["token"]["value"]
    assert ("No token was given" in notes) is no_token
    assert "rotate" in notes
