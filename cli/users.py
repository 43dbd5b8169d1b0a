"""``conductor user ...`` and ``conductor auth ...``: accounts kept apart by etcd's own auth.

Thin: every command is one call of :mod:`conductor.accounts` on the client's store. New
passwords are read from a file (``--new-password-file``), else asked twice on a terminal; never
taken on the command line, where ``ps`` would show them.
"""
from __future__ import annotations

import getpass
import os
import secrets
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from conductor.errors import InvalidSpec

from . import render
from .common import Etcd, Json, Namespace, _client, app

user_app = typer.Typer(no_args_is_help=True, help="Accounts (admins): add, remove, list, change passwords.")
auth_app = typer.Typer(no_args_is_help=True, help="Turn etcd's auth on (or off) for Conductor.")
app.add_typer(user_app, name="user")
app.add_typer(auth_app, name="auth")

NewPassword = Annotated[Optional[str], typer.Option(
    "--new-password-file", help="File whose first line is the new password. Default: asked twice on a terminal.")]


def _read_password(path: str | None, option: str, who: str) -> str:
    if path:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise InvalidSpec(option, f"cannot read {path!r}: {exc.strerror}") from None
        return lines[0] if lines else ""
    if not sys.stdin.isatty():
        raise InvalidSpec(option, f"give the password of {who} in a file (no terminal to ask on)")
    first = getpass.getpass(f"password for {who}: ")
    if getpass.getpass(f"again, password for {who}: ") != first:
        raise InvalidSpec(option, "the two passwords differ")
    return first


def _node_password(path: str) -> str:
    """The node account's password from ``path``; a new random one written there (mode 0600)
    when the file does not exist yet."""
    file = Path(path)
    if file.exists():
        return _read_password(path, "--node-password-file", "the node account")
    password = secrets.token_urlsafe(24)
    file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    return password


@user_app.command("add")
def user_add(name: Annotated[str, typer.Argument(help="The new user's name (also their etcd user).")],
             admin: Annotated[bool, typer.Option("--admin", help="Also an admin (etcd's root role).")] = False,
             new_password_file: NewPassword = None, etcd: Etcd = None, namespace: Namespace = None,
             json: Json = False) -> None:
    """Add a user: an etcd user whose role grants exactly their own keys."""
    from conductor import accounts

    password = _read_password(new_password_file, "--new-password-file", name)
    client = _client(etcd, namespace)
    value = accounts.add_user(client.store, client.keys, name, password, admin, by=client.user)
    render.print_json(value) if json else print(f"user {name} added" + (" (admin)" if admin else ""))


@user_app.command("rm")
def user_rm(name: Annotated[str, typer.Argument(help="The user to remove (their jobs stay until gc).")],
            etcd: Etcd = None, namespace: Namespace = None) -> None:
    """Remove a user: their etcd user, role and account."""
    from conductor import accounts

    client = _client(etcd, namespace)
    accounts.remove_user(client.store, client.keys, name)
    print(f"user {name} removed")


@user_app.command("list")
def user_list(etcd: Etcd = None, namespace: Namespace = None, json: Json = False) -> None:
    """Every account Conductor knows, admins marked."""
    from conductor import accounts

    client = _client(etcd, namespace)
    found = accounts.list_users(client.store, client.keys)
    if json:
        render.print_json(found)
        return
    for account in found:
        print(f"{account['user']}{'  admin' if account.get('admin') else ''}")
    if not found:
        print("no users")


@user_app.command("passwd")
def user_passwd(name: Annotated[str, typer.Argument(help="Whose password (an admin may change anyone's).")],
                new_password_file: NewPassword = None, etcd: Etcd = None, namespace: Namespace = None) -> None:
    """Change a user's password (etcd lets only admins do this)."""
    from conductor import accounts

    password = _read_password(new_password_file, "--new-password-file", name)
    client = _client(etcd, namespace)
    accounts.change_password(client.store, name, password)
    print(f"password of {name} changed")


@auth_app.command("enable")
def auth_enable(admin: Annotated[str, typer.Option("--admin", help="The first admin's user name.")],
                admin_password_file: Annotated[Optional[str], typer.Option(
                    "--admin-password-file", help="File with the admin's password. Default: asked twice.")] = None,
                node_password_file: Annotated[Optional[str], typer.Option(
                    "--node-password-file", help="File with the node account's password; made with a random one "
                                                 "when it does not exist. Default: <data dir>/node.password.")] = None,
                etcd: Etcd = None, namespace: Namespace = None, json: Json = False) -> None:
    """Create the roles, the admin's account and the node account `conductor`, then turn etcd's auth on."""
    from conductor import accounts, roles
    from conductor.settings import default_data_dir

    node_file = node_password_file or str(default_data_dir() / "node.password")
    reason = roles.valid_name(admin)
    if reason:  # before any file is made or read
        raise InvalidSpec("--admin", f"{admin!r} {reason}")
    admin_password = _read_password(admin_password_file, "--admin-password-file", admin)
    client = _client(etcd, namespace)
    done: dict[str, Any] = accounts.enable(client.store, client.keys, admin, admin_password, _node_password(node_file))
    done["node_password_file"] = node_file
    if json:
        render.print_json(done)
        return
    print(f"etcd auth is on. Admin: {admin}. Nodes run as `conductor` with the password in {node_file}:\n"
          f"  conductor run --user conductor --password-file {node_file}")


@auth_app.command("disable")
def auth_disable(etcd: Etcd = None, namespace: Namespace = None) -> None:
    """Turn etcd's auth off again (admins): everyone may then read and change everything."""
    from conductor import accounts

    client = _client(etcd, namespace)
    accounts.disable(client.store)
    print("etcd auth is off")


@auth_app.command("grant-namespace")
def auth_grant_namespace(etcd: Etcd = None, namespace: Namespace = None) -> None:
    """Grant the node account and every user this namespace too (one etcd, several namespaces)."""
    from conductor import accounts

    client = _client(etcd, namespace)
    accounts.grant_namespace(client.store, client.keys)
    print(f"roles granted namespace {client.keys.namespace}")
