"""The pure core: the compiled ASL model, events, triggers, state + evolve, decide and
data flow. No I/O, no clock, no global randomness (checked by `make lint`)."""
