-- 0002_projections: the executions listing without a workflow or status filter
-- (GET /v1/executions) pages by (started_at DESC, execution_id) within a namespace;
-- 0001's indexes all lead with workflow or status.
CREATE INDEX executions_view_by_started
    ON executions_view (namespace, started_at DESC, execution_id);
