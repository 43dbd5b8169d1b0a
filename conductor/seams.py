"""Narrow interfaces that modules below the board depend on instead of the board itself (the board
imports them, so they must not import it back)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .keys import Keys
    from .store import Store


class Stored(Protocol):
    """Anything that holds a store and the keys of one namespace (a Board, a Client's board)."""

    store: "Store"
    keys: "Keys"


class Poster(Stored, Protocol):
    """A Stored that can also post a validated job spec (conductor.board.Board)."""

    def post(self, spec: dict[str, Any], user: str, *, source: dict[str, Any] | None = None,
             job_id: str | None = None, node: str | None = None, secrets: dict[str, str] | None = None,
             meta: dict[str, Any] | None = None) -> str: ...
