-- 0006_keys_namespaces_audit: namespaces created by an admin, API keys, and the audit trail
-- of administrative actions (issue 10, items 1, 2, 5, 6).

-- A namespace exists once an admin created it; "default" always exists (rows written before
-- this migration, and the development server, live there).
CREATE TABLE namespaces (
    name       text        PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO namespaces (name) VALUES ('default');
INSERT INTO namespaces (name)
    SELECT DISTINCT namespace FROM workflows WHERE namespace <> 'default'
    ON CONFLICT DO NOTHING;

-- An API key is `slk_<key_id>_<secret>`: only the SHA-256 of the secret is stored, with the
-- first characters of the key (`prefix`) to recognise it in listings. A key of namespace
-- NULL is a global admin key.
CREATE TABLE api_keys (
    key_id       text        PRIMARY KEY,
    prefix       text        NOT NULL,
    secret_hash  bytea       NOT NULL,
    name         text        NOT NULL DEFAULT '',
    namespace    text        REFERENCES namespaces (name),
    role         text        NOT NULL CHECK (role IN ('reader', 'operator', 'admin')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz,
    CHECK (namespace IS NOT NULL OR role = 'admin')
);
CREATE INDEX api_keys_by_namespace ON api_keys (namespace, created_at);

-- Who did what, when, from where: append-only like the event log.
CREATE TABLE audit_log (
    id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    key_id    text,
    namespace text,
    action    text        NOT NULL,
    target    text        NOT NULL,
    remote    text,
    details   json        NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_by_namespace ON audit_log (namespace, id);
CREATE TRIGGER audit_log_immutable_rows BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION steplog_refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION steplog_refuse_change();
