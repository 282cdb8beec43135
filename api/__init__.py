"""The REST job service and dashboard."""
