-- kyu-trio schema, version 13: what the web dashboard reads fast (issue 15).

-- Its chart of failed runs per minute over the last hour: the runs that ended recently,
-- by end time (without this, a sequential scan of the whole history). INCLUDE makes it
-- an index-only scan that tells a failure from a requeue or a snooze without visiting
-- the heap. One entry per row of kyu_attempts, i.e. per run that did not complete
-- (failed, dead, timed out, requeued, lost, snoozed, cancelled while running): a
-- completed run, the hot path, writes no attempt row and so nothing here.
CREATE INDEX kyu_attempts_finished_idx ON kyu_attempts (finished_at) INCLUDE (job_id, outcome);

-- Its list of failed jobs (waiting for a retry), newest failure first. kyu_jobs_due_idx
-- holds them mixed with every scheduled job, ordered by due time, so that a page of
-- failed jobs could mean reading thousands of scheduled ones. Partial, as
-- kyu_jobs_cancelled_idx (migration 007): it adds no indexed column (status and
-- updated_at are indexed already, so no update that was HOT stops being one), and only a
-- row entering 'failed' (a failure with a retry left) gets an entry.
CREATE INDEX kyu_jobs_failed_idx ON kyu_jobs (queue, updated_at) WHERE status = 'failed';
