"""raysearch: Ray Tune searches of segmentation models for accuracy and latency measured on the device."""

import os

# MLflow draws a progress bar per artifact upload and download: one per run is noise in a search's console
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
