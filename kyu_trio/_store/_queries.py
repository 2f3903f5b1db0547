"""Every SQL statement `PostgresStore` runs, named. Each transition is conditional on
the row's current status (and, for a worker's writes, on its lease), so concurrent
workers, schedulers and reapers resolve their races inside PostgreSQL."""

from __future__ import annotations

JOB_COLUMNS = (
    "id, queue, job_type, payload, status, priority, scheduled_at, max_retries, retry_count, "
    "error_message, locked_by, locked_at, completed_at, job_timeout, created_at, updated_at, "
    "attempt, heartbeat_at, result, unique_key, progress, trace_context"
)

# A job's attempt history as one JSON array, oldest first: the recorded runs, and the
# completed one read from the row itself (never written to kyu_attempts). Correlated
# with an outer ``kyu_jobs`` row.
ATTEMPTS_OF_ROW = """(
    SELECT json_agg(a ORDER BY a.attempt) FROM (
        SELECT attempt, worker_id, started_at, finished_at, outcome, error, traceback
        FROM kyu_attempts WHERE job_id = kyu_jobs.id
        UNION ALL
        SELECT attempt, locked_by, locked_at, completed_at, 'completed', NULL, NULL
        WHERE status = 'completed'
    ) AS a
)"""

# What a claim returns: the columns it does not set itself (the store fills in the rest
# from its own parameters, which saves parsing six values per job on the hot path).
CLAIMED_COLUMNS = (
    "id::text, job_type, payload, priority, scheduled_at, max_retries, retry_count, "
    "error_message, "
    "job_timeout, created_at, attempt, unique_key, trace_context"
)

MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(hashtext('kyu_trio.migrate'))"
CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS kyu_schema_version (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
CURRENT_VERSION = "SELECT coalesce(max(version), 0) FROM kyu_schema_version"
RECORD_VERSION = "INSERT INTO kyu_schema_version (version) VALUES (%s)"

# Bulk enqueue: draw the sequence numbers first, then COPY the rows with them. COPY
# takes about half the time of an INSERT ... SELECT FROM unnest(...) of the same rows
# (measured: 20 against 38 ms per 1,000 rows), and psycopg need not adapt nine lists.
NEXT_SEQS = "SELECT nextval('kyu_jobs_seq') FROM generate_series(1, %s)"

COPY_JOBS = """
COPY kyu_jobs (id, queue, job_type, payload, status, priority, seq, scheduled_at,
               max_retries, job_timeout, created_at, updated_at, needs_push, trace_context)
FROM STDIN
"""

INSERT_ONE = """
INSERT INTO kyu_jobs (id, queue, job_type, payload, status, priority, scheduled_at,
                      max_retries, job_timeout, created_at, updated_at, needs_push,
                      trace_context)
VALUES (%(id)s, %(queue)s, %(job_type)s, %(payload)s, %(status)s, %(priority)s,
        %(scheduled_at)s, %(max_retries)s, %(job_timeout)s, %(now)s, %(now)s,
        %(needs_push)s, %(trace_context)s)
RETURNING seq
"""

# A job with a `unique_key`: written unless an unfinished job of its queue holds the
# key (the partial unique index of migration 005 decides, so concurrent enqueues from
# any number of processes write one row). No row back: it was not written, and
# `UNIQUE_HOLDER` names the job that holds the key. A holder still uncommitted in
# another transaction makes this wait for that transaction's end.
INSERT_UNIQUE = """
INSERT INTO kyu_jobs (id, queue, job_type, payload, status, priority, scheduled_at,
                      max_retries, job_timeout, created_at, updated_at, needs_push, unique_key,
                      trace_context)
VALUES (%(id)s, %(queue)s, %(job_type)s, %(payload)s, %(status)s, %(priority)s,
        %(scheduled_at)s, %(max_retries)s, %(job_timeout)s, %(now)s, %(now)s,
        %(needs_push)s, %(unique_key)s, %(trace_context)s)
ON CONFLICT (queue, unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('pending', 'scheduled', 'running', 'failed')
    DO NOTHING
RETURNING seq
"""

# Many jobs with a `unique_key` at once (an `enqueue_many` batch): INSERT_UNIQUE for each
# row of the arrays, in their order, so that of a key repeated in the batch the first row
# is written (the later ones conflict with it). Returns the rows written.
INSERT_UNIQUE_MANY = """
INSERT INTO kyu_jobs (id, queue, job_type, payload, status, priority, scheduled_at,
                      max_retries, job_timeout, created_at, updated_at, needs_push, unique_key,
                      trace_context)
SELECT id, queue, job_type, payload, status, priority, scheduled_at,
       max_retries, job_timeout, %(now)s, %(now)s, needs_push, unique_key, trace_context
FROM unnest(%(id)s::uuid[], %(queue)s::text[], %(job_type)s::text[], %(payload)s::text[],
            %(status)s::text[], %(priority)s::smallint[], %(scheduled_at)s::timestamptz[],
            %(max_retries)s::int[], %(job_timeout)s::float8[], %(needs_push)s::bool[],
            %(unique_key)s::text[], %(trace_context)s::text[])
     WITH ORDINALITY AS t(id, queue, job_type, payload, status, priority, scheduled_at,
                          max_retries, job_timeout, needs_push, unique_key, trace_context, n)
ORDER BY n
ON CONFLICT (queue, unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('pending', 'scheduled', 'running', 'failed')
    DO NOTHING
RETURNING id::text, seq
"""

# The unfinished holders of (queue, key) pairs, for the rows INSERT_UNIQUE_MANY skipped.
UNIQUE_HOLDERS = """
SELECT j.queue, j.unique_key, j.id::text FROM kyu_jobs j
JOIN unnest(%(queue)s::text[], %(unique_key)s::text[]) AS k(queue, unique_key)
  ON j.queue = k.queue AND j.unique_key = k.unique_key
WHERE j.status IN ('pending', 'scheduled', 'running', 'failed')
"""

UNIQUE_HOLDER = """
SELECT id::text FROM kyu_jobs
WHERE queue = %(queue)s AND unique_key = %(unique_key)s
  AND status IN ('pending', 'scheduled', 'running', 'failed')
"""

# Before the first enqueue through a caller's connection: does its database have the
# schema that enqueue needs (version 11's trace_context, the last column an insert
# writes)? A query that cannot fail: a failed one would abort the caller's transaction.
SCHEMA_READY = """
SELECT EXISTS (
    SELECT 1 FROM pg_attribute
    WHERE attrelid = to_regclass('kyu_jobs') AND attname = 'trace_context' AND NOT attisdropped
)
"""

#: The channel of `kyu_notify_enqueued()` (migration 004).
ENQUEUED_CHANNEL = "kyu_enqueued"
LISTEN_ENQUEUED = "LISTEN kyu_enqueued"

# Before an insert is repeated after its answer was lost: which rows are there already.
INSERTED = """
SELECT id::text, status, seq FROM kyu_jobs WHERE id = ANY(%(ids)s::uuid[])
"""

# One job with its attempt history (an extra last column that `_to_job` reads).
GET_JOB = f"SELECT {JOB_COLUMNS}, {ATTEMPTS_OF_ROW} FROM kyu_jobs WHERE id = %s"

# Jobs by id, any queue, without their history: what waiting for results polls. The
# parameter is a ``{id,id,...}`` array literal (`_uuid_array`).
GET_JOBS = f"SELECT {JOB_COLUMNS} FROM kyu_jobs WHERE id = ANY(%s::uuid[])"

# One statement for every cancellation, of one job or of many (`cancel_job` runs it with
# one id): a ready job is simply cancelled; a running one is cancelled too, its run
# recorded as an attempt with the outcome 'cancelled', and the process that runs it told
# through a 'kyu_cancelled' notification ("<id> <queue>", the queue last: it may hold
# spaces), which PostgreSQL delivers at COMMIT. The worker's own later write of that run
# is fenced by status = 'running' and writes nothing, so a cancel racing the completion
# ends in exactly one of the two. ``old`` locks the rows (in id order, so that two bulk
# cancels cannot deadlock on each other) and reads each status as it is once any
# concurrent write committed (an UPDATE's RETURNING only sees the new row). The history
# is not trimmed here: a cancelled job never runs again, and reads keep the last
# `max_attempts_kept` runs anyway. Returns one row per job found: (id, its queue,
# whether it was cancelled); an unknown id has no row.
CANCEL_JOBS = """
WITH old AS (
    SELECT id, queue, status FROM kyu_jobs WHERE id = ANY(%(ids)s::uuid[])
    ORDER BY id FOR UPDATE
), cancelled AS (
    UPDATE kyu_jobs AS j SET status = 'cancelled', updated_at = %(now)s
    FROM old
    WHERE j.id = ANY(%(ids)s::uuid[]) AND j.id = old.id
      AND old.status IN ('pending', 'scheduled', 'failed', 'running')
    RETURNING j.id, j.queue, old.status AS was, j.attempt, j.locked_by, j.locked_at
), recorded AS (
    INSERT INTO kyu_attempts
        (job_id, attempt, worker_id, started_at, finished_at, outcome, error)
    SELECT id, attempt, locked_by, locked_at, %(now)s, 'cancelled',
           'Cancelled: cancelled while running'
    FROM cancelled WHERE was = 'running'
    ON CONFLICT (job_id, attempt) DO NOTHING
), notified AS (
    SELECT pg_notify('kyu_cancelled', id::text || ' ' || queue)
    FROM cancelled WHERE was = 'running'
)
-- A plain CTE runs only if read: the one-row join reads ``notified`` whole.
SELECT old.id::text, old.queue, cancelled.id IS NOT NULL
FROM old LEFT JOIN cancelled ON cancelled.id = old.id
CROSS JOIN (SELECT count(*) FROM notified) AS sent
"""

# Deletes jobs that are not running, of one job or of many (`delete_job` runs it with
# one id), with their attempt history (ON DELETE CASCADE, migration 003). A running job
# is left alone: its worker holds it, and `cancel_job` is how it stops. Conditional on
# the status as it is once a concurrent write committed (a claim that takes the row
# first makes it running, and it is kept). Returns (id, queue) of each deleted job.
DELETE_JOBS = """
DELETE FROM kyu_jobs
WHERE id = ANY(%(ids)s::uuid[]) AND (status <> 'running') IS TRUE
RETURNING id::text, queue
"""

DEAD_JOBS = f"""
SELECT {JOB_COLUMNS} FROM kyu_jobs
WHERE queue = %s AND status = 'dead'
ORDER BY updated_at DESC
LIMIT %s
"""

# Statements that name their rows by id write their other tests `(...) IS TRUE` so that
# those can never become an index condition or match a partial index: the rows must be
# fetched by primary key. Otherwise, with stale statistics, the planner walks a whole
# queue through kyu_jobs_created_idx, or every entry of kyu_jobs_running_idx, which holds
# one dead entry per job that ever ran until VACUUM clears them (measured: a 384-row
# completion took 450 ms that way, against 5 ms by primary key).
CLAIM_JOBS = f"""
UPDATE kyu_jobs
SET status = 'running', locked_by = %(worker)s, locked_at = %(now)s, heartbeat_at = %(now)s,
    attempt = attempt + 1, updated_at = %(now)s
WHERE id = ANY(%(ids)s::uuid[]) AND (queue = %(queue)s) IS TRUE
  AND status IN ('pending', 'scheduled', 'failed')
  AND (status = 'pending' OR scheduled_at <= %(now)s) IS TRUE
  AND NOT EXISTS (SELECT 1 FROM kyu_queues WHERE queue = %(queue)s AND paused)
  -- Uncorrelated (evaluated once per statement, not once per row): the limited types.
  AND job_type <> ALL(ARRAY(SELECT job_type FROM kyu_limits WHERE queue = %(queue)s))
RETURNING {CLAIMED_COLUMNS}
"""

# What a claim whose answer was lost took: its rows are running under our worker id.
CLAIMED_BY = f"""
SELECT {JOB_COLUMNS} FROM kyu_jobs
WHERE id = ANY(%(ids)s::uuid[])
  AND (queue = %(queue)s AND status = 'running' AND locked_by = %(worker)s) IS TRUE
"""

# The hot path: used whenever every handler of the batch returned None.
COMPLETE_JOBS = """
UPDATE kyu_jobs AS j
SET status = 'completed', completed_at = %(now)s, updated_at = %(now)s
FROM unnest(%(ids)s::uuid[], %(attempts)s::int[]) AS t(id, attempt)
WHERE j.id = t.id AND j.attempt = t.attempt AND (j.status = 'running') IS TRUE
  AND j.locked_by = %(worker)s
RETURNING j.id::text
"""

# The same with results: ``results`` is a jsonb[] array literal, NULL where None.
COMPLETE_JOBS_WITH_RESULTS = """
UPDATE kyu_jobs AS j
SET status = 'completed', completed_at = %(now)s, updated_at = %(now)s, result = t.result
FROM unnest(%(ids)s::uuid[], %(attempts)s::int[], %(results)s::jsonb[]) AS t(id, attempt, result)
WHERE j.id = t.id AND j.attempt = t.attempt AND (j.status = 'running') IS TRUE
  AND j.locked_by = %(worker)s
RETURNING j.id::text
"""

# Writes a run into the history of the jobs a CTE named ``ended`` returns (id, attempt,
# locked_by, locked_at, outcome, message, traceback), and drops runs older than the last
# ``keep``, in the statement that ended the run: one round trip, and no history without
# its transition. A conflict cannot happen (each attempt ends once, fenced by its lease);
# DO NOTHING keeps a surprise from failing the transition itself.
_RECORD_ATTEMPTS = """
recorded AS (
    INSERT INTO kyu_attempts
        (job_id, attempt, worker_id, started_at, finished_at, outcome, error, traceback)
    SELECT id, attempt, locked_by, locked_at, %(now)s, outcome, message, traceback FROM ended
    ON CONFLICT (job_id, attempt) DO NOTHING
),
trimmed AS (
    DELETE FROM kyu_attempts AS a USING ended AS e
    WHERE a.job_id = e.id AND a.attempt <= e.attempt - %(keep)s
)"""

FAIL_JOBS = f"""
WITH ended AS (
    UPDATE kyu_jobs AS j
    SET status = t.status,
        scheduled_at = coalesce(t.due, j.scheduled_at),
        retry_count = j.retry_count + CASE WHEN t.status = 'failed' THEN 1 ELSE 0 END,
        -- A snooze (back to 'scheduled') is no error: the job keeps its last one.
        error_message = CASE WHEN t.status = 'scheduled' THEN j.error_message
                             ELSE t.message END,
        updated_at = %(now)s
    FROM unnest(%(ids)s::uuid[], %(attempts)s::int[], %(statuses)s::text[],
                %(due)s::timestamptz[], %(messages)s::text[], %(outcomes)s::text[],
                %(tracebacks)s::text[])
         AS t(id, attempt, status, due, message, outcome, traceback)
    WHERE j.id = t.id AND j.attempt = t.attempt AND (j.status = 'running') IS TRUE
      AND j.locked_by = %(worker)s
    RETURNING j.id, j.attempt, j.locked_by, j.locked_at, t.outcome, t.message, t.traceback
), {_RECORD_ATTEMPTS}
SELECT id::text FROM ended
"""

REQUEUE_JOBS = f"""
WITH ended AS (
    UPDATE kyu_jobs AS j
    SET status = 'pending', scheduled_at = %(now)s, seq = nextval('kyu_jobs_seq'),
        updated_at = %(now)s
    FROM unnest(%(ids)s::uuid[], %(attempts)s::int[]) AS t(id, attempt)
    WHERE j.id = t.id AND j.attempt = t.attempt AND (j.status = 'running') IS TRUE
      AND j.locked_by = %(worker)s
    RETURNING j.id, j.attempt, j.locked_by, j.locked_at, j.priority, j.seq,
              'requeued'::text AS outcome, NULL::text AS message, NULL::text AS traceback
), {_RECORD_ATTEMPTS}
SELECT id::text, priority, seq FROM ended
"""

# SKIP LOCKED: a heartbeat never waits for a row another statement is writing (that row is
# being completed, failed or requeued, so it needs no heartbeat), and so it can never be
# one half of a deadlock with the completer.
#
# It returns the leases that are no longer held, with their row's status now (NULL: no
# row): cancelled, or rescued by the reaper. Read from the statement's snapshot, without
# locks, so a row being written right now (skipped above) still counts as held: a cancel
# not yet committed is found by the next heartbeat, if its notification does not come.
HEARTBEAT = """
WITH beating AS (
    SELECT j.id FROM kyu_jobs AS j
    JOIN unnest(%(ids)s::uuid[], %(attempts)s::int[]) AS t(id, attempt)
      ON j.id = t.id AND j.attempt = t.attempt
    WHERE (j.status = 'running') IS TRUE AND j.locked_by = %(worker)s
    FOR UPDATE OF j SKIP LOCKED
), beat AS (
    UPDATE kyu_jobs AS j
    SET heartbeat_at = %(now)s
    FROM beating
    WHERE j.id = beating.id
)
SELECT t.id::text, j.status
FROM unnest(%(ids)s::uuid[], %(attempts)s::int[]) AS t(id, attempt)
LEFT JOIN kyu_jobs AS j ON j.id = t.id
WHERE (j.status = 'running' AND j.attempt = t.attempt AND j.locked_by = %(worker)s)
      IS NOT TRUE
"""

# The inner SELECT walks kyu_jobs_due_idx in its order (scheduled_at, seq: migration 014),
# so a batch reads its rows without sorting the due ones; SKIP LOCKED lets two schedulers
# share the work.
# nextval() in the ordered subquery hands out sequence numbers in due order.
PROMOTE_DUE = """
WITH due AS (
    SELECT id, nextval('kyu_jobs_seq') AS new_seq FROM (
        SELECT id FROM kyu_jobs
        WHERE queue = %(queue)s AND status IN ('scheduled', 'failed') AND scheduled_at <= %(now)s
        ORDER BY scheduled_at, seq
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS picked
)
UPDATE kyu_jobs AS j
SET status = 'pending', seq = due.new_seq, updated_at = %(now)s
FROM due
WHERE j.id = due.id
RETURNING j.id::text, j.priority, j.seq
"""

# Only reads: the reaper decides each job's fate in Python and writes it with FAIL_JOBS,
# fenced by the job's own lease, as a worker's failure is written.
STALE_JOBS = f"""
SELECT {JOB_COLUMNS} FROM kyu_jobs
WHERE queue = %(queue)s AND status = 'running' AND heartbeat_at < %(stale_before)s
  AND locked_at + make_interval(secs => job_timeout) < %(now)s
ORDER BY heartbeat_at
LIMIT %(limit)s
"""

PENDING_AFTER = """
SELECT id::text, priority, seq FROM kyu_jobs
WHERE queue = %s AND status = 'pending' AND seq > %s
ORDER BY seq
LIMIT %s
"""

COUNT_BY_STATUS = "SELECT status, count(*) FROM kyu_jobs WHERE queue = %s GROUP BY status"

# Both branches walk a partial index: the oldest ready pending job, and the oldest due
# scheduled/failed job the scheduler has not promoted yet.
OLDEST_DUE = """
SELECT least(
    (SELECT scheduled_at FROM kyu_jobs WHERE queue = %(queue)s AND status = 'pending'
     ORDER BY seq LIMIT 1),
    (SELECT scheduled_at FROM kyu_jobs
     WHERE queue = %(queue)s AND status IN ('scheduled', 'failed') AND scheduled_at <= %(now)s
     ORDER BY scheduled_at LIMIT 1)
)
"""

# Dead or failed -> pending with a fresh start; returns what to push.
RETRY_JOBS = """
UPDATE kyu_jobs
SET status = 'pending', retry_count = 0, scheduled_at = %(now)s,
    seq = nextval('kyu_jobs_seq'), updated_at = %(now)s
WHERE id = ANY(%(ids)s::uuid[]) AND (status IN ('dead', 'failed')) IS TRUE
RETURNING id::text, priority, seq, queue
"""

RETRY_ALL_DEAD = """
WITH picked AS (
    SELECT id FROM kyu_jobs WHERE queue = %(queue)s AND status = 'dead'
    ORDER BY updated_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
UPDATE kyu_jobs AS j
SET status = 'pending', retry_count = 0, scheduled_at = %(now)s,
    seq = nextval('kyu_jobs_seq'), updated_at = %(now)s
FROM picked WHERE j.id = picked.id
RETURNING j.id::text, j.priority, j.seq, j.queue
"""

LIST_JOBS = f"""
SELECT {JOB_COLUMNS} FROM kyu_jobs
WHERE queue = %(queue)s
  AND (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(job_type)s::text IS NULL OR job_type = %(job_type)s::text)
ORDER BY created_at DESC
LIMIT %(limit)s
"""

COMPLETED_SINCE = """
SELECT count(*) FROM kyu_jobs
WHERE queue = %s AND status = 'completed' AND completed_at >= %s
"""

# ``id = ANY(ARRAY(...))``, not a CTE joined to the DELETE: a generic plan may hash-join
# such a CTE over a scan of the whole table; this is primary-key lookups in every plan.
PURGE = """
DELETE FROM kyu_jobs
WHERE id = ANY(ARRAY(
    SELECT id FROM kyu_jobs
    WHERE queue = %(queue)s AND status = ANY(%(statuses)s::text[]) AND updated_at < %(before)s
    LIMIT %(limit)s FOR UPDATE SKIP LOCKED
))
"""

PENDING_AMONG = """
SELECT id::text, priority, seq FROM kyu_jobs
WHERE id = ANY(%(ids)s::uuid[]) AND (status = 'pending' AND queue = %(queue)s) IS TRUE
"""

# ---- the maintenance leader's lease (migration 006) ----

# Takes a free or expired lease, or renews the holder's own; returns nothing when another
# holder's lease runs. The conflict row is locked for the update, so of two processes
# racing for an expired lease the second sees the first's fresh one and gets nothing.
LEAD = """
INSERT INTO kyu_leaders AS l (queue, holder, term, expires_at)
VALUES (%(queue)s, %(holder)s, 1, %(until)s)
ON CONFLICT (queue) DO UPDATE
SET holder = EXCLUDED.holder,
    term = l.term + (l.holder <> EXCLUDED.holder)::int,
    expires_at = EXCLUDED.expires_at
WHERE l.holder = EXCLUDED.holder OR l.expires_at <= %(now)s
RETURNING holder, term
"""

# Expire rather than delete: the term must keep growing across holders.
RESIGN = """
UPDATE kyu_leaders SET expires_at = '-infinity'
WHERE queue = %(queue)s AND holder = %(holder)s AND term = %(term)s
"""

LEADER = "SELECT holder, term, expires_at FROM kyu_leaders WHERE queue = %(queue)s"

# ---- retention: the pruner's batches (migration 007) ----

# One batch of a queue's finished jobs of one status, older than its retention, oldest
# first: found through that status's partial index (the status is a literal so that the
# index matches in a prepared statement's generic plan too), deleted with their
# kyu_attempts rows (ON DELETE CASCADE, migration 003). The rows are picked in an
# ARRAY(sub-select), not a CTE joined to the DELETE: with psycopg's prepared statements
# PostgreSQL may switch to a generic plan, which joined such a CTE by hashing a
# sequential scan of the whole table (measured: 200 ms for 2,000 rows of 520,000, and
# growing with the table), while ``id = ANY(...)`` is always primary-key lookups. SKIP
# LOCKED: a row another statement is writing (a dead job being retried) is left for a
# later pass, never waited for.
_PRUNE = """
DELETE FROM kyu_jobs
WHERE id = ANY(ARRAY(
    SELECT id FROM kyu_jobs
    WHERE queue = %(queue)s AND status = '{status}' AND {column} < %(before)s
    ORDER BY {column}
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
))
"""

#: By final status: what its age is counted from, and the index that finds it
#: (kyu_jobs_completed_idx, kyu_jobs_cancelled_idx, kyu_jobs_dead_idx).
PRUNE = {
    "completed": _PRUNE.format(status="completed", column="completed_at"),
    "cancelled": _PRUNE.format(status="cancelled", column="updated_at"),
    "dead": _PRUNE.format(status="dead", column="updated_at"),
}

# ---- cron: periodic jobs (migration 008) ----

# What a fenced write checks, in its own statement: the lease it acts under is still the
# queue's (kyu_leaders, migration 006).
_FENCED = """EXISTS (
    SELECT 1 FROM kyu_leaders
    WHERE queue = %(queue)s AND holder = %(holder)s AND term = %(term)s
)"""

# The leader records the entries it registers: new ones start at their latest tick
# before now (``initial``), changed ones keep their last tick, and those it no longer
# registers are marked so (and never fire). Fenced: returns whether the lease held.
SYNC_CRON = f"""
WITH given AS (
    SELECT * FROM unnest(%(names)s::text[], %(schedules)s::text[], %(timezones)s::text[],
                         %(job_types)s::text[], %(payloads)s::text[], %(priorities)s::int[],
                         %(max_retries)s::int[], %(job_timeouts)s::float8[],
                         %(missed)s::text[], %(initial)s::timestamptz[])
        AS g(name, schedule, timezone, job_type, payload, priority, max_retries,
             job_timeout, missed, initial)
    WHERE {_FENCED}
), upserted AS (
    INSERT INTO kyu_cron AS c (queue, name, schedule, timezone, job_type, payload, priority,
                               max_retries, job_timeout, missed, last_tick, registered,
                               created_at, updated_at)
    SELECT %(queue)s, name, schedule, timezone, job_type, payload, priority, max_retries,
           job_timeout, missed, initial, true, %(now)s, %(now)s
    FROM given
    ON CONFLICT (queue, name) DO UPDATE
    SET schedule = EXCLUDED.schedule, timezone = EXCLUDED.timezone,
        job_type = EXCLUDED.job_type, payload = EXCLUDED.payload,
        priority = EXCLUDED.priority, max_retries = EXCLUDED.max_retries,
        job_timeout = EXCLUDED.job_timeout, missed = EXCLUDED.missed,
        registered = true, updated_at = EXCLUDED.updated_at
    WHERE (c.schedule, c.timezone, c.job_type, c.payload, c.priority, c.max_retries,
           c.job_timeout, c.missed, c.registered)
          IS DISTINCT FROM
          (EXCLUDED.schedule, EXCLUDED.timezone, EXCLUDED.job_type, EXCLUDED.payload,
           EXCLUDED.priority, EXCLUDED.max_retries, EXCLUDED.job_timeout, EXCLUDED.missed,
           true)
), unregistered AS (
    UPDATE kyu_cron SET registered = false, updated_at = %(now)s
    WHERE queue = %(queue)s AND registered AND name <> ALL(%(names)s::text[]) AND {_FENCED}
)
SELECT {_FENCED}
"""

# Fires one tick: advances last_tick from the value the leader read to the tick, under
# its lease, and inserts the tick's job (the columns and parameters of INSERT_ONE) only
# if that update matched. One statement: two leaders, a restart or a repeated statement
# can never write a tick twice. Returns the job's seq; no row when nothing was written.
FIRE_CRON = f"""
WITH advanced AS (
    UPDATE kyu_cron SET last_tick = %(tick)s, updated_at = %(now)s
    WHERE queue = %(queue)s AND name = %(name)s
      AND last_tick IS NOT DISTINCT FROM %(expected)s::timestamptz
      AND {_FENCED}
    RETURNING name
)
INSERT INTO kyu_jobs (id, queue, job_type, payload, status, priority, scheduled_at,
                      max_retries, job_timeout, created_at, updated_at, needs_push)
SELECT %(id)s, %(queue)s, %(job_type)s, %(payload)s, %(status)s, %(priority)s,
       %(scheduled_at)s, %(max_retries)s, %(job_timeout)s, %(now)s, %(now)s,
       %(needs_push)s
FROM advanced
RETURNING seq
"""

# A missed tick under missed='skip': advanced as FIRE_CRON does, without a job.
SKIP_CRON = f"""
UPDATE kyu_cron SET last_tick = %(tick)s, updated_at = %(now)s
WHERE queue = %(queue)s AND name = %(name)s
  AND last_tick IS NOT DISTINCT FROM %(expected)s::timestamptz
  AND {_FENCED}
"""

CRON_STATES = """
SELECT queue, name, schedule, timezone, job_type, payload, priority, max_retries,
       job_timeout, missed, last_tick, registered, updated_at
FROM kyu_cron WHERE queue = %(queue)s
ORDER BY name
"""

# A job of entry ``name`` now, by hand (`run_cron_now`): the entry's job type, payload,
# priority, max_retries and job_timeout as recorded (NULL: the caller's default), pending
# and due now. last_tick is not touched, so the schedule goes on as before, and no lease
# is needed. No row back when the queue has no such entry.
RUN_CRON_NOW = """
INSERT INTO kyu_jobs (id, queue, job_type, payload, status, priority, scheduled_at,
                      max_retries, job_timeout, created_at, updated_at, needs_push)
SELECT %(id)s, queue, job_type, payload, 'pending', priority, %(now)s, max_retries,
       coalesce(job_timeout, %(default_job_timeout)s), %(now)s, %(now)s, false
FROM kyu_cron WHERE queue = %(queue)s AND name = %(name)s
RETURNING id::text, priority, seq
"""

# ---- pausing a queue, and limits per job type (migration 009) ----

SET_PAUSED = """
INSERT INTO kyu_queues (queue, paused, updated_at) VALUES (%(queue)s, %(paused)s, %(now)s)
ON CONFLICT (queue) DO UPDATE SET paused = EXCLUDED.paused, updated_at = EXCLUDED.updated_at
RETURNING paused
"""

IS_PAUSED = "SELECT coalesce((SELECT paused FROM kyu_queues WHERE queue = %(queue)s), false)"

# Which of the ids a claim did not take are ready, and why they were held back: the queue
# is paused, or their type is limited (they go through LIMITED_CLAIM).
HELD_AMONG = """
SELECT coalesce((SELECT paused FROM kyu_queues WHERE queue = %(queue)s), false),
       j.id::text, j.job_type, l.job_type IS NOT NULL
FROM kyu_jobs j
LEFT JOIN kyu_limits l ON l.queue = j.queue AND l.job_type = j.job_type
WHERE j.id = ANY(%(ids)s::uuid[]) AND (j.queue = %(queue)s) IS TRUE
  AND j.status IN ('pending', 'scheduled', 'failed')
  AND (j.status = 'pending' OR j.scheduled_at <= %(now)s) IS TRUE
"""

SET_LIMIT = """
INSERT INTO kyu_limits (queue, job_type, concurrency, rate_count, rate_per, updated_at)
VALUES (%(queue)s, %(job_type)s, %(concurrency)s, %(rate_count)s, %(rate_per)s, %(now)s)
ON CONFLICT (queue, job_type) DO UPDATE
SET concurrency = EXCLUDED.concurrency, rate_count = EXCLUDED.rate_count,
    rate_per = EXCLUDED.rate_per, updated_at = EXCLUDED.updated_at
"""

CLEAR_LIMITS = """
DELETE FROM kyu_limits WHERE queue = %(queue)s AND job_type = ANY(%(job_types)s::text[])
"""

# Whether CLEAR_LIMITS has anything to do: a worker without limits then writes nothing at
# start (and starts on a read-only server, as it did before limits existed).
LIMITED_AMONG = """
SELECT job_type FROM kyu_limits WHERE queue = %(queue)s AND job_type = ANY(%(job_types)s::text[])
"""

# The first statement of a limited claim's transaction: from here until COMMIT, no other
# limited claim of the type runs, and the next statement's snapshot (taken after this
# lock was granted) sees every claim committed before.
LOCK_LIMIT = """
SELECT 1 FROM kyu_limits WHERE queue = %(queue)s AND job_type = %(job_type)s FOR UPDATE
"""

# The claim of ready jobs of one limited type among ids: as many as the limits allow now
# (concurrency minus the type's running jobs; rate_count minus the starts of the last
# rate_per seconds), highest priority first, then oldest; the starts are recorded. Also
# returns, as a row with a NULL id, when the rate limit next lets a start through.
LIMITED_CLAIM = f"""
WITH clock AS (
    -- Never before the last recorded start: a claim that read the time, then waited for
    -- the row lock behind a later one, counts its window from the later start, so the
    -- recorded starts stay in order and no window ever holds more than rate_count.
    -- The time read before the lock, plus how long the lock took (measured by the
    -- server's clock, so clock skew cancels out): when the claim really happens.
    SELECT greatest(
        %(now)s::timestamptz + (clock_timestamp() - transaction_timestamp()),
        (SELECT max(s) FROM unnest(starts) AS s)
    ) AS now
    FROM kyu_limits WHERE queue = %(queue)s AND job_type = %(job_type)s
), lim AS (
    SELECT concurrency, rate_count, rate_per, clock.now,
           ARRAY(SELECT s FROM unnest(starts) AS s
                 WHERE s > clock.now - rate_per * interval '1 second' ORDER BY s) AS recent
    FROM kyu_limits, clock WHERE queue = %(queue)s AND job_type = %(job_type)s
), room AS (
    SELECT greatest(least(
        coalesce(lim.concurrency - (
            SELECT count(*) FROM kyu_jobs
            WHERE queue = %(queue)s AND status = 'running' AND job_type = %(job_type)s
        ), 2147483647),
        coalesce(lim.rate_count - cardinality(lim.recent), 2147483647)
    ), 0) AS n
    FROM lim
), pick AS (
    SELECT id FROM kyu_jobs
    WHERE id = ANY(%(ids)s::uuid[]) AND (queue = %(queue)s) IS TRUE
      AND job_type = %(job_type)s
      AND status IN ('pending', 'scheduled', 'failed')
      AND (status = 'pending' OR scheduled_at <= %(now)s) IS TRUE
      AND NOT EXISTS (SELECT 1 FROM kyu_queues WHERE queue = %(queue)s AND paused)
    ORDER BY priority DESC, seq
    LIMIT (SELECT n FROM room)
    FOR UPDATE SKIP LOCKED
), claimed AS (
    -- locked_at is the start the window counts: the same time as in kyu_limits.starts.
    UPDATE kyu_jobs
    SET status = 'running', locked_by = %(worker)s,
        locked_at = coalesce((SELECT now FROM clock), %(now)s),
        heartbeat_at = %(now)s, attempt = attempt + 1, updated_at = %(now)s
    WHERE id IN (SELECT id FROM pick)
    RETURNING {CLAIMED_COLUMNS}
), recorded AS (
    UPDATE kyu_limits
    SET starts = CASE WHEN kyu_limits.rate_count IS NULL THEN '{{}}'::timestamptz[] ELSE (
        SELECT coalesce(array_agg(s ORDER BY s), '{{}}') FROM (
            SELECT s FROM unnest(
                lim.recent
                || array_fill(lim.now, ARRAY[(SELECT count(*) FROM claimed)::int])
            ) AS s ORDER BY s DESC LIMIT kyu_limits.rate_count
        ) AS kept(s)) END
    FROM lim
    WHERE kyu_limits.queue = %(queue)s AND kyu_limits.job_type = %(job_type)s
    RETURNING CASE
        WHEN kyu_limits.rate_count IS NULL
          OR cardinality(kyu_limits.starts) < kyu_limits.rate_count THEN NULL
        ELSE kyu_limits.starts[1] + kyu_limits.rate_per * interval '1 second'
    END AS next_start
)
SELECT claimed.*, NULL::timestamptz FROM claimed
UNION ALL
SELECT {", ".join(["NULL"] * len(CLAIMED_COLUMNS.split(",")))}, next_start FROM recorded
"""

# ---- cancelling running jobs ----

#: The channel of the notification `CANCEL_JOBS` sends for a running job: "<id> <queue>".
CANCELLED_CHANNEL = "kyu_cancelled"
LISTEN_CANCELLED = "LISTEN kyu_cancelled"

# ---- progress of running jobs (issue 14, migration 010) ----

# The latest progress of a pool's jobs, in one statement. Fenced by each run's lease
# (attempt and locked_by), not by the status: the last value of a run may land just
# after its outcome, never over a later run (a new claim raises the attempt). SKIP
# LOCKED as in HEARTBEAT: it never waits for a row another statement is writing, so it
# is never half of a deadlock with the completer; the flusher tries a skipped row again.
SET_PROGRESS = """
WITH held AS (
    SELECT j.id, t.progress FROM kyu_jobs AS j
    JOIN unnest(%(ids)s::uuid[], %(attempts)s::int[], %(progress)s::jsonb[])
         AS t(id, attempt, progress)
      ON j.id = t.id AND j.attempt = t.attempt
    WHERE (j.locked_by = %(worker)s) IS TRUE
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE kyu_jobs AS j
SET progress = held.progress
FROM held
WHERE j.id = held.id
RETURNING j.id::text
"""

# ---- which processes serve a queue (migration 012) ----

# A serving process writes its own row at start and every leader_interval: one upsert.
RECORD_PROCESS = """
INSERT INTO kyu_processes AS p
    (queue, process_id, host, pid, workers, started_at, last_seen, expires_at)
VALUES (%(queue)s, %(process_id)s, %(host)s, %(pid)s, %(workers)s, %(started_at)s,
        %(last_seen)s, %(expires_at)s)
ON CONFLICT (queue, process_id) DO UPDATE
SET host = EXCLUDED.host, pid = EXCLUDED.pid, workers = EXCLUDED.workers,
    started_at = EXCLUDED.started_at, last_seen = EXCLUDED.last_seen,
    expires_at = EXCLUDED.expires_at
"""

REMOVE_PROCESS = """
DELETE FROM kyu_processes WHERE queue = %(queue)s AND process_id = %(process_id)s
"""

# The queue's live processes, oldest first, each with whether it holds the maintenance
# lease now (kyu_leaders.holder is the same worker id).
PROCESSES = """
SELECT p.process_id, p.host, p.pid, p.workers, p.started_at, p.last_seen,
       coalesce(l.expires_at > %(now)s, false)
FROM kyu_processes AS p
LEFT JOIN kyu_leaders AS l ON l.queue = p.queue AND l.holder = p.process_id
WHERE p.queue = %(queue)s AND p.expires_at > %(now)s
ORDER BY p.started_at, p.process_id
"""

# Rows of processes gone (expired) before ``before``: the leader's pruner.
PRUNE_PROCESSES = """
DELETE FROM kyu_processes WHERE queue = %(queue)s AND expires_at < %(before)s
"""
