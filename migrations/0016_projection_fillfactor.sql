-- 0016_projection_fillfactor: room on each page for a row's next version. A projection
-- rewrites an execution's row on every batch that holds its events (last_seq, and its
-- status once it ends). An update that changes no indexed column is a HOT update (no new
-- entry in any index) only when the row's page has room for the new version; with pages
-- filled to the brim (the default 100), half of executions_view's updates went into all
-- of its seven indexes (3-Task executions, PostgreSQL 15: 3,198 of 6,600 updates HOT;
-- at 70, 4,269, where 4,400 change no indexed column). Pages written from now on keep the
-- room; a rebuild (steplog projections rebuild) keeps these settings.
ALTER TABLE executions_view SET (fillfactor = 70);
ALTER TABLE state_stats_progress SET (fillfactor = 70);
