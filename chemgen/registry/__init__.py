"""Trained models in the MLflow model registry: `register` logs a lineage as a new version; the pyfunc modules
(`generator_pyfunc`, `elucidation_pyfunc`) are what a registered version runs when it is loaded."""
