"""Pure logic with no I/O: version clock, per-domain coalescing, ownership rules."""
