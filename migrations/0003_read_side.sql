-- 0003_read_side: listing filters on executions_view and the state statistics read model.

-- Name-prefix filters compare in byte order (COLLATE "C"), so a prefix is an index range.
CREATE INDEX executions_view_by_name
    ON executions_view (namespace, name COLLATE "C");
-- Stop-time ranges ("what ended in the last hour").
CREATE INDEX executions_view_by_stopped
    ON executions_view (namespace, stopped_at)
    WHERE stopped_at IS NOT NULL;

-- Read model of state visits (owned by projections/stats.py): one row per state entry
-- (*StateEntered), closed by its *StateExited or by the failure or end of its branch.
-- Duration percentiles are computed over these rows within a requested window.
CREATE TABLE state_visits (
    execution_id    uuid        NOT NULL,
    entered_seq     int         NOT NULL,
    namespace       text        NOT NULL,
    workflow        text        NOT NULL,
    version         int         NOT NULL,
    frame           text        NOT NULL,
    state           text        NOT NULL,
    entered_at      timestamptz NOT NULL,
    ended_at        timestamptz,
    -- running | succeeded | failed | aborted
    outcome         text        NOT NULL DEFAULT 'running',
    failed_attempts int         NOT NULL DEFAULT 0,
    retries         int         NOT NULL DEFAULT 0,
    -- A failure was recorded and no retry followed it (yet).
    pending_failure boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (execution_id, entered_seq)
);
CREATE INDEX state_visits_by_workflow ON state_visits (namespace, workflow, entered_at);
CREATE INDEX state_visits_open ON state_visits (execution_id) WHERE outcome = 'running';

-- Per execution: what the state-stats projection knows of it and how far it has applied.
CREATE TABLE state_stats_progress (
    execution_id uuid PRIMARY KEY,
    namespace    text NOT NULL,
    workflow     text NOT NULL,
    version      int  NOT NULL,
    last_seq     int  NOT NULL
);
