-- kyu-trio schema, version 6: one maintenance leader per queue.

-- The lease of the process that runs a queue's maintenance (promotion, rescue, sweep,
-- cron, pruning). Taken or renewed by one conditional upsert; `term` grows each time
-- the holder changes, and fenced writes (a cron tick) check it in the same statement.
CREATE TABLE kyu_leaders (
    queue       text PRIMARY KEY,
    holder      text        NOT NULL,
    term        bigint      NOT NULL,
    expires_at  timestamptz NOT NULL
);
