-- kyu-trio schema, version 5: unique jobs.

-- Set by `enqueue(..., unique_key=...)`. While a job of a queue with a key is
-- unfinished, the index below refuses a second one: the enqueue's INSERT ... ON
-- CONFLICT DO NOTHING writes nothing and returns the holder's id instead. A finished
-- job (completed, dead, cancelled) leaves the index, so its key is free again.
ALTER TABLE kyu_jobs ADD COLUMN unique_key text;

-- Partial: jobs without a key (most of them) and finished jobs cost nothing here.
CREATE UNIQUE INDEX kyu_jobs_unique_idx ON kyu_jobs (queue, unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('pending', 'scheduled', 'running', 'failed');
