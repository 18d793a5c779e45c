-- 0009_webhooks: webhook subscriptions, their deliveries and every attempt (issue 12, item 1).
--
-- A subscription reads the event log by global position after its own checkpoint
-- (tx_id, position), like a projection: the webhooks role turns each matching event into
-- one webhook_deliveries row and moves the checkpoint in the same transaction, so an event
-- is queued exactly once whatever crashes; the rows are then sent at least once, in seq
-- order per execution. The signing secret is kept as given: signing needs it (unlike an
-- API key, which only needs to be recognised); it is never listed nor logged.
CREATE TABLE webhook_subscriptions (
    webhook_id    uuid        PRIMARY KEY,
    namespace     text        NOT NULL,
    url           text        NOT NULL,
    secret        text        NOT NULL,
    description   text        NOT NULL DEFAULT '',
    event_types   text[]      NOT NULL DEFAULT '{}',
    statuses      text[]      NOT NULL DEFAULT '{}',
    workflows     text[]      NOT NULL DEFAULT '{}',
    enabled       boolean     NOT NULL DEFAULT true,
    -- Why the subscription was paused (by hand, or because it failed for too long).
    paused_reason text,
    -- The first failed attempt since the last success; NULL while deliveries succeed.
    failing_since timestamptz,
    tx_id         xid8        NOT NULL,
    position      bigint      NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_subscriptions_namespace ON webhook_subscriptions (namespace, created_at);

-- One row per (subscription, event): delivery_id is derived from both, so receivers can
-- deduplicate and a re-read of the log inserts nothing twice.
CREATE TABLE webhook_deliveries (
    webhook_id      uuid        NOT NULL REFERENCES webhook_subscriptions ON DELETE CASCADE,
    delivery_id     text        NOT NULL,
    execution_id    uuid        NOT NULL,
    seq             int         NOT NULL,
    event_type      text        NOT NULL,
    payload         text        NOT NULL,
    state           text        NOT NULL DEFAULT 'pending'
                                CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        int         NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- A sender holds the row until then; past it another process may send it again.
    leased_until    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- When the current round of attempts began (created_at, or a replay): the retry
    -- horizon counts from here.
    first_attempt_at timestamptz,
    finished_at     timestamptz,
    PRIMARY KEY (webhook_id, delivery_id)
);
-- What is due, and the head of each execution's queue.
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (webhook_id, execution_id, seq)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_listing ON webhook_deliveries (webhook_id, created_at DESC);

CREATE TABLE webhook_attempts (
    webhook_id     uuid        NOT NULL,
    delivery_id    text        NOT NULL,
    attempt        int         NOT NULL,
    at             timestamptz NOT NULL,
    status_code    int,
    latency_ms     double precision NOT NULL,
    error          text,
    response_excerpt text      NOT NULL DEFAULT '',
    PRIMARY KEY (webhook_id, delivery_id, attempt),
    FOREIGN KEY (webhook_id, delivery_id) REFERENCES webhook_deliveries ON DELETE CASCADE
);
