"""asv benchmarks of dualnn (NumPy/SciPy style: classes with params, param_names, setup)."""
