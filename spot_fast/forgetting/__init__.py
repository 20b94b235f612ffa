"""Forgetting analyses (two-mode mixture lab: mixture.py)."""
