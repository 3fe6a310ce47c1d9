"""Measurements: each metric is measured in its own child process (see caserun.py)."""
