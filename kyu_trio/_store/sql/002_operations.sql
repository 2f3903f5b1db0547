-- kyu-trio schema, version 2: what the operations API (stats, purge, list) needs.

-- Throughput over the last minute and purge of old completed jobs.
CREATE INDEX kyu_jobs_completed_idx ON kyu_jobs (queue, completed_at) WHERE status = 'completed';
-- list_jobs(): newest first, optionally by status.
CREATE INDEX kyu_jobs_created_idx ON kyu_jobs (queue, created_at DESC);
