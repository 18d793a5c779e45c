-- A workflow version's type, as Step Functions' state machine type: STANDARD or EXPRESS.
-- The context object of its executions differs ($$.Execution.Id is an express: ARN,
-- no RedriveCount). Versions registered before this migration are STANDARD.
ALTER TABLE workflow_versions
    ADD COLUMN type text NOT NULL DEFAULT 'STANDARD'
    CHECK (type IN ('STANDARD', 'EXPRESS'));
