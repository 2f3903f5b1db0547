"""An order row and its job in one Django transaction (Django 4.2+ on psycopg 3).

Inside ``transaction.atomic()``, ``django.db.connection.connection`` is the psycopg
connection Django's own queries use: pass it as ``conn=``::

    .venv/bin/python examples/transactional_django.py

Settings are configured in code here; in a project they are your settings module. The
servers and queue are those of ``examples/transactional.py`` (KYU_DSN, KYU_REDIS_URL,
KYU_QUEUE).
"""

from __future__ import annotations

import django
from django.conf import settings
from psycopg.conninfo import conninfo_to_dict
from transactional import config, create_orders_table, order_count, running_worker

from kyu_trio import Client, Config


def configure_django(cfg: Config) -> None:
    params = conninfo_to_dict(cfg.dsn)
    settings.configure(
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",  # psycopg 3 when installed
                "NAME": params.get("dbname", ""),
                "USER": params.get("user", ""),
                "PASSWORD": params.get("password", ""),
                "HOST": params.get("host", ""),
                "PORT": params.get("port", ""),
            }
        },
        USE_TZ=True,
    )
    django.setup()


# [django]
def place_order(client: Client, item: str) -> str:
    """A view's work: the order row and its job commit together, or neither does."""
    from django.db import connection, transaction

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO shop_orders (item) VALUES (%s) RETURNING id", [item])
            order_id = cursor.fetchone()[0]
        # The psycopg connection under Django's, inside the atomic block's transaction.
        return client.enqueue("ship_order", {"order_id": order_id}, conn=connection.connection)


# [/django]


class Refused(Exception):
    pass


def main() -> None:
    cfg = config()
    configure_django(cfg)
    create_orders_table(cfg.dsn)
    with Client(cfg) as client, running_worker(cfg):
        try:
            from django.db import transaction

            with transaction.atomic():
                place_order(client, "django umbrella")
                raise Refused  # anything that rolls the outer block back
        except Refused:
            pass
        assert order_count(cfg.dsn, "django umbrella") == 0
        print("rolled back: no order, no job")
        job_id = place_order(client, "django teapot")
        print(client.result(job_id, timeout=10))


if __name__ == "__main__":
    main()
