"""The long-running roles: the engine loop, relay, timers, worker and recovery."""
