"""The web side of a node: the JSON HTTP API, the web UI, ``/metrics`` and ``/healthz``.

A thin layer over :class:`conductor.Client` (see docs/web.md); served by uvicorn from
``conductor serve`` or from the child process a ``conductor run --http`` node starts.
"""
