-- kyu-trio schema, version 14: the scheduler's index in its promotion order.

-- The scheduler promotes due jobs oldest first, ties in enqueue order (ORDER BY
-- scheduled_at, seq, in batches of 1,000). With seq missing from the index, every batch
-- sorted all the due rows of the queue to find its first 1,000: promoting 100,000 jobs
-- due at one instant (one enqueue_many with one scheduled_at) sorted 100,000 rows 100
-- times, about 10 s. With seq in it, a batch reads its 1,000 entries in order.
-- Rebuilt under the same name. The index holds only scheduled and failed jobs, but
-- building it reads the whole table: on a table of millions of rows, expect seconds,
-- during which enqueues wait.
DROP INDEX kyu_jobs_due_idx;
CREATE INDEX kyu_jobs_due_idx ON kyu_jobs (queue, scheduled_at, seq)
    WHERE status IN ('scheduled', 'failed');
