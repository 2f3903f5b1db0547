"""An order row and its job in one SQLAlchemy 2 session transaction (the
``postgresql+psycopg`` dialect).

``session.connection().connection.driver_connection`` is the psycopg connection of the
session's current transaction: pass it as ``conn=``::

    .venv/bin/python examples/transactional_sqlalchemy.py

The servers and queue are those of ``examples/transactional.py`` (KYU_DSN,
KYU_REDIS_URL, KYU_QUEUE).
"""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import URL, Engine, create_engine, text
from sqlalchemy.orm import Session
from transactional import config, create_orders_table, order_count, running_worker

from kyu_trio import Client, Config


def engine_for(cfg: Config) -> Engine:
    params = conninfo_to_dict(cfg.dsn)
    url = URL.create(
        "postgresql+psycopg",
        username=params.get("user"),
        password=params.get("password"),
        host=params.get("host"),
        port=int(params["port"]) if params.get("port") else None,
        database=params.get("dbname"),
    )
    return create_engine(url)


# [sqlalchemy]
def place_order(client: Client, session: Session, item: str) -> str:
    """Insert the order and enqueue its job in the session's transaction."""
    order_id = session.execute(
        text("INSERT INTO shop_orders (item) VALUES (:item) RETURNING id"), {"item": item}
    ).scalar_one()
    # The psycopg connection under the session's current transaction.
    conn = session.connection().connection.driver_connection
    return client.enqueue("ship_order", {"order_id": order_id}, conn=conn)


def main() -> None:
    cfg = config()
    create_orders_table(cfg.dsn)
    engine = engine_for(cfg)
    with Client(cfg) as client, running_worker(cfg):
        with Session(engine) as session:
            place_order(client, session, "sqlalchemy umbrella")
            session.rollback()  # neither the order nor its job
        assert order_count(cfg.dsn, "sqlalchemy umbrella") == 0
        print("rolled back: no order, no job")
        with Session(engine) as session, session.begin():  # commits at the end
            job_id = place_order(client, session, "sqlalchemy teapot")
        print(client.result(job_id, timeout=10))
    engine.dispose()


# [/sqlalchemy]


if __name__ == "__main__":
    main()
