"""The adapters: PostgreSQL (store: all SQL) and Redis (bus: all keys). Each translates
its driver's errors into steplog's own (engine.errors) and nothing above names a driver."""
