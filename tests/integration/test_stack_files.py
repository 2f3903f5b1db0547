"""The docker-compose stack, checked without Docker: the YAML parses, every file it refers
to exists, ports and host names agree across docker-compose.yml, prometheus.yml, the
Dockerfile and Grafana's provisioning, and the dashboard is well formed and only uses
metrics that kyu-trio exports. `docker compose config` runs when the plugin is there.

What only a machine with Docker can check: that the images build and pull, that the
containers start and reach each other, and that Grafana renders the dashboard.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from kyu_trio import Config, Queue

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "prometheus.yml"
DOCKERFILE = ROOT / "Dockerfile"
DASHBOARD = ROOT / "grafana" / "dashboards" / "kyu-trio.json"
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = ROOT / "grafana" / "provisioning" / "dashboards" / "kyu.yml"
SERVICES = {"postgres", "redis", "worker", "prometheus", "grafana"}
GRID_WIDTH = 24


def load_yaml(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the ["KEY=value", ...] form
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def port_pairs(service: dict[str, Any]) -> list[tuple[int, int]]:
    """(host, container) of each ``ports`` entry, short ("[ip:]host:container") or long."""
    pairs = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            pairs.append((int(entry["published"]), int(entry["target"])))
        else:
            *_, host, container = str(entry).split("/")[0].split(":")
            pairs.append((int(host), int(container)))
    return pairs


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Bind mounts of a service: container path -> source (as written)."""
    out = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            out[entry["target"]] = entry["source"]
        else:
            source, target, *_ = str(entry).split(":")
            out[target] = source
    return out


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


# ---- docker-compose.yml ------------------------------------------------------------------


def test_compose_has_the_five_services(services: dict[str, Any]) -> None:
    assert set(services) == SERVICES
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert services["prometheus"]["image"].startswith("prom/prometheus")
    assert services["grafana"]["image"].startswith("grafana/grafana")
    assert environment(services["postgres"])["POSTGRES_HOST_AUTH_METHOD"] == "trust"
    redis_command = services["redis"]["command"]
    if isinstance(redis_command, str):
        redis_command = shlex.split(redis_command)
    assert " ".join(redis_command[1:]) == "--save  --appendonly no"  # --save "" (no RDB)


def test_every_referenced_file_exists(services: dict[str, Any]) -> None:
    for name, service in services.items():
        build = service.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = (
                "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            )
            assert context.is_dir(), f"{name}: build context {context} is missing"
            assert (context / dockerfile).is_file(), f"{name}: no {dockerfile} in {context}"
        for target, source in mounts(service).items():
            if source.startswith((".", "/")):  # a bind mount, not a named volume
                assert (ROOT / source).exists(), f"{name}: {source} (-> {target}) is missing"


def test_dockerfile_copies_existing_files_and_runs_the_load_example() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    ignore_file = ROOT / ".dockerignore"
    ignored = ignore_file.read_text().split() if ignore_file.exists() else []
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _dest = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is missing"
            assert source not in ignored, f"Dockerfile copies {source}, but .dockerignore drops it"
    # The `binary` extra: psycopg with its own libpq (python:*-slim has none).
    assert re.search(r"^RUN pip install '\.\[binary\]'", text, re.M)
    assert re.search(r"KYU_METRICS_HOST=0\.0\.0\.0", text)
    cmd = json.loads(re.findall(r"^CMD (.+)$", text, re.M)[-1])
    assert cmd[:2] == ["python", "examples/load.py"]
    assert (ROOT / cmd[1]).is_file()


def test_worker_reaches_the_servers_and_waits_for_them(services: dict[str, Any]) -> None:
    worker = services["worker"]
    env = environment(worker)
    dsn, redis_url = urlsplit(env["KYU_DSN"]), urlsplit(env["KYU_REDIS_URL"])
    assert (dsn.scheme, dsn.hostname, dsn.port) == ("postgresql", "postgres", 5432)
    assert (redis_url.scheme, redis_url.hostname, redis_url.port) == ("redis", "redis", 6379)
    Config.from_env(env)  # a valid configuration
    for dependency in ("postgres", "redis"):
        assert worker["depends_on"][dependency]["condition"] == "service_healthy"
        assert services[dependency]["healthcheck"]["test"], f"{dependency} has no healthcheck"
    command = worker.get("command", [])
    if command:
        assert command[:2] == ["python", "examples/load.py"]


def test_ports_are_consistent(services: dict[str, Any]) -> None:
    worker_port = int(environment(services["worker"])["KYU_METRICS_PORT"])
    assert environment(services["worker"]).get("KYU_METRICS_HOST", "0.0.0.0") == "0.0.0.0"
    scrape = load_yaml(PROMETHEUS)
    targets = [
        target
        for job in scrape["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    ]
    assert targets == [f"worker:{worker_port}"]
    assert scrape["global"]["scrape_interval"] == "5s"
    assert (worker_port, worker_port) in port_pairs(services["worker"])
    healthcheck = " ".join(services["worker"]["healthcheck"]["test"])
    assert f":{worker_port}/readyz" in healthcheck
    assert port_pairs(services["prometheus"]) == [(9091, 9090)]
    assert port_pairs(services["grafana"]) == [(3000, 3000)]
    host_ports = [host for s in services.values() for host, _ in port_pairs(s)]
    assert len(host_ports) == len(set(host_ports)), f"host ports clash: {host_ports}"
    assert mounts(services["prometheus"])["/etc/prometheus/prometheus.yml"] == "./prometheus.yml"


def test_grafana_provisioning_is_mounted_and_anonymous(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    env = environment(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_SECURITY_ADMIN_PASSWORD"]
    binds = mounts(grafana)
    assert binds["/etc/grafana/provisioning"] == "./grafana/provisioning"
    providers = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert [p["type"] for p in providers] == ["file"]
    dashboards_dir = providers[0]["options"]["path"]
    assert binds[dashboards_dir] == "./grafana/dashboards"
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home is not None:
        assert home == f"{dashboards_dir}/{DASHBOARD.name}"


def test_datasource_points_at_the_prometheus_service(services: dict[str, Any]) -> None:
    (source,) = load_yaml(DATASOURCES)["datasources"]
    assert (source["type"], source["uid"]) == ("prometheus", "prometheus")
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus" and url.hostname in services
    assert (9091, url.port) in port_pairs(services["prometheus"])  # the container's port
    assert source["jsonData"]["timeInterval"] == load_yaml(PROMETHEUS)["global"]["scrape_interval"]


def test_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian's prometheus package, see scripts/setup.sh) is missing")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_config() -> None:
    try:
        version = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
        )
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"`docker compose` is not available here ({exc}); the YAML is checked above")
    if version.returncode != 0:
        said = (version.stderr or version.stdout).strip().splitlines()
        pytest.skip(
            f"`docker compose version` failed ({said[0] if said else 'no output'}): the compose "
            "plugin is not installed, so `docker compose config` cannot run; the YAML, the "
            "files it refers to and the ports are checked by the other tests of this module"
        )
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


# ---- the dashboard -------------------------------------------------------------------------


def test_dashboard_panels_have_titles_targets_units_and_the_datasource(
    dashboard: dict[str, Any],
) -> None:
    provisioned = {s["uid"] for s in load_yaml(DATASOURCES)["datasources"]}
    assert dashboard["title"] and dashboard["uid"]
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [p for p in panels(dashboard) if p["type"] != "row"]
    assert len(graphs) >= 20
    for panel in panels(dashboard):
        assert panel.get("title"), f"panel {panel['id']} has no title"
    for panel in graphs:
        title = panel["title"]
        assert panel["datasource"]["uid"] in provisioned, title
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{title}: no unit"
        assert panel["targets"], f"{title}: no target"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in provisioned, title
            assert target.get("expr", "").strip(), f"{title}: empty expression"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{title}: duplicate refIds"
    for var in dashboard["templating"]["list"]:
        assert var["datasource"]["uid"] in provisioned, var["name"]


def test_dashboard_grid_has_no_overlaps(dashboard: dict[str, Any]) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["h"] > 0, panel["title"]
        assert grid["x"] + grid["w"] <= GRID_WIDTH, f"{panel['title']} is too wide"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                other = taken.setdefault((x, y), panel["title"])
                assert other == panel["title"], f"{panel['title']} overlaps {other}"


def test_dashboard_covers_the_issue(dashboard: dict[str, Any]) -> None:
    """Every metric the issue asks a panel for is queried somewhere."""
    exprs = " ".join(t["expr"] for p in panels(dashboard) for t in p.get("targets", []))
    for needle in (
        "rate(kyu_jobs_processed_total", "kyu_job_failures_total", "kyu_queue_depth",
        "kyu_queue_lag_seconds", "kyu_job_wait_seconds_bucket", "kyu_job_duration_seconds_bucket",
        "kyu_jobs_running", "kyu_jobs_by_status", "kyu_jobs_dead_total", "kyu_reaper_rescued_total",
        "kyu_redis_resyncs_total", "kyu_scheduler_promoted_total", "kyu_retries_total", "kyu_up",
        "kyu_info", "process_resident_memory_bytes", "process_cpu_seconds_total",
        "process_open_fds", "histogram_quantile(0.5,", "histogram_quantile(0.95,",
        "histogram_quantile(0.99,",
    ):  # fmt: skip
        assert needle in exprs, f"no panel queries {needle}"


def exported_names() -> set[str]:
    """Every sample name a Queue's registry can export (counters with _total, histograms
    with _bucket/_sum/_count; no _created samples), whether or not it has been observed yet."""
    queue = Queue(Config(metrics_port=0))
    names: set[str] = set()
    for family in queue.metrics.registry.collect():
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_sum", "_count"],
        }.get(family.type, [""])
        names.update(family.name + suffix for suffix in suffixes)
    return names


def test_dashboard_only_queries_exported_metrics(dashboard: dict[str, Any]) -> None:
    exported = exported_names()
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            for name in re.findall(r"\b((?:kyu|process)_[a-z_]+)\b", target["expr"]):
                assert name in exported, f"{panel['title']}: {name} is not exported"
    for var in dashboard["templating"]["list"]:
        for name in re.findall(r"\b(kyu_[a-z_]+)\b", var["definition"]):
            assert name in exported, f"variable {var['name']}: {name} is not exported"


def test_dashboard_reads_the_queue_label_without_joining_kyu_info(
    dashboard: dict[str, Any],
) -> None:
    """Every kyu_ metric carries `queue`, so no panel needs a join to learn it."""
    exprs = [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]
    assert [title for title, expr in exprs if "group_left" in expr] == []
    assert any("by (queue)" in expr for _, expr in exprs)
