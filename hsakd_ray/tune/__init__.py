"""Ray Tune glue: search-space YAML, schedulers and searchers, the trial driver, MLflow audit, results."""
