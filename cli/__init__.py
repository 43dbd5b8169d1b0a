"""The conductor command line (installed as the conductor.cli package)."""
