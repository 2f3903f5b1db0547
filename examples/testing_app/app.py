"""A small app, as apps hold their queue: one module-level ``queue`` with its handlers.

Signing up enqueues a welcome email; the email handler fails while the mail server is
down, and kyu-trio retries it. ``test_app.py`` next to it tests this module as it is.
"""

from __future__ import annotations

import json

from kyu_trio import Config, Queue

queue = Queue(Config.from_env(queue_name="signups"))


class Mailer:
    """Stands in for an email service."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.down = False

    async def send(self, to: str, subject: str) -> None:
        if self.down:
            raise ConnectionError("mail server unreachable")
        self.sent.append(f"{to}: {subject}")


mailer = Mailer()


@queue.handler("signup")
async def signup(payload: str) -> None:
    user = json.loads(payload)
    await queue.enqueue("send_welcome", json.dumps({"email": user["email"]}))


@queue.handler("send_welcome")
async def send_welcome(payload: str) -> None:
    await mailer.send(json.loads(payload)["email"], "Welcome!")
