-- kyu-trio schema, version 12: which processes serve a queue.

-- One row per process serving a queue (`serve()`), written by the process itself: at
-- start, then every leader_interval from the task that campaigns for the maintenance
-- lease (one upsert), and deleted when it stops. `process_id` is the worker id its
-- leases carry (kyu_jobs.locked_by, kyu_leaders.holder). A row whose expires_at
-- (last_seen + 3 leader_intervals) has passed belongs to a process that died or lost
-- PostgreSQL: reads leave it out, and the leader's pruner deletes it an hour later.
-- A few rows per queue, read by primary key prefix: no other index.
CREATE TABLE kyu_processes (
    queue       text        NOT NULL,
    process_id  text        NOT NULL,
    host        text        NOT NULL,
    pid         integer     NOT NULL,
    workers     integer     NOT NULL,
    started_at  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (queue, process_id)
);
