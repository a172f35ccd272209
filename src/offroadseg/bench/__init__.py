"""offroadseg.bench."""
