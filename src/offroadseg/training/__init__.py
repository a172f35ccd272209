"""offroadseg.training."""
