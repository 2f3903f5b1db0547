-- kyu-trio schema, version 3: JSON payloads, handler results and attempt history.

-- Payloads were free text and are JSON text now: each old payload becomes the JSON
-- string that holds it, so its handler still receives the same str. The column stays
-- text: jsonb would make COPY of bulk enqueues 2-3x slower (measured), and a payload is
-- only ever handed back whole.
UPDATE kyu_jobs SET payload = to_json(payload)::text;

-- A handler's return value, set by the completion (NULL when it returned None). jsonb,
-- so that applications can query results in SQL.
ALTER TABLE kyu_jobs ADD COLUMN result jsonb;

-- The runs of a job that did not complete (failed, dead, timed out, requeued, lost),
-- written by the same statement as the failure, requeue or rescue. A completed run is
-- never written here: it is the row itself (attempt, locked_by, locked_at, completed_at),
-- which keeps the completion, the hot path, a single narrow update.
CREATE TABLE kyu_attempts (
    job_id      uuid        NOT NULL REFERENCES kyu_jobs (id) ON DELETE CASCADE,
    attempt     integer     NOT NULL,
    worker_id   text,
    started_at  timestamptz,
    finished_at timestamptz NOT NULL,
    outcome     text        NOT NULL CHECK (outcome IN
                    ('completed', 'failed', 'dead', 'timed_out', 'requeued', 'lost',
                     'cancelled', 'snoozed')),
    error       text,
    traceback   text,
    PRIMARY KEY (job_id, attempt)
);
