"""Operational helpers that prefect.yaml cannot express (demo, work-pool setup, local server)."""
