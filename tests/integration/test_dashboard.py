"""Every PromQL expression of the Grafana dashboard returns data from a real Prometheus.

A worker runs in this process with metrics on a free port, fed the mixed workload of
examples/load.py (successes, failures and retries, dead jobs, scheduled jobs, slow jobs),
while a Prometheus of its own (Debian's ``prometheus`` package; ``scripts/setup.sh``
installs it) scrapes it every second. Then each expression of
grafana/dashboards/kyu-trio.json, with Grafana's variables filled in, is evaluated
through ``/api/v1/query``: a panel whose query returns nothing fails the test.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import attrs
import pytest
import trio

from kyu_trio import Config, Queue
from tests.conftest import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "grafana" / "dashboards" / "kyu-trio.json"
PROMETHEUS = shutil.which("prometheus") or next(
    (p for p in ("/usr/bin/prometheus",) if Path(p).is_file()), None
)
SCRAPE_JOB = "kyu-trio"
RATE = 30.0  # jobs enqueued per second
#: How long Prometheus scrapes the loaded worker before the queries are evaluated.
WARM_UP = 10.0
#: After the warm-up, empty queries are evaluated again for up to this long.
SETTLE = 10.0
#: Grafana's variables: the rate interval Grafana would use for a 1 s scrape interval is
#: far below 1m, so 1m is a conservative stand-in; $job and $instance mean "All".
VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
    "__range_s": "300",
    "__interval_ms": "15000",
    "job": ".*",
    "instance": ".*",
}


@attrs.frozen
class Query:
    panel: str
    ref: str
    expr: str  # as written in the dashboard
    promql: str  # with the variables filled in


def fill_variables(expr: str) -> str:
    """Replace $name, ${name} and ${name:format} as Grafana would for our dashboard."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in VARIABLES:
            raise AssertionError(f"unknown Grafana variable ${name} in {expr!r}")
        return VARIABLES[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def dashboard_queries() -> list[Query]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    panels = [p for top in dashboard["panels"] for p in [top, *top.get("panels", [])]]
    for panel in panels:
        for target in panel.get("targets", []):
            expr = target["expr"]
            queries.append(Query(panel["title"], target["refId"], expr, fill_variables(expr)))
    return queries


def variable_queries() -> list[tuple[str, str, str]]:
    """(name, metric selector, label) of each ``label_values(selector, label)`` variable."""
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for var in dashboard["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["definition"])
        assert match, f"variable {var['name']}: unexpected query {var['definition']!r}"
        out.append((var["name"], fill_variables(match.group(1)), match.group(2)))
    return out


def load_example() -> ModuleType:
    """examples/load.py, whose workload the compose stack runs."""
    spec = importlib.util.spec_from_file_location("kyu_load_example", ROOT / "examples" / "load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # attrs and dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def get_json(url: str) -> Any:
    """Blocking GET of a JSON document (run it in a thread). Prometheus answers errors
    with a JSON body too, so that body is returned rather than raised."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        with exc:
            return json.load(exc)


def get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@attrs.define
class PrometheusServer:
    port: int
    config: Path
    data: Path
    log: IO[str]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def command(self) -> list[str]:
        assert PROMETHEUS is not None
        return [
            PROMETHEUS,
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.data}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]

    def logs(self) -> str:
        self.log.flush()
        return self.log_path.read_text()[-4000:]

    async def get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        return await trio.to_thread.run_sync(get_json, url)

    async def query(self, promql: str) -> Any:
        return await self.get("/api/v1/query", query=promql, time=f"{time.time():.3f}")


@pytest.fixture
def worker_port() -> int:
    return free_port()


@pytest.fixture
def prometheus_server(tmp_path: Path, worker_port: int) -> Iterator[PrometheusServer]:
    """A Prometheus configuration scraping 127.0.0.1:<worker_port> every second (the test
    starts the process itself, within trio)."""
    if PROMETHEUS is None:
        pytest.skip(
            "the `prometheus` binary is not installed: run scripts/setup.sh (it installs "
            "Debian's package) or `apt-get install --no-install-recommends prometheus`"
        )
    config = tmp_path / "prometheus.yml"
    # JSON is YAML: no YAML writer needed.
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": SCRAPE_JOB,
            "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}],
        }],
    }))  # fmt: skip
    log_path = tmp_path / "prometheus.log"
    with log_path.open("w") as log:
        yield PrometheusServer(free_port(), config, tmp_path / "data", log, log_path)


def summarize(result: list[dict[str, Any]]) -> str:
    parts = []
    for series in result[:6]:
        labels = {k: v for k, v in series["metric"].items() if k not in ("job", "instance")}
        value = float(series["value"][1])
        label = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        parts.append(f"{label or '-'}={value:.4g}")
    more = f" (+{len(result) - 6} more)" if len(result) > 6 else ""
    return "; ".join(parts) + more


def has_data(answer: Any) -> bool:
    """A successful instant vector with at least one finite value (a panel of NaN only
    shows no data in Grafana)."""
    if answer.get("status") != "success":
        return False
    data = answer["data"]
    if data["resultType"] != "vector":
        return False
    return any(math.isfinite(float(series["value"][1])) for series in data["result"])


async def test_every_dashboard_query_returns_data(
    make_config: Callable[..., Config],
    worker_port: int,
    prometheus_server: PrometheusServer,
) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 25
    load = load_example()
    queue = Queue(
        make_config(
            metrics_port=worker_port,
            workers=10,
            scheduler_interval=0.2,
            metrics_sample_interval=0.5,
            max_backoff=1.0,  # retries are due 1 s after a failure
            shutdown_grace=1.0,
        )
    )
    load.register_handlers(queue)
    mix = load.Mix(ok_sleep=(0.005, 0.3), slow_sleep=(0.5, 1.5), schedule_ahead=(0.5, 3.0))
    produced: Counter[str] = Counter()
    prom = prometheus_server
    answers: dict[Query, Any] = {}
    started = trio.current_time()

    async def produce(*, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await load.produce(queue, RATE, mix, seed=7, produced=produced)

    with trio.fail_after(WARM_UP + SETTLE + 40):
        async with queue, trio.open_nursery() as nursery:
            await nursery.start(queue.serve)
            producing = await nursery.start(produce)
            process = await trio.lowlevel.open_process(
                prom.command, stdout=prom.log, stderr=subprocess.STDOUT
            )
            try:
                while not await trio.to_thread.run_sync(get_ok, f"{prom.url}/-/ready"):
                    assert process.poll() is None, f"prometheus exited:\n{prom.logs()}"
                    await trio.sleep(0.2)
                # Wait for the first successful scrape, then let it scrape under load.
                while True:
                    up = await prom.query(f'up{{job="{SCRAPE_JOB}"}}')
                    if has_data(up) and float(up["data"]["result"][0]["value"][1]) == 1:
                        break
                    await trio.sleep(0.5)
                await trio.sleep(WARM_UP)
                deadline = trio.current_time() + SETTLE
                pending = list(queries)
                while pending:
                    for query in pending:
                        answers[query] = await prom.query(query.promql)
                    pending = [q for q in pending if not has_data(answers[q])]
                    if not pending or trio.current_time() > deadline:
                        break
                    await trio.sleep(1.0)
                variables = {}
                for name, selector, label in variable_queries():
                    values = await prom.get(
                        f"/api/v1/label/{label}/values", **{"match[]": selector}
                    )
                    variables[name] = values
                status_rates = await prom.query(
                    "sum by (status) (rate(kyu_jobs_processed_total[1m]))"
                )
                failure_types = await prom.query(
                    "sum by (job_type) (increase(kyu_job_failures_total[1m]))"
                )
            finally:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
                producing.cancel()
                queue.shutdown()
    elapsed = trio.current_time() - started

    print(f"\n{len(queries)} dashboard expressions, {sum(produced.values())} jobs enqueued "
          f"({dict(produced)}), {elapsed:.1f}s:")  # fmt: skip
    problems = []
    for query in queries:
        answer = answers.get(query, {"status": "not evaluated"})
        ok = has_data(answer)
        detail = summarize(answer["data"]["result"]) if ok else json.dumps(answer)[:300]
        print(f"  {'ok ' if ok else 'NO '} {query.panel} [{query.ref}]: {detail}")
        if not ok:
            problems.append(f"{query.panel} [{query.ref}] {query.promql}\n    -> {detail}")
    assert not problems, (
        "dashboard queries without data:\n" + "\n".join(problems) + f"\n{prom.logs()}"
    )

    for name, values in variables.items():
        assert values["status"] == "success" and values["data"], f"${name}: {values}"
    assert variables["job"]["data"] == [SCRAPE_JOB]
    rates = {s["metric"]["status"]: float(s["value"][1]) for s in status_rates["data"]["result"]}
    assert rates["completed"] > 0 and rates["failed"] > 0 and rates["dead"] > 0, rates
    failing = {s["metric"]["job_type"] for s in failure_types["data"]["result"]}
    assert {"flaky", "broken"} <= failing, failing


def test_fill_variables() -> None:
    assert fill_variables('rate(x{job=~"$job"}[$__rate_interval])') == 'rate(x{job=~".*"}[1m])'
    assert fill_variables("${instance:regex} $__interval") == ".* 15s"
    with pytest.raises(AssertionError, match="unknown Grafana variable"):
        fill_variables("$nope")


async def test_load_example_runs_and_stops(pg_dsn: str, redis_url: str, queue_name: str) -> None:
    """examples/load.py (the compose stack's worker) serves metrics, enqueues at the
    given rate and stops by itself after --duration."""
    port = free_port()
    env = {
        **os.environ,
        "KYU_DSN": pg_dsn,
        "KYU_REDIS_URL": redis_url,
        "KYU_QUEUE": queue_name,
        "KYU_METRICS_PORT": str(port),
    }
    command = [sys.executable, str(ROOT / "examples" / "load.py"), "--rate", "40",
               "--duration", "3", "--workers", "8", "--report-every", "1",
               "--shutdown-grace", "0.5"]  # fmt: skip
    with trio.fail_after(60):
        result = await trio.run_process(
            command, env=env, capture_stdout=True, capture_stderr=True, check=False
        )
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    assert f"metrics on http://127.0.0.1:{port}/metrics" in output
    enqueued = re.search(r"stopped after enqueueing (\d+) jobs", output)
    assert enqueued is not None, output
    assert 80 <= int(enqueued.group(1)) <= 160, output  # about 3 s x 40 jobs/s
