"""offroadseg.inference."""
