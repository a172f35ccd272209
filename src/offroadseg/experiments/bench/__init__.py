"""offroadseg.experiments.bench."""
