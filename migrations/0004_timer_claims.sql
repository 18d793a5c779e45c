-- 0004_timer_claims: fire each timer at most once per due time across processes.
--
-- A timer service claims due timers with FOR UPDATE SKIP LOCKED and a short lease
-- (claimed_until), adds their triggers to Redis, then records the due time it fired for
-- (fired_due). A timer is due again only when its due_at changes (a heartbeat moved it),
-- when the lease of a firer that died before recording expired, or when recovery from a
-- flushed Redis re-arms it (the trigger it sent was lost).
ALTER TABLE timers ADD COLUMN fired_due timestamptz;
ALTER TABLE timers ADD COLUMN claimed_until timestamptz;
