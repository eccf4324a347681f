"""MLflow: a search's runs and the Tune callback that logs them, read-back of searches, and the model registry."""
