"""graphs: see docs/architecture.md."""
