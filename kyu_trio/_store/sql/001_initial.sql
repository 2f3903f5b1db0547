-- kyu-trio schema, version 1.
-- Every table is prefixed kyu_ so it can live beside an application's own tables.

CREATE SEQUENCE kyu_jobs_seq AS bigint;

CREATE TABLE kyu_jobs (
    id             uuid PRIMARY KEY,
    queue          text        NOT NULL,
    job_type       text        NOT NULL,
    payload        text        NOT NULL,
    status         text        NOT NULL CHECK (status IN
                       ('pending', 'scheduled', 'running', 'failed', 'completed', 'dead', 'cancelled')),
    priority       smallint    NOT NULL DEFAULT 0,
    -- Drawn from kyu_jobs_seq each time the job becomes ready: FIFO within a priority.
    seq            bigint      NOT NULL DEFAULT nextval('kyu_jobs_seq'),
    scheduled_at   timestamptz NOT NULL,
    max_retries    integer     NOT NULL CHECK (max_retries >= 0),
    retry_count    integer     NOT NULL DEFAULT 0,
    -- Claims so far; the claim token that fences every later write of a worker.
    attempt        integer     NOT NULL DEFAULT 0,
    error_message  text,
    locked_by      text,
    locked_at      timestamptz,
    heartbeat_at   timestamptz,
    completed_at   timestamptz,
    job_timeout    double precision NOT NULL CHECK (job_timeout > 0),
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
) WITH (fillfactor = 80);  -- room on each page for HOT updates of status changes

ALTER SEQUENCE kyu_jobs_seq OWNED BY kyu_jobs.seq;

-- Scheduler: due scheduled/failed jobs of one queue, in due order.
CREATE INDEX kyu_jobs_due_idx ON kyu_jobs (queue, scheduled_at)
    WHERE status IN ('scheduled', 'failed');
-- Broker resync: pending jobs of one queue, in ready order.
CREATE INDEX kyu_jobs_pending_idx ON kyu_jobs (queue, seq) WHERE status = 'pending';
-- Reaper: running jobs of one queue by last heartbeat.
CREATE INDEX kyu_jobs_running_idx ON kyu_jobs (queue, heartbeat_at) WHERE status = 'running';
-- dead_jobs(): newest first.
CREATE INDEX kyu_jobs_dead_idx ON kyu_jobs (queue, updated_at DESC) WHERE status = 'dead';
