"""The metrics service: dashboards' figures computed from stored events."""
