"""Deployment files (ops/systemd, ops/k8s) against the code they run: settings, commands,
exit codes, time limits, ports; and the gpu autoscaling query against the real schema."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine, text

from bridge.main import EXIT_INVALID_RATIO
from pipeline.celery_config import POOLS, TASK_NAMES, celery_config
from pipeline.cli import build_parser
from pipeline.errors import EXIT_CONFIG, EXIT_USAGE
from pipeline.settings import Settings
from pipeline.worker_hooks import metrics_port

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "ops" / "k8s"
SYSTEMD = ROOT / "ops" / "systemd"
OUR_IMAGES = ("sonic-pipeline", "sonic-pipeline-gpu")
#: A setting named anywhere in these files: SONIC_ and a field name, upper case.
SETTING = re.compile(r"\bSONIC_[A-Z0-9_]*[A-Z0-9]\b")


# --- loading ------------------------------------------------------------------------------
def _k8s() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _k8s() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def _pod_specs() -> dict[str, dict[str, Any]]:
    """Every workload's pod spec, by workload name."""
    specs: dict[str, dict[str, Any]] = {}
    for doc in _k8s():
        if doc["kind"] in ("Deployment", "StatefulSet"):
            specs[doc["metadata"]["name"]] = doc["spec"]["template"]["spec"]
        elif doc["kind"] == "CronJob":
            specs[doc["metadata"]["name"]] = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return specs


def _config() -> dict[str, str]:
    return dict(_one("ConfigMap", "sonic-pipeline-config")["data"])


def _secret_keys() -> list[str]:
    """The keys ops/k8s/README.md tells operators to put in the Secret (never in a file)."""
    text_ = (K8S / "README.md").read_text()
    return re.findall(r"--from-literal=(SONIC_[A-Z0-9_]+)=", text_)


def _effective(container: dict[str, Any]) -> Settings:
    """The settings a container runs with: defaults, the ConfigMap, the Secret's keys (as
    placeholders) when the container reads it through envFrom, then its own env."""
    secret: dict[str, str] = {}
    if any("secretRef" in ref for ref in container.get("envFrom", [])):
        secret = {key: "from-the-secret" for key in _secret_keys()}
    values = {**_config(), **secret, **{e["name"]: e["value"] for e in container.get("env", [])
                                        if "value" in e}}
    return Settings(**{name[len("SONIC_"):].lower(): value for name, value in values.items()})


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        sections[section][key.strip()].append(value.strip())
    return sections


def _units() -> dict[str, dict[str, dict[str, list[str]]]]:
    return {p.name: _unit(p) for p in sorted(SYSTEMD.glob("*.service"))
            + sorted(SYSTEMD.glob("*.timer"))}


# --- every setting named is a real one, every command run exists ---------------------------
def test_every_sonic_variable_the_deployment_files_name_is_a_setting() -> None:
    fields = set(Settings.model_fields)
    named: dict[str, set[str]] = defaultdict(set)
    for path in [*K8S.iterdir(), *SYSTEMD.iterdir()]:
        for name in SETTING.findall(path.read_text()):
            named[name].add(path.name)
    unknown = {n: sorted(where) for n, where in named.items()
               if n[len("SONIC_"):].lower() not in fields}
    assert named and not unknown, unknown
    # What the manifests set (ConfigMap keys, container env) are all settings, not typos
    # that pydantic-settings would silently ignore.
    set_here = set(_config())
    for spec in _pod_specs().values():
        for container in spec["containers"]:
            set_here |= {e["name"] for e in container.get("env", [])}
    assert set_here and all(SETTING.fullmatch(n) and n[6:].lower() in fields
                            for n in set_here), sorted(set_here)


def test_every_command_the_deployment_files_run_is_a_cli_verb() -> None:
    parser = build_parser()
    ran = []
    for name, spec in _pod_specs().items():
        for container in spec["containers"]:
            if container["image"] not in OUR_IMAGES:
                continue
            argv = [*container.get("command", []), *container.get("args", [])]
            assert argv[0] == "sonic-pipeline", (name, argv)  # setup.cfg's console script
            parser.parse_args(argv[1:])  # SystemExit(2) on an unknown verb or option
            ran.append(argv[1])
    for unit, sections in _units().items():
        for line in sections["Service"].get("ExecStart", []):
            argv = shlex.split(line)
            assert argv[0] == "/opt/sonic-pipeline/.venv/bin/sonic-pipeline", (unit, argv)
            for pool in (POOLS if "%i" in line else [""]):
                parser.parse_args([a.replace("%i", pool) for a in argv[1:]])
            ran.append(argv[1])
    assert {"bridge", "worker", "flower", "housekeeping"} <= set(ran)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert {i["name"] for i in kustomization["images"]} == set(OUR_IMAGES)


# --- stopping never kills a task -------------------------------------------------------------
def test_each_worker_pods_grace_outlasts_its_pools_hard_time_limit() -> None:
    specs = _pod_specs()
    for pool in POOLS:
        spec = specs[f"sonic-worker-{pool}"]
        container = spec["containers"][0]
        settings = _effective(container)
        config = celery_config(settings)
        hard = (config["task_annotations"][TASK_NAMES["gpu"]]["time_limit"] if pool == "gpu"
                else config["task_time_limit"])
        assert spec["terminationGracePeriodSeconds"] >= hard + 60, (pool, hard)
        assert "preStop" not in container.get("lifecycle", {})  # it would eat the grace
        # The scrape port is the pool's own metrics port.
        port = metrics_port(settings, set(POOLS[pool]))
        assert [p["containerPort"] for p in container["ports"]] == [port]
        annotations = _one("Deployment", f"sonic-worker-{pool}")["spec"]["template"][
            "metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)
    gpu = _effective(specs["sonic-worker-gpu"]["containers"][0])
    assert specs["sonic-worker-gpu"]["terminationGracePeriodSeconds"] >= \
        Settings().gpu_time_limit_s
    # The solo pool enforces no time limit: a stuck render would hold its GPU for ever.
    assert gpu.gpu_pool == "prefork" and gpu.gpu_concurrency == 1


def test_the_bridge_pod_has_time_to_commit_and_leave() -> None:
    spec = _pod_specs()["sonic-bridge"]
    assert spec["terminationGracePeriodSeconds"] >= 30


# --- autoscaling ------------------------------------------------------------------------------
def test_the_gpu_pool_scales_on_work_queued_or_running_and_shrinks_slowly() -> None:
    scaled = _one("ScaledObject", "sonic-worker-gpu")["spec"]
    triggers = scaled["triggers"]
    assert triggers and all(t["type"] != "redis" for t in triggers)  # no plain list length
    assert [t["type"] for t in triggers] == ["postgresql"]
    meta = triggers[0]["metadata"]
    config = _config()
    assert meta["host"].startswith(config["SONIC_PG_HOST"])
    assert (meta["port"], meta["userName"], meta["dbName"]) == (
        config["SONIC_PG_PORT"], config["SONIC_PG_USER"], config["SONIC_PG_DATABASE"])
    assert float(meta["targetQueryValue"]) == 1  # never fewer replicas than renders running
    auth = _one("TriggerAuthentication", triggers[0]["authenticationRef"]["name"])
    assert [r["key"] for r in auth["spec"]["secretTargetRef"]] == ["SONIC_PG_PASSWORD"]
    assert scaled["minReplicaCount"] >= 1
    down = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert 300 <= down["stabilizationWindowSeconds"] <= 3600  # the HPA refuses above 3600
    assert all(p["type"] == "Pods" and p["value"] == 1 for p in down["policies"])
    assert scaled["fallback"]["replicas"] >= scaled["minReplicaCount"]


def test_the_bridge_scales_on_lag_and_never_past_the_partitions() -> None:
    scaled = _one("ScaledObject", "sonic-bridge")["spec"]
    config = _config()
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["topic"] == config["SONIC_TOPIC_TASKS"]
    assert trigger["metadata"]["consumerGroup"] == config["SONIC_CONSUMER_GROUP"]
    assert scaled["maxReplicaCount"] <= Settings().topic_partitions


@pytest.mark.integration
def test_the_gpu_scaling_query_counts_gpu_work_queued_or_running(
        db_engine: Engine, unique: str) -> None:
    """Against the real schema: every job that needs or holds a GPU counts once; jobs
    past the gpu stage, final ones and held ones do not."""
    query = text(_one("ScaledObject", "sonic-worker-gpu")["spec"]["triggers"][0][
        "metadata"]["query"])
    rows = {  # (status, stage): counts?
        ("received", None): True, ("queued", "preprocess"): True,
        ("running", "preprocess"): True, ("running", "gpu"): True, ("queued", "gpu"): True,
        ("running", "encode"): False, ("running", "upload"): False,
        ("completed", "callback"): False, ("failed", "gpu"): False,
        ("cancelled", "preprocess"): False, ("rejected", None): False,
        ("waiting", None): False,
    }
    ids = [f"keda-{unique}-{i}" for i in range(len(rows))]
    try:
        with db_engine.begin() as conn:
            before = conn.execute(query).scalar_one()
            for task_id, (status, stage) in zip(ids, rows):
                conn.execute(text("INSERT INTO tasks (task_id, status, stage, payload) "
                                  "VALUES (:t, :s, :st, '{}')"),
                             {"t": task_id, "s": status, "st": stage})
            after = conn.execute(query).scalar_one()
    finally:
        with db_engine.begin() as conn:
            conn.execute(text("DELETE FROM tasks WHERE task_id = ANY(:ids)"), {"ids": ids})
    assert after - before == sum(rows.values())


# --- systemd: restarts that cannot help, stops that kill work --------------------------------
def test_units_never_restart_on_an_exit_a_restart_repeats() -> None:
    units = _units()
    services = {n: u for n, u in units.items() if n.endswith(".service")}
    assert {"sonic-bridge.service", "sonic-worker@.service", "sonic-flower.service",
            "sonic-housekeeping.service"} <= set(services)
    for name, unit in services.items():
        service = unit["Service"]
        if service.get("Type") == ["oneshot"]:
            assert "Restart" not in service, name  # the timer starts it again
            continue
        assert service["Restart"] == ["on-failure"], name
        prevent = {int(c) for line in service["RestartPreventExitStatus"]
                   for c in line.split()}
        assert {EXIT_USAGE, EXIT_CONFIG} <= prevent, name
    bridge = services["sonic-bridge.service"]["Service"]
    assert EXIT_INVALID_RATIO in {int(c) for c in bridge["RestartPreventExitStatus"][0].split()}
    assert EXIT_CONFIG == 3 and EXIT_INVALID_RATIO == 5


def test_stopping_a_worker_waits_for_its_render() -> None:
    worker = _units()["sonic-worker@.service"]["Service"]
    assert worker["KillSignal"] == ["SIGTERM"] and worker["KillMode"] == ["mixed"]
    hard = celery_config(Settings())["task_annotations"][TASK_NAMES["gpu"]]["time_limit"]
    assert int(worker["TimeoutStopSec"][0]) >= hard + 60
    bridge = _units()["sonic-bridge.service"]["Service"]
    assert int(bridge["TimeoutStopSec"][0]) >= 30


def test_the_housekeeping_timer_starts_its_service() -> None:
    units = _units()
    timer = units["sonic-housekeeping.timer"]
    assert timer["Timer"]["OnUnitInactiveSec"] and timer["Install"]["WantedBy"]
    assert "sonic-housekeeping.service" in units


def test_systemd_accepts_every_unit(tmp_path: Path) -> None:
    """systemd's own parser: an unknown key or a bad value is a warning it prints."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (Debian's systemd package) is needed"
    names = []
    for path in [*SYSTEMD.glob("*.service"), *SYSTEMD.glob("*.timer")]:
        body = path.read_text().replace("/opt/sonic-pipeline/.venv/bin/sonic-pipeline",
                                        "/bin/true")
        body = re.sub(r"^(User|Group)=sonic$", r"\1=root", body, flags=re.M)
        name = path.name.replace("@.service", "@gpu.service")
        (tmp_path / name).write_text(body)
        names.append(f"./{name}")
    proc = subprocess.run([analyze, "verify", "--man=no", *names], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
