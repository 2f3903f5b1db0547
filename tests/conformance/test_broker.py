"""One suite, run against MemoryBroker and RedisBroker."""

from __future__ import annotations

from typing import Any

import trio

from kyu_trio._ports import Ready


async def test_pops_highest_priority_then_lowest_seq(broker: Any, queue_name: str) -> None:
    await broker.push(
        queue_name,
        [
            Ready("low", -5, 1),
            Ready("high-late", 9, 7),
            Ready("high-early", 9, 3),
            Ready("mid", 0, 2),
        ],
    )
    assert await broker.size(queue_name) == 4
    assert list(await broker.pop(queue_name, 3)) == ["high-early", "high-late", "mid"]
    assert list(await broker.pop(queue_name, 3)) == ["low"]
    assert list(await broker.pop(queue_name, 3)) == []


async def test_extreme_priorities_keep_order(broker: Any, queue_name: str) -> None:
    await broker.push(
        queue_name,
        [Ready("min", -32768, 1), Ready("max", 32767, 2**37 - 1), Ready("zero", 0, 5)],
    )
    assert list(await broker.pop(queue_name, 3)) == ["max", "zero", "min"]


async def test_pop_wait_times_out_empty_and_wakes_on_push(broker: Any, queue_name: str) -> None:
    assert list(await broker.pop_wait(queue_name, 0.1)) == []
    async with trio.open_nursery() as nursery:

        async def push_soon() -> None:
            await trio.sleep(0.05)
            await broker.push(queue_name, [Ready("x", 0, 1)])

        nursery.start_soon(push_soon)
        assert list(await broker.pop_wait(queue_name, 5)) == ["x"]


async def test_pop_wait_takes_up_to_count_once_one_arrives(broker: Any, queue_name: str) -> None:
    await broker.push(queue_name, [Ready(f"j{i}", 0, i) for i in range(5)])
    assert list(await broker.pop_wait(queue_name, 5, 3)) == ["j0", "j1", "j2"]
    assert list(await broker.pop_wait(queue_name, 5, 10)) == ["j3", "j4"]
    assert list(await broker.pop_wait(queue_name, 0.1, 10)) == []


async def test_remove_missing_and_epoch(broker: Any, queue_name: str) -> None:
    await broker.push(queue_name, [Ready("a", 0, 1), Ready("b", 0, 2)])
    await broker.remove(queue_name, ["a"])
    assert await broker.missing(queue_name, ["a", "b", "c"]) == ["a", "c"]
    assert await broker.claim_epoch(queue_name) is True
    assert await broker.claim_epoch(queue_name) is False
    # Pushing the same id again keeps one entry.
    await broker.push(queue_name, [Ready("b", 0, 2)])
    assert await broker.size(queue_name) == 1


async def test_restore_puts_ids_back_in_place(broker: Any, queue_name: str) -> None:
    await broker.push(queue_name, [Ready("a", 5, 1), Ready("b", 0, 2), Ready("c", 0, 3)])
    popped = await broker.pop(queue_name, 2)
    assert list(popped) == ["a", "b"]
    await broker.restore(queue_name, popped)
    assert list(await broker.pop(queue_name, 3)) == ["a", "b", "c"]


async def test_a_published_finished_id_wakes_its_waiter_and_marks_the_queue_waited_on(
    broker: Any, queue_name: str
) -> None:
    got: list[bool] = []

    async def wait() -> None:
        got.append(await broker.wait_finished(queue_name, ["a"], 5.0))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.sleep(0.3)  # subscribed by now
        await broker.publish_finished(queue_name, ["b"])  # not the one it waits for
        await trio.sleep(0.1)
        assert got == []
        await broker.publish_finished(queue_name, ["c", "a"])
    assert got == [True]
    assert await broker.has_waiters(queue_name)  # the waiter's mark (a short TTL) is set
    with trio.move_on_after(2):
        assert not await broker.wait_finished(queue_name, ["a"], 0.1)  # times out: False


async def test_parked_ids_leave_the_queue_and_come_back_in_score_order(
    broker: Any, queue_name: str
) -> None:
    await broker.push(queue_name, [Ready("a1", 0, 1), Ready("b", 0, 2), Ready("a2", 5, 3)])
    popped = await broker.pop(queue_name, 3)
    await broker.restore(queue_name, {"b": popped["b"]})
    await broker.park(queue_name, "a", {i: popped[i] for i in ("a1", "a2")})
    assert await broker.size(queue_name) == 1  # only b: other types flow past the parked
    assert await broker.missing(queue_name, ["a1", "a2", "b"]) == ["a1", "a2"]
    assert await broker.unpark(queue_name, "a", 1) == 1
    assert list(await broker.pop(queue_name, 5)) == ["a2", "b"]  # priority 5 first
    assert await broker.unpark(queue_name, "a", 10) == 1
    assert await broker.unpark(queue_name, "a", 10) == 0
    assert await broker.unpark(queue_name, "other-type", 3) == 0
    assert list(await broker.pop(queue_name, 5)) == ["a1"]
