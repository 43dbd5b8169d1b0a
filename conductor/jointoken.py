"""Join tokens of a laptop cluster: ``<id>.<secret>.<ca-sha256>@<host>:<port>``.

* ``id``: 6 hex digits naming the token's key in etcd (``cluster/tokens/<id>``).
* ``secret``: 32 hex digits (128 bits). Only its SHA-256 is stored, so reading etcd does not give
  a token away; the joiner proves the secret by sending it inside the TLS connection it pinned.
* ``ca-sha256``: the fingerprint of the cluster CA (:func:`conductor.pki.fingerprint`): the joiner
  trusts the join endpoint only if it presents a certificate of that CA.
* ``host:port``: the join endpoint of a machine of the cluster.

A token expires: its key is on a lease of its own granted for the token's lifetime, so etcd deletes
it by itself (and the expiry is also checked on the etcd leader's clock, through the lease TTL).
:func:`parse` raises :class:`conductor.errors.InvalidSpec` naming ``token``.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass

from .errors import InvalidSpec
from .keys import Keys
from .ops import Put
from .store import Store

DEFAULT_TTL = 24 * 3600.0
_FORMAT = re.compile(r"^([0-9a-f]{6})\.([0-9a-f]{32})\.([0-9a-f]{64})@(\[[0-9a-fA-F:.]+\]|[^:@\s]+):([0-9]{1,5})$")


@dataclass(frozen=True)
class Token:
    token_id: str
    secret: str
    ca_hash: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.token_id}.{self.secret}.{self.ca_hash}@{host}:{self.port}"


def new(ca_hash: str, host: str, port: int) -> Token:
    return Token(secrets.token_hex(3), secrets.token_hex(16), ca_hash, host, port)


def parse(text: str) -> Token:
    """A token from its text; InvalidSpec("token", why) when it is not one."""
    match = _FORMAT.match(text.strip())
    if not match:
        raise InvalidSpec("token", "not a join token: expected <id>.<secret>.<ca-sha256>@<host>:<port> "
                                   "(as printed by `conductor run --cluster` or `conductor token`)")
    token_id, secret, ca_hash, host, port = match.groups()
    if not 0 < int(port) < 65536:
        raise InvalidSpec("token", f"port {port} is out of range")
    return Token(token_id, secret, ca_hash, host.strip("[]"), int(port))


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def issue(store: Store, keys: Keys, token: Token, ttl: float = DEFAULT_TTL) -> None:
    """Record ``token`` in etcd for ``ttl`` seconds (a lease of its own: etcd deletes it on expiry).
    Raises StoreError/StoreUnavailable when etcd refuses."""
    lease = store.grant(max(1, int(ttl)))
    value = json.dumps({"hash": secret_hash(token.secret), "expires": time.time() + ttl}).encode()
    store.txn((), [Put(keys.cluster_token(token.token_id), value, lease)])


def verify(store: Store, keys: Keys, token_id: str, secret: str) -> bool:
    """Is ``secret`` the secret of live token ``token_id``? (constant-time comparison; an expired
    token's key is gone with its lease). Raises StoreUnavailable when etcd cannot say."""
    if not re.fullmatch(r"[0-9a-f]{6}", token_id or ""):
        return False
    kv = store.get(keys.cluster_token(token_id))
    if kv is None:
        return False
    try:
        stored = json.loads(kv.value)
    except ValueError:
        return False
    if float(stored.get("expires", 0)) < time.time() - 60:  # the lease is the real expiry; this is a backstop
        return False
    return hmac.compare_digest(str(stored.get("hash", "")), secret_hash(secret or ""))
