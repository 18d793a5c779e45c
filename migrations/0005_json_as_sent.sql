-- 0005_json_as_sent: JSON is kept as the client sent it (issue 9, item 5).
--
-- jsonb re-orders object keys (shorter keys first), drops duplicate keys and rewrites
-- numbers (1e308 becomes 309 digits, so 10,000 of them in a 70 KB input took 3.1 MB);
-- AWS keeps the order it was given, and States.JsonToString / States.Format / States.Hash
-- depend on it. The `json` type stores the text exactly as written (after checking that it
-- is JSON) and accepts every escape JSON allows, "\u0000" included, which jsonb refuses.
-- No query filters or indexes these columns, so nothing needs a derived jsonb column.
--
-- Existing rows are converted from jsonb: their original key order and number spelling
-- were lost when they were stored and cannot be recovered here. They are written in the
-- compact form new rows have (no whitespace, keys in jsonb's order), so readers see one
-- rendering without checking each row.
--
-- ALTER COLUMN ... TYPE rewrites the tables under an ACCESS EXCLUSIVE lock (take a
-- maintenance window for a large event log). It is not an UPDATE: the triggers that refuse
-- UPDATE and DELETE on events (and UPDATE on workflow_versions) do not fire and stay in
-- place (tests/integration/test_migrations.py checks both).

-- jsonb's text has a space after every ':' and ','; this writes the same value without.
CREATE FUNCTION steplog_compact_json(j jsonb) RETURNS json LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    out text;
BEGIN
    CASE jsonb_typeof(j)
    WHEN 'object' THEN
        SELECT '{' || coalesce(string_agg(to_json(e.key)::text || ':'
                                          || steplog_compact_json(e.value)::text, ','
                                          ORDER BY e.ord), '') || '}'
        INTO out FROM jsonb_each(j) WITH ORDINALITY AS e(key, value, ord);
    WHEN 'array' THEN
        SELECT '[' || coalesce(string_agg(steplog_compact_json(e.value)::text, ','
                                          ORDER BY e.ord), '') || ']'
        INTO out FROM jsonb_array_elements(j) WITH ORDINALITY AS e(value, ord);
    ELSE
        out := j::text;
    END CASE;
    RETURN out::json;
END
$$;

ALTER TABLE events ALTER COLUMN data TYPE json USING steplog_compact_json(data);
ALTER TABLE executions ALTER COLUMN input TYPE json USING steplog_compact_json(input);
ALTER TABLE workflow_versions
    ALTER COLUMN definition TYPE json USING steplog_compact_json(definition);

-- The read model keeps the same text as the log. An execution's error and cause can be any
-- string a state produced (an ErrorPath can pick one with a NUL character, which text
-- columns refuse), so they are stored as JSON strings too.
ALTER TABLE executions_view
    ALTER COLUMN input TYPE json USING steplog_compact_json(input),
    ALTER COLUMN output TYPE json USING steplog_compact_json(output),
    ALTER COLUMN error TYPE json USING to_json(error),
    ALTER COLUMN cause TYPE json USING to_json(cause);

DROP FUNCTION steplog_compact_json(jsonb);
