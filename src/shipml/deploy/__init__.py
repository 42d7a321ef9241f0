"""Deployment artefacts for a served model: monitoring dashboards and their provisioning."""
