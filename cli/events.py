"""``conductor events``: every transition as a line, from etcd's watches, resumable by revision."""
from __future__ import annotations

import json as jsonlib
import os
import sys
from typing import Annotated, Any, Optional

import typer

from .common import Etcd, Namespace, User, _client, app


def _started(revision: int) -> None:
    # on stderr, so a tool reading stdout gets only records; a person sees where a resume starts
    sys.stderr.write(f"following transitions from etcd revision {revision} (each line's rev + 1 resumes)\n")
    sys.stderr.flush()


@app.command()
def events(ids: Annotated[Optional[list[str]], typer.Argument(
               metavar="[ID...]", help="Only these jobs, layers or tasks (ids as show takes them).")] = None,
           since: Annotated[Optional[int], typer.Option(
               help="Replay from this etcd revision (each line has its rev: resume with the last rev + 1). "
                    "Default: from now on.")] = None,
           all_users: Annotated[bool, typer.Option("--all-users", help="Every user's jobs, not only yours.")] = False,
           json: Annotated[bool, typer.Option("--json", help="One JSON object per line, for other tools.")] = False,
           etcd: Etcd = None, namespace: Namespace = None, user: User = None) -> None:
    """Print every transition (jobs, layers, tasks, nodes, fires) as one line each, until stopped."""
    if since is not None and since < 1:
        from conductor.errors import InvalidSpec

        raise InvalidSpec("--since", f"{since} is not a revision (revisions start at 1)")

    def deliver(records: list[dict[str, Any]]) -> None:
        from conductor.events import line

        # one write per revision, so a reader stopped mid-way never holds half of a revision
        text = "".join((jsonlib.dumps(r, sort_keys=True) if json else line(r)) + "\n" for r in records)
        sys.stdout.write(text)
        sys.stdout.flush()

    with _client(etcd, namespace, user) as client:
        try:
            client.events(deliver, since=since, ids=ids or (), all_users=all_users, started=_started)
        except BrokenPipeError:  # the reader (head, a tool) went away: done, quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
