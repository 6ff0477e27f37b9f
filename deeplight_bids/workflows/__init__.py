"""Thin orchestrators: each a short list of stages calling the package that owns the work."""
