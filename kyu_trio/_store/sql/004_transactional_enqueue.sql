-- kyu-trio schema, version 4: enqueue inside the caller's own transaction.

-- Set only by an enqueue through the caller's connection (`conn=`). Such an enqueue
-- cannot push to Redis itself (the row is not committed when it returns, and may never
-- be): the trigger below tells the serving workers instead, at the caller's COMMIT.
-- Every other enqueue leaves it false and pushes after its own commit, so the trigger
-- never fires for it (measured: the guarded trigger costs nothing then). The flag is
-- never cleared: it only matters when the row is inserted.
ALTER TABLE kyu_jobs ADD COLUMN needs_push boolean NOT NULL DEFAULT false;

-- One channel for every queue; the payload is "<id> <priority> <seq> <queue>" (the
-- queue last: a queue name may hold spaces), what a worker needs to push the job. A
-- notification is delivered only when the transaction commits, and never if it rolls
-- back.
CREATE FUNCTION kyu_notify_enqueued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kyu_enqueued',
                      NEW.id::text || ' ' || NEW.priority || ' ' || NEW.seq || ' ' || NEW.queue);
    RETURN NULL;
END
$$;

CREATE TRIGGER kyu_jobs_enqueued AFTER INSERT ON kyu_jobs
    FOR EACH ROW WHEN (NEW.needs_push) EXECUTE FUNCTION kyu_notify_enqueued();
