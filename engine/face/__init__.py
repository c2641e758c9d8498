"""face: see docs/architecture.md."""
