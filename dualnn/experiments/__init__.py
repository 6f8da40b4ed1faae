"""Reproducible experiments built on dualnn (run as ``python -m dualnn.experiments.<name>``)."""
