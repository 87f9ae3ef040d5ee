"""Pipelines: wiring of models and schedulers into a generation call (no file formats, no math)."""
