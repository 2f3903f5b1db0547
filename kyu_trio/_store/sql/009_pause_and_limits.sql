-- kyu-trio schema, version 9: pausing a queue, and fleet-wide limits per job type.

-- A queue's switches. No row: not paused. Claims check it in their own statement, so a
-- pause holds from its commit on, in every process, including ones started later.
CREATE TABLE kyu_queues (
    queue       text PRIMARY KEY,
    paused      boolean     NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- Fleet-wide limits of a job type, as the serving workers registered them. A claim does
-- not take jobs of a type listed here; they go through the limited claim, which locks
-- this row first, so that its count of running jobs and of recent starts sees every
-- claim committed before it.
CREATE TABLE kyu_limits (
    queue        text    NOT NULL,
    job_type     text    NOT NULL,
    -- At most this many jobs of the type running at once (NULL: no such limit).
    concurrency  integer CHECK (concurrency > 0),
    -- At most rate_count starts in any window of rate_per seconds (NULL: no such limit).
    rate_count   integer CHECK (rate_count > 0),
    rate_per     double precision CHECK (rate_per > 0),
    -- The most recent starts, oldest first: at most rate_count of them.
    starts       timestamptz[] NOT NULL DEFAULT '{}',
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (queue, job_type),
    CHECK ((rate_count IS NULL) = (rate_per IS NULL)),
    CHECK (concurrency IS NOT NULL OR rate_count IS NOT NULL)
);

-- No index for "running jobs of a type": a limited claim counts them through
-- kyu_jobs_running_idx (the queue's running jobs, a few hundred at most), which spares
-- every claim and completion of every type one more index entry.
