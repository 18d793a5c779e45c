-- 0001_init: workflows, executions, the event log, timers, checkpoints, executions read model.
-- Applied once by steplog/migrate.py inside one transaction; never edit after release,
-- add a new NNNN_name.sql instead (the runner refuses changed checksums).
--
-- No foreign keys between executions and events or workflow_versions on purpose: the events
-- table is meant to be distributable by execution_id (e.g. Citus) and the store checks the
-- relations it needs itself.

CREATE TABLE workflows (
    namespace  text        NOT NULL DEFAULT 'default',
    name       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, name)
);

-- Each change of a definition is a new immutable version; executions pin one.
CREATE TABLE workflow_versions (
    namespace       text        NOT NULL DEFAULT 'default',
    name            text        NOT NULL,
    version         int         NOT NULL CHECK (version >= 1),
    definition      jsonb       NOT NULL,
    definition_hash text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, name, version)
);

CREATE TABLE executions (
    execution_id uuid        PRIMARY KEY,
    namespace    text        NOT NULL DEFAULT 'default',
    workflow     text        NOT NULL,
    version      int         NOT NULL,
    name         text        NOT NULL,
    input        jsonb       NOT NULL,
    input_hash   text        NOT NULL,
    started_at   timestamptz NOT NULL,
    -- The execution name is the idempotency key of a start (invariant 5).
    CONSTRAINT executions_name_key UNIQUE (namespace, workflow, name)
);

-- The event log: the source of truth. seq is contiguous per execution (the primary key makes
-- two appends at one seq collide); position is the global insertion order and tx_id the
-- inserting transaction, which together give the commit-safe global order read_all follows.
CREATE TABLE events (
    execution_id uuid        NOT NULL,
    seq          int         NOT NULL CHECK (seq >= 1),
    position     bigint      GENERATED ALWAYS AS IDENTITY,
    tx_id        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    type         text        NOT NULL,
    data         jsonb       NOT NULL,
    recorded_at  timestamptz NOT NULL,
    CONSTRAINT events_pkey PRIMARY KEY (execution_id, seq)
);
CREATE INDEX events_global_order ON events (tx_id, position);

-- Invariant 1: events are never updated or deleted; the database itself refuses it.
CREATE FUNCTION steplog_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'steplog: % on % is not allowed: rows are immutable', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'raise_exception';
END
$$;

CREATE TRIGGER events_immutable_rows BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION steplog_refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION steplog_refuse_change();
CREATE TRIGGER workflow_versions_immutable_rows BEFORE UPDATE ON workflow_versions
    FOR EACH ROW EXECUTE FUNCTION steplog_refuse_change();

-- Durable timers (Wait, retry back-off, timeouts): written in the same transaction as the
-- events that ask for them; the timer service scans by due_at.
CREATE TABLE timers (
    timer_id     text        PRIMARY KEY,
    execution_id uuid        NOT NULL,
    due_at       timestamptz NOT NULL
);
CREATE INDEX timers_due_at ON timers (due_at);

-- Where the relay has published up to, in read_all order.
CREATE TABLE relay_checkpoint (
    name       text        PRIMARY KEY,
    tx_id      xid8        NOT NULL,
    position   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Where each projection has applied up to; written in the same transaction as its rows.
CREATE TABLE projection_checkpoints (
    name       text        PRIMARY KEY,
    tx_id      xid8        NOT NULL,
    position   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Read model of executions (owned by projections/): a disposable view of the event log.
CREATE TABLE executions_view (
    execution_id uuid        PRIMARY KEY,
    namespace    text        NOT NULL DEFAULT 'default',
    workflow     text        NOT NULL,
    version      int         NOT NULL,
    name         text        NOT NULL,
    status       text        NOT NULL,
    input        jsonb,
    output       jsonb,
    error        text,
    cause        text,
    started_at   timestamptz NOT NULL,
    stopped_at   timestamptz,
    last_seq     int         NOT NULL DEFAULT 0
);
-- Listing pages newest first with execution_id as the tie breaker (keyset pagination).
CREATE INDEX executions_view_by_workflow_status
    ON executions_view (namespace, workflow, status, started_at DESC, execution_id);
CREATE INDEX executions_view_by_workflow
    ON executions_view (namespace, workflow, started_at DESC, execution_id);
CREATE INDEX executions_view_by_status
    ON executions_view (namespace, status, started_at DESC, execution_id);
