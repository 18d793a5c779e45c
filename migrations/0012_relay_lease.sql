-- 0012_relay_lease: relay leadership is a lease in PostgreSQL, not a session lock.
--
-- The leader names itself in `leader` and keeps `lease_until` (PostgreSQL's clock) in
-- the future; another relay takes over only once the lease has expired (or was given
-- up). A dropped connection or a checkpoint write refused for a while (read-only after
-- a failover) no longer hands leadership to another relay at once, so a batch the leader
-- published but could not record is not republished every time leadership changes
-- (issue 14 item 2; docs/internals.md, "Relay"). Replaces the advisory lock.
ALTER TABLE relay_checkpoint ADD COLUMN leader text;
ALTER TABLE relay_checkpoint ADD COLUMN lease_until timestamptz;
