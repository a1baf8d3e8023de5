"""Governance: model cards and the provenance manifest."""
