"""The one place that talks to MLflow: runs, metrics, artifacts, models, the registry, and the figures logged."""
