"""The retraining pipeline: step functions (steps.py) and their runners (local.py; the
Airflow and Kubeflow exports wire the same steps)."""
