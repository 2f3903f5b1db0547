-- kyu-trio schema, version 8: periodic jobs (`Queue.cron`).

-- One row per cron entry of a queue: its definition as the maintenance leader last
-- registered it, and the last tick fired. Firing a tick is one statement that advances
-- last_tick from the value the leader read, fenced by its lease (kyu_leaders), and
-- inserts the tick's job only if that update matched: so a tick is written once, however
-- many processes serve the queue, across restarts and leader changes.
CREATE TABLE kyu_cron (
    queue        text        NOT NULL,
    name         text        NOT NULL,
    schedule     text        NOT NULL,
    timezone     text        NOT NULL,
    job_type     text        NOT NULL,
    payload      text        NOT NULL,
    priority     smallint    NOT NULL,
    max_retries  integer     NOT NULL CHECK (max_retries >= 0),
    -- NULL: the default job timeout of the process that enqueues each tick's job.
    job_timeout  double precision CHECK (job_timeout > 0),
    missed       text        NOT NULL CHECK (missed IN ('run_once', 'skip')),
    -- The last tick fired (or skipped); a new entry starts at its latest tick before it
    -- was registered, so registering never fires at once.
    last_tick    timestamptz NOT NULL,
    -- False once the leader no longer registers the entry: it stays, and never fires.
    registered   boolean     NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (queue, name)
);
