"""The web UI's routes: a placeholder until the UI engineer's module replaces this file.

Contract (conductor.web.app): ``routes(ctx)`` returns a list of Starlette routes or mounts, given
the :class:`conductor.web.context.WebContext`.
"""
from __future__ import annotations

from typing import Any


def routes(ctx: Any) -> list[Any]:
    return []
