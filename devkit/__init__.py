"""Developer tooling that is not shipped with the processor: local services, demos, test helpers.

Nothing in `processor/` may import from here; tests, scripts and `make` targets do.
"""
