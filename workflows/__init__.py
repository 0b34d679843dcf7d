"""Ray and MLflow entry points; each module runs as `python -m workflows.<name> --config FILE`."""
