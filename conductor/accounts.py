"""Accounts and etcd auth: ``conductor auth enable``, ``conductor user add|rm|list|passwd``.

Every change is made through etcd's own Auth service (so etcd enforces it) and recorded in
``accounts/<name>`` (so nodes and admins know every user, see :mod:`conductor.owners`). The roles
and their grants come from :mod:`conductor.roles`. All of it needs etcd's root role, except
``enable`` on an etcd whose auth is still off (anyone may then make the first accounts).

Not atomic as a whole (etcd's Auth calls are not part of transactions): each step is idempotent,
so a command cut short is run again to finish (a role or user that exists already is kept).
"""
from __future__ import annotations

import logging
import secrets as pysecrets
from typing import Any

from . import codec, model, roles, seal
from .errors import InvalidSpec, NotFound, Refused, StoreError
from .keys import Keys
from .ops import Delete

log = logging.getLogger("conductor.accounts")


def _exists_ok(call: Any) -> bool:
    """Run an Auth call; True if it did something, False if etcd says it exists already."""
    try:
        call()
        return True
    except StoreError as exc:
        if "already exists" in str(exc):
            return False
        raise


def _check_name(name: str) -> None:
    reason = roles.valid_name(name)
    if reason:
        raise InvalidSpec("name", f"{name!r} {reason}")


def _grant(store: Any, role: str, grants: list[roles.Grant]) -> None:
    _exists_ok(lambda: store.auth_call("RoleAdd", f"role add {role}", name=role))
    for g in grants:
        store.auth_call("RoleGrantPermission", f"grant {g.label} to {role}", name=role,
                        perm=(g.perm, g.key, g.range_end))


def _add_user(store: Any, name: str, password: str) -> bool:
    return _exists_ok(lambda: store.auth_call("UserAdd", f"user add {name}", name=name, password=password))


def _record(store: Any, keys: Keys, name: str, admin: bool, by: str) -> dict[str, Any]:
    value = {"user": name, "admin": admin, "at": model.now(), "by": by}
    store.put(keys.account(name), codec.pack(value))
    return value


def add_user(store: Any, keys: Keys, name: str, password: str, admin: bool = False, by: str = "") -> dict[str, Any]:
    """An etcd user with a role granting their prefixes (and root with ``admin``), and its
    account. Raises InvalidSpec (name, empty password), Refused (exists), PermissionDenied."""
    _check_name(name)
    if not password:
        raise InvalidSpec("password", "must not be empty")
    if store.get(keys.account(name)) is not None:
        raise Refused(f"user {name!r} exists already")
    _grant(store, roles.user_role(name), roles.user_grants(keys, name))
    _add_user(store, name, password)
    store.auth_call("UserGrantRole", f"grant role to {name}", user=name, role=roles.user_role(name))
    if admin:
        store.auth_call("UserGrantRole", f"grant root to {name}", user=name, role=roles.ROOT)
    log.info("user %s added%s by %s", name, " (admin)" if admin else "", by or "?")
    return _record(store, keys, name, admin, by)


def remove_user(store: Any, keys: Keys, name: str) -> None:
    """Remove the etcd user, its role and its account (its jobs stay until removed: ``gc``)."""
    if store.get(keys.account(name)) is None:
        raise NotFound(f"no user {name!r}")
    for call, what, fields in (("UserDelete", f"user delete {name}", {"name": name}),
                               ("RoleDelete", f"role delete {roles.user_role(name)}", {"role": roles.user_role(name)})):
        try:
            store.auth_call(call, what, **fields)
        except StoreError as exc:
            if "not found" not in str(exc):
                raise
    store.txn([], [Delete(keys.account(name))])
    log.info("user %s removed", name)


def list_users(store: Any, keys: Keys) -> list[dict[str, Any]]:
    """Every account, with ``admin``; raises PermissionDenied for a user who is not an admin."""
    return [codec.unpack(kv.value) for kv in store.iter_prefix(keys.account())]


def change_password(store: Any, name: str, password: str) -> None:
    if not password:
        raise InvalidSpec("password", "must not be empty")
    store.auth_call("UserChangePassword", f"password of {name}", name=name, password=password)


def enable(store: Any, keys: Keys, admin: str, admin_password: str, node_password: str) -> dict[str, Any]:
    """Make what an authenticated cluster needs, then turn etcd's auth on: the ``root`` user
    (etcd insists on one; its password is random and never shown: admins use their own
    accounts, which hold the root role), the admin's account, the node account ``conductor``
    with the ``conductor-node`` role, and the key pair secret inputs are sealed with. Run again it
    finishes what a run cut short did. Raises InvalidSpec, PermissionDenied."""
    _check_name(admin)
    if not admin_password or not node_password:
        raise InvalidSpec("password", "the admin's and the node account's passwords must not be empty")
    seal.ensure_pair(store, keys)
    _exists_ok(lambda: store.auth_call("RoleAdd", "role add root", name=roles.ROOT))
    _add_user(store, roles.ROOT, pysecrets.token_urlsafe(24))
    store.auth_call("UserGrantRole", "grant root to root", user=roles.ROOT, role=roles.ROOT)
    _grant(store, roles.NODE_ROLE, roles.node_grants(keys))
    _add_user(store, roles.NODE_USER, node_password)
    store.auth_call("UserGrantRole", "grant the node role", user=roles.NODE_USER, role=roles.NODE_ROLE)
    if store.get(keys.account(admin)) is None:
        add_user(store, keys, admin, admin_password, admin=True, by="auth enable")
    store.auth_call("AuthEnable", "auth enable")
    log.info("etcd auth enabled; admin %s, node account %s", admin, roles.NODE_USER)
    return {"admin": admin, "node_user": roles.NODE_USER, "namespace": keys.namespace}


def grant_namespace(store: Any, keys: Keys) -> None:
    """Grant the node role and every account's role this namespace too (one etcd, several
    namespaces: roles are etcd-wide, grants add up)."""
    _grant(store, roles.NODE_ROLE, roles.node_grants(keys))
    for account in list_users(store, keys):
        _grant(store, roles.user_role(account["user"]), roles.user_grants(keys, account["user"]))


def disable(store: Any) -> None:
    store.auth_call("AuthDisable", "auth disable")
    log.info("etcd auth disabled")


__all__ = ["add_user", "remove_user", "list_users", "change_password", "enable", "disable"]
