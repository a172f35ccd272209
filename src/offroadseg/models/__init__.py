"""offroadseg.models."""
