-- kyu-trio schema, version 7: retention (pruning of finished jobs by the leader).

-- The pruner deletes each status's jobs older than its retention in batches, each batch
-- found by index: completed ones by kyu_jobs_completed_idx (queue, completed_at), dead
-- ones by kyu_jobs_dead_idx (queue, updated_at DESC), cancelled ones by this one. A
-- partial index costs nothing on the hot path: it adds no indexed column (status and
-- updated_at are indexed already, so no update that was HOT stops being one), and only
-- a row entering 'cancelled', which is rare, gets an entry.
CREATE INDEX kyu_jobs_cancelled_idx ON kyu_jobs (queue, updated_at) WHERE status = 'cancelled';
