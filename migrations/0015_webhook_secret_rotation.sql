-- 0015_webhook_secret_rotation: a subscription's previous signing secret, kept after a
-- rotation so deliveries carry both signatures until previous_secret_until (Standard
-- Webhooks allows several space-delimited signatures). Rotating again moves the secret
-- being replaced here, dropping the older one. Past previous_secret_until it signs
-- nothing (the statements compare with now()); the next rotation overwrites it.
ALTER TABLE webhook_subscriptions
    ADD COLUMN previous_secret       text,
    ADD COLUMN previous_secret_until timestamptz;
