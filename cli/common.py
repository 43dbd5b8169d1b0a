"""What every command shares: the app, the options that reach etcd, and the client they make.

Commands live in main.py (run, post, show, nodes, check), control.py, automation.py and events.py;
each imports this, none imports another, so the command modules form no circle.
"""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from conductor import __version__
from conductor.errors import InvalidSpec

from . import security

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode="rich",
                  help="Conductor: a peer-to-peer workflow runner. Every machine runs [bold]conductor run[/]; "
                       "etcd is the only shared state.")

Etcd = Annotated[Optional[list[str]], typer.Option(
    "--etcd", envvar="CONDUCTOR_ETCD", show_envvar=True,
    help="etcd endpoint(s), host:port, comma-separated or repeated. Default: 127.0.0.1:2379.")]
Namespace = Annotated[Optional[str], typer.Option(
    "--namespace", envvar="CONDUCTOR_NAMESPACE", show_envvar=True,
    help="Key prefix of this cluster in etcd. Default: /conductor/.")]
User = Annotated[Optional[str], typer.Option(
    "--user", envvar="CONDUCTOR_USER", show_envvar=True,
    help="Whose jobs. Default: your login name. With a password (NAME:PASSWORD, --password-file, "
         "CONDUCTOR_PASSWORD, or asked on a terminal when etcd wants one) also the etcd user.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _client(etcd: list[str] | None, namespace: str | None, user: str | None = None) -> Any:
    from conductor.client import Client  # imports the etcd client: only when a command needs it
    from conductor.settings import default_data_dir, default_etcd

    creds = security.credentials(user)
    # on a machine of a laptop cluster, with no --etcd and no TLS options: its own member, with its
    # client certificate
    store = None if etcd or default_etcd() or creds.tls else _cluster_store(default_data_dir())
    return Client(etcd=_endpoints(etcd), namespace=namespace, user=creds.user or None, credentials=creds,
                  store=store)


def _cluster_store(data_dir: Any) -> Any:
    """A Store on the laptop cluster this machine belongs to, or None."""
    # imported here, not above: the cluster module brings cryptography, psutil and the join server,
    # which a command given --etcd never needs
    from conductor.cluster import local_store

    return local_store(data_dir)


def _endpoints(etcd: list[str] | None) -> list[str] | None:
    if not etcd:
        return None
    return [part.strip() for item in etcd for part in item.split(",") if part.strip()]


def parse_params(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidSpec("-p", f"{item!r} is not key=value")
        out[key] = value
    return out


def _version(value: bool) -> None:
    if value:
        print(f"conductor {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    pass
