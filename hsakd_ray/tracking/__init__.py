"""MLflow glue: tracking URI checks, run lifecycle, per-epoch logging, artifacts and plots."""
