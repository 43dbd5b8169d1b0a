"""Conductor's web UI and HTTP API, served from any node (``conductor serve``, ``conductor run --http``)."""
