# The README's example, and step 2 of the tutorial (docs/tutorial.md).
# Run it on the servers of KYU_DSN / KYU_REDIS_URL, e.g. on throwaway ones:
#     kyu-trio dev -- python examples/hello.py
# It serves until Ctrl-C; tests/integration/test_examples.py runs it and stops it with SIGINT.
# [hello]
import trio

from kyu_trio import Config, Queue, current_job

queue = Queue(Config.from_env())  # KYU_DSN, KYU_REDIS_URL, KYU_QUEUE, ...


@queue.handler("send_email")
async def send_email(payload: str) -> None:
    job = current_job()
    print(f"job {job.id}, try {job.retry_count + 1}: mail to {payload}", flush=True)


async def main() -> None:
    async with queue:  # connects, and creates the tables on first use
        await queue.enqueue("send_email", "ada@example.com")
    await queue.serve()  # workers, scheduler and reaper until Ctrl-C or SIGTERM


if __name__ == "__main__":
    trio.run(main)
# [/hello]
