-- 0007_namespace_limits: per-namespace rate limits and the RUNNING quota (issue 10, item 3).
--
-- namespace_rate_limits overrides the defaults of the settings (STEPLOG_RATE_LIMITS,
-- STEPLOG_KEY_RATE_LIMITS) for one namespace, budget (starts, writes, reads) and scope
-- (the namespace's shared bucket, or the bucket of each of its API keys). API processes
-- read them through a cache of a few seconds (engine/limits.py), so a change needs no
-- restart. namespace_quotas overrides STEPLOG_RUNNING_QUOTA (0 means no quota).
CREATE TABLE namespace_rate_limits (
    namespace  text             NOT NULL,
    budget     text             NOT NULL CHECK (budget IN ('starts', 'writes', 'reads')),
    scope      text             NOT NULL CHECK (scope IN ('namespace', 'key')),
    rate_per_s double precision NOT NULL CHECK (rate_per_s > 0 AND rate_per_s <= 1000000),
    burst      int              NOT NULL CHECK (burst >= 1 AND burst <= 10000000),
    updated_at timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, budget, scope)
);

CREATE TABLE namespace_quotas (
    namespace   text        PRIMARY KEY,
    running_max int         NOT NULL CHECK (running_max >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- How many executions of each namespace are RUNNING, kept by the database itself in the
-- transaction that appends ExecutionStarted (+1) or a terminal event (-1), so the count a
-- start checks is never behind the event log (unlike the executions_view read model,
-- which lags its projector). Spread over 16 shards per namespace (by execution id) so
-- concurrent starts and ends do not queue on one row lock; the count is the sum of at
-- most 16 rows read by primary key.
CREATE TABLE running_executions (
    namespace text     NOT NULL,
    shard     smallint NOT NULL,
    running   bigint   NOT NULL,
    PRIMARY KEY (namespace, shard)
);

CREATE FUNCTION steplog_count_running() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ns text;
BEGIN
    SELECT namespace INTO ns FROM executions WHERE execution_id = NEW.execution_id;
    IF ns IS NULL THEN
        ns := NEW.data->>'namespace';
    END IF;
    IF ns IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO running_executions (namespace, shard, running)
    VALUES (ns, abs(hashtext(NEW.execution_id::text)) % 16,
            CASE WHEN NEW.type = 'ExecutionStarted' THEN 1 ELSE -1 END)
    ON CONFLICT (namespace, shard)
    DO UPDATE SET running = running_executions.running + EXCLUDED.running;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_count_running AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.type IN ('ExecutionStarted', 'ExecutionSucceeded', 'ExecutionFailed',
                       'ExecutionTimedOut', 'ExecutionAborted'))
    EXECUTE FUNCTION steplog_count_running();

-- The executions already running when this migration runs (their last event not terminal).
INSERT INTO running_executions (namespace, shard, running)
SELECT x.namespace, abs(hashtext(x.execution_id::text)) % 16, count(*)
FROM executions x
CROSS JOIN LATERAL (
    SELECT type FROM events e WHERE e.execution_id = x.execution_id ORDER BY seq DESC LIMIT 1
) last
WHERE last.type NOT IN ('ExecutionSucceeded', 'ExecutionFailed', 'ExecutionTimedOut',
                        'ExecutionAborted')
GROUP BY 1, 2;
