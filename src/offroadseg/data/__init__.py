"""offroadseg.data."""
