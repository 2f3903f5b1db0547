"""kyu-trio from FastAPI: an endpoint that enqueues with `AsyncioClient`, and one that
awaits a job's result. The app is asyncio; only the worker is trio.

    .venv/bin/python examples/fastapi_app.py worker        # terminal 1: runs the jobs
    uvicorn examples.fastapi_app:app                      # terminal 2: the web app
    curl -s -X POST localhost:8000/jobs -H 'content-type: application/json' \\
         -d '{"type": "add", "payload": {"a": 2, "b": 3}}'
    curl -s localhost:8000/jobs/<id>/result

``--self-test`` calls both endpoints in-process (httpx's ASGI transport, the app's
lifespan around it) and exits 0 when the result came back; a worker must be running.

It connects to ``postgresql://postgres@127.0.0.1:5432/test`` and ``redis://127.0.0.1:6379/0``
unless KYU_DSN / KYU_REDIS_URL say otherwise, and uses the queue ``kyu:fastapi`` unless
KYU_QUEUE says otherwise.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from kyu_trio import AsyncioClient, Config, InvalidJobError, JobFailed, JobNotFound


def config() -> Config:
    defaults = {
        "dsn": "postgresql://postgres@127.0.0.1:5432/test",
        "redis_url": "redis://127.0.0.1:6379/0",
        "queue_name": "kyu:fastapi",
    }
    set_by_env = {"dsn": "KYU_DSN", "redis_url": "KYU_REDIS_URL", "queue_name": "KYU_QUEUE"}
    overrides = {k: v for k, v in defaults.items() if not os.environ.get(set_by_env[k])}
    return Config.from_env(**overrides)


# [app]
client = AsyncioClient(config())


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with client:  # one client (and its connection pools) for the app's life
        yield


app = FastAPI(lifespan=lifespan)


class NewJob(BaseModel):
    type: str
    payload: Any = None
    priority: int = 0


@app.post("/jobs", status_code=201)
async def post_job(job: NewJob) -> dict[str, str]:
    try:
        job_id = await client.enqueue(job.type, job.payload, priority=job.priority)
    except InvalidJobError as exc:
        raise HTTPException(400, str(exc)) from None
    return {"id": job_id}


@app.get("/jobs/{job_id}/result")
async def get_result(job_id: str, wait: float = 10.0) -> dict[str, Any]:
    try:
        value = await client.result(job_id, timeout=min(wait, 30.0))
    except JobNotFound:
        raise HTTPException(404, f"no job {job_id}") from None
    except JobFailed as exc:
        detail = f"the job ended {exc.job.status}: {exc.job.error_message}"
        raise HTTPException(409, detail) from None
    except TimeoutError:
        raise HTTPException(504, "not finished yet: ask again") from None
    return {"id": job_id, "result": value}


# [/app]


def worker() -> None:
    """The worker process: trio, with the handler the app's jobs name."""
    import trio

    from kyu_trio import Queue

    queue = Queue(config())

    @queue.handler("add")
    async def add(payload: dict[str, int]) -> int:
        return payload["a"] + payload["b"]

    trio.run(queue.serve)


async def self_test() -> int:
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        posted = await http.post("/jobs", json={"type": "add", "payload": {"a": 2, "b": 3}})
        print(f"POST /jobs -> {posted.status_code} {posted.json()}")
        job_id = posted.json()["id"]
        answer = await http.get(f"/jobs/{job_id}/result")
        print(f"GET /jobs/<id>/result -> {answer.status_code} {answer.json()}")
        # NaN is not JSON: Python's parser lets it through, kyu-trio refuses it (400).
        bad = await http.post(
            "/jobs",
            content=b'{"type": "add", "payload": {"a": NaN}}',
            headers={"content-type": "application/json"},
        )
        missing = await http.get("/jobs/00000000-0000-7000-8000-000000000000/result")
        print(f"bad payload -> {bad.status_code}; unknown job -> {missing.status_code}")
    if (posted.status_code, answer.status_code, answer.json().get("result")) != (201, 200, 5):
        print("FAILED", file=sys.stderr)
        return 1
    print("OK: a job enqueued over HTTP returned its result over HTTP")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["worker"]:
        worker()
    elif sys.argv[1:] == ["--self-test"]:
        sys.exit(asyncio.run(self_test()))
    else:
        print(__doc__)
