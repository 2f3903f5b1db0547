"""Issue 10, item 2: text PostgreSQL cannot store never crashes a worker, and one outcome
the database refuses never keeps the others of its batch unwritten. Real servers."""

from __future__ import annotations

import json
from collections.abc import Callable

import psycopg
import pytest
import trio

from kyu_trio import Config, JobStatus, Queue
from kyu_trio._runtime._pool import UNSTORABLE_MESSAGE

pytestmark = pytest.mark.integration


async def _serve_until_final(queue: Queue, ids: list[str], limit: float = 15) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.serve)
        with trio.fail_after(limit):
            while True:
                jobs = [await queue.inspect(i) for i in ids]
                if all(j.status in (JobStatus.COMPLETED, JobStatus.DEAD) for j in jobs):
                    break
                await trio.sleep(0.05)
        queue.shutdown()


async def test_lone_surrogate_and_nul_in_an_error_message_are_stored(
    make_config: Callable[..., Config],
) -> None:
    # On 068acfc `{"to": "\ud800"}` (ASCII JSON) crashed serve() with UnicodeEncodeError
    # when the failure was written, and the rescued job crashed the next worker too.
    queue = Queue(make_config(workers=4))

    @queue.handler("send")
    async def send(payload: str) -> None:
        raise ValueError(f"cannot send to {json.loads(payload)['to']}\x00!")

    @queue.handler("ok")
    async def ok(payload: str) -> None:
        pass

    async with queue:
        bad = await queue.enqueue("send", '{"to": "\\ud800"}', max_retries=0)
        good = [await queue.enqueue("ok", "") for _ in range(5)]
        await _serve_until_final(queue, [bad, *good])
        failed = await queue.inspect(bad)
        done = [await queue.inspect(i) for i in good]
    assert failed.status is JobStatus.DEAD
    assert failed.error_message == "ValueError: cannot send to \ufffd\\x00!"
    assert {j.status for j in done} == {JobStatus.COMPLETED}


async def test_an_outcome_the_database_refuses_does_not_block_its_batch(
    pg_dsn: str, make_config: Callable[..., Config]
) -> None:
    # Whatever else the database may refuse (here: a trigger of the user's), the other
    # outcomes of the batch are written, the refused failure is stored with a placeholder
    # message, and the worker goes on.
    marker = "refuse-me-" + make_config().queue_name[-12:]
    try:
        queue = Queue(make_config(workers=8))
        gate = trio.Event()

        @queue.handler("fail")
        async def fail(payload: str) -> None:
            await gate.wait()
            raise RuntimeError(payload)

        async with queue:
            _ensure_trigger(pg_dsn, marker)
            ids = [
                await queue.enqueue("fail", p, max_retries=0)
                for p in ["plain 1", marker, "plain 2", "plain 3"]
            ]
            async with trio.open_nursery() as nursery:
                await nursery.start(queue.serve)
                await trio.sleep(0.5)  # all four running: their failures form one batch
                gate.set()
                with trio.fail_after(15):
                    dead = [JobStatus.DEAD] * 4
                    while [(await queue.inspect(i)).status for i in ids] != dead:  # noqa: ASYNC110
                        await trio.sleep(0.05)
                queue.shutdown()
            jobs = [await queue.inspect(i) for i in ids]
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("DROP TRIGGER IF EXISTS kyu_test_refuse ON kyu_jobs")
            conn.execute("DROP FUNCTION IF EXISTS kyu_test_refuse()")
    assert [j.error_message for j in jobs] == [
        "RuntimeError: plain 1",
        UNSTORABLE_MESSAGE,
        "RuntimeError: plain 2",
        "RuntimeError: plain 3",
    ]


def _ensure_trigger(dsn: str, marker: str) -> None:
    """A trigger of the user's that refuses one message (once the schema exists)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"""
            CREATE OR REPLACE FUNCTION kyu_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.error_message LIKE '%{marker}%' THEN
                    RAISE EXCEPTION 'refused by a trigger' USING ERRCODE = '22023';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER kyu_test_refuse BEFORE UPDATE ON kyu_jobs
                FOR EACH ROW EXECUTE FUNCTION kyu_test_refuse();
        """)
