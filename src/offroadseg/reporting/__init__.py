"""offroadseg.reporting."""
