"""Data: formats and validation, bundled tasks, audit, licence policy, provenance."""
