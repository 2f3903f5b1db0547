-- kyu-trio schema, version 10: progress of running jobs.

-- The last value a job's handler reported with `current_job().set_progress(value)` (NULL:
-- none yet). The worker running the job writes the latest value of all its jobs in one
-- statement at most every 0.5 s, fenced by each run's lease (attempt and locked_by), and
-- the last one of a run also once the run has ended. A new run does not clear it: a
-- retried job shows its previous run's progress until it reports its own.
-- Nullable without a default: adding it rewrites nothing, however large the table.
ALTER TABLE kyu_jobs ADD COLUMN progress jsonb;
