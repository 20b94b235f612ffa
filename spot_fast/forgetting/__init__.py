"""Forgetting: signals measured during training (retain.py) and the two-mode mixture lab (mixture.py)."""
