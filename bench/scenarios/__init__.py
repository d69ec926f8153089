"""The scenarios `bench/run` measures, one module each. Each module's `run(ctx)` returns a
JSON-able dict: what was measured, per peer, with the parameters it used. `common` holds the
peers (how to start each server), the load-tool wrappers and the /proc readers they share."""
