"""The options every etcd command takes to reach a secured etcd, as etcdctl's: ``--cacert``,
``--cert``, ``--key``, ``--user NAME[:PASSWORD]``, ``--password-file`` (and ``CONDUCTOR_*``).

They are added to every command that has an ``--etcd`` option by :func:`secure_all`, once all
commands are registered, rather than written into each signature: one definition, and no command
can forget them. The values of the command being run are kept in :data:`_GIVEN` (one command runs
per process) for :func:`credentials`.
"""
from __future__ import annotations

import functools
import getpass
import inspect
import sys
from typing import Annotated, Any, Callable, Optional

import typer

from conductor.credentials import Credentials

_OPTIONS: dict[str, Any] = {
    "cacert": Annotated[Optional[str], typer.Option(
        "--cacert", envvar="CONDUCTOR_CACERT", show_envvar=True, rich_help_panel="etcd security",
        help="CA bundle (PEM) that signed etcd's certificate; means TLS. https:// endpoints use TLS "
             "with the system roots without it.")],
    "cert": Annotated[Optional[str], typer.Option(
        "--cert", envvar="CONDUCTOR_CERT", show_envvar=True, rich_help_panel="etcd security",
        help="Client certificate (PEM) for an etcd with --client-cert-auth; with --key.")],
    "key": Annotated[Optional[str], typer.Option(
        "--key", envvar="CONDUCTOR_KEY", show_envvar=True, rich_help_panel="etcd security",
        help="Private key (PEM) of --cert.")],
    "user": Annotated[Optional[str], typer.Option(
        "--user", envvar="CONDUCTOR_USER", show_envvar=True, rich_help_panel="etcd security",
        help="etcd user NAME[:PASSWORD] (the password is asked on a terminal when etcd wants one).")],
    "password_file": Annotated[Optional[str], typer.Option(
        "--password-file", envvar="CONDUCTOR_PASSWORD_FILE", show_envvar=True, rich_help_panel="etcd security",
        help="File whose first line is the etcd user's password (read again whenever etcd wants a new "
             "token). Also: CONDUCTOR_PASSWORD.")],
}
_GIVEN: dict[str, Any] = {}


def secure(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with the security options added (``--user`` only where it has none: there it keeps
    its meaning, whose jobs, and is also the etcd user)."""
    signature = inspect.signature(fn, eval_str=True)
    added = [name for name in _OPTIONS if name not in signature.parameters]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _GIVEN.clear()
        for name in _OPTIONS:
            _GIVEN[name] = kwargs.pop(name, None) if name in added else kwargs.get(name)
        return fn(*args, **kwargs)

    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=_OPTIONS[name])
             for name in added]
    params = list(signature.parameters.values())
    wrapper.__signature__ = signature.replace(parameters=[*params, *extra])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**{p.name: p.annotation for p in params}, **{n: _OPTIONS[n] for n in added}}
    return wrapper


def secure_all(app: typer.Typer) -> None:
    """Add the options to every command of ``app`` and its groups that takes ``--etcd``."""
    for command in app.registered_commands:
        if command.callback is not None and "etcd" in inspect.signature(command.callback).parameters:
            command.callback = secure(command.callback)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            secure_all(group.typer_instance)


def _prompt(user: str) -> str:
    return getpass.getpass(f"etcd password for {user}: ")


def credentials(user: str | None = None) -> Credentials:
    """The credentials of the command being run (options, else ``CONDUCTOR_*``); a password is
    asked on a terminal only if etcd wants one and none was given. Raises InvalidSpec for a file
    that cannot be read."""
    creds = Credentials.from_env(cacert=_GIVEN.get("cacert"), cert=_GIVEN.get("cert"), key=_GIVEN.get("key"),
                                 user=user or _GIVEN.get("user"), password_file=_GIVEN.get("password_file"))
    if sys.stdin.isatty():
        creds.prompt = _prompt
    return creds
