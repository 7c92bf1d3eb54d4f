"""Pure orchestration of a run: gates and expressions, aggregation, coalesce, tokens (no I/O)."""
