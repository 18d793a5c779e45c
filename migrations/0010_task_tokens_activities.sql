-- Activities (issue 12, item 3): task queues for external workers, registered by name per
-- namespace like Step Functions' CreateActivity. A Task whose Resource is the activity's
-- ARN is handed to whichever worker polls POST /v1/activities/{name}/poll. Task tokens
-- need no table: a token is an HMAC under the execution's key, recorded in its
-- ExecutionStarted event (engine/core/tasktokens.py).
CREATE TABLE activities (
    namespace text NOT NULL,
    name text NOT NULL CHECK (name ~ '^[A-Za-z0-9_.\-]{1,80}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, name)
);
