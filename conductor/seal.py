"""Secret inputs sealed so that only nodes can open them.

The cluster has one X25519 key pair. Its public half (``public/seal``) is readable by every user;
its private half (``cluster/seal``) only by the node account and admins (see
:mod:`conductor.roles`). A poster seals a job's secret inputs to the public key: an ephemeral
X25519 key agreement, HKDF-SHA256, then AES-256-GCM, with ``<user>/<job>`` as associated data so a
sealed value only opens for the job it was written for. The node that runs one of the job's tasks
opens it in memory at spawn time. etcd therefore never holds a secret in plain text, and a user
who can read their own ``users/<user>/secrets/<job>`` still cannot read what it holds.

All of it is :mod:`cryptography` (the kept library); nothing here is home-made cryptography, only
the choice of its parts. The key pair is made by ``conductor auth enable``, or by the first post
with a secret input on a cluster without etcd auth (a put-if-absent: concurrent posters agree).
"""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from . import codec
from .errors import ConductorError, PermissionDenied
from .keys import Keys
from .ops import Put, absent

# cryptography is imported by the functions that seal or open: every client imports this module (the
# board posts through it), and most commands, such as the CLI's show, never seal anything
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

SCHEME = "x25519-hkdf-sha256-aes256gcm"
_opened: dict[tuple[int, str], X25519PrivateKey] = {}  # (id of store, key) -> private key, read once


class SealError(ConductorError):
    """A sealed value cannot be opened (wrong key, altered, or written for another job)."""


def _derive(shared: bytes, context: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"conductor-seal " + context).derive(shared)


def make_pair() -> tuple[bytes, bytes]:
    """A new key pair as (public, private) raw bytes."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    private = X25519PrivateKey.generate()
    return _public_raw(private), _private_raw(private)


def _public_raw(private: X25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _private_raw(private: X25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    return private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def ensure_pair(store: Any, keys: Keys) -> bytes:
    """The cluster's public key, creating the pair if there is none yet (put-if-absent, so
    concurrent callers agree). Raises PermissionDenied for a user under etcd auth when none exists."""
    kv = store.get(keys.seal_public())
    if kv is not None:
        return codec.unpack(kv.value)["key"]
    public, private = make_pair()
    try:
        store.txn([absent(keys.seal_public())], [Put(keys.seal_public(), codec.pack({"key": public, "scheme": SCHEME})),
                                                 Put(keys.seal_private(), codec.pack({"key": private, "scheme": SCHEME}))])
    except PermissionDenied as exc:
        raise PermissionDenied(f"this cluster has no key to seal secret inputs with yet, and only an admin "
                               f"may make one (`conductor auth enable` does): {exc}") from None
    return codec.unpack(store.get(keys.seal_public()).value)["key"]


def seal(public: bytes, secrets: dict[str, str], context: str) -> dict[str, Any]:
    """``secrets`` sealed to ``public`` for ``context`` (``<user>/<job>``)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    ephemeral = X25519PrivateKey.generate()
    key = _derive(ephemeral.exchange(X25519PublicKey.from_public_bytes(public)), context.encode())
    nonce = os.urandom(12)
    data = AESGCM(key).encrypt(nonce, json.dumps(secrets).encode(), context.encode())
    return {"sealed": SCHEME, "epk": _public_raw(ephemeral), "nonce": nonce, "data": data,
            "names": sorted(secrets)}


def seal_inputs(store: Any, keys: Keys, secrets: dict[str, str], user: str, job_id: str) -> dict[str, Any]:
    return seal(ensure_pair(store, keys), secrets, f"{user}/{job_id}")


def open_sealed(private: bytes, value: dict[str, Any], context: str) -> dict[str, str]:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if value.get("sealed") != SCHEME:
        raise SealError(f"unknown sealing scheme {value.get('sealed')!r}")
    priv = X25519PrivateKey.from_private_bytes(private)
    key = _derive(priv.exchange(X25519PublicKey.from_public_bytes(value["epk"])), context.encode())
    try:
        return json.loads(AESGCM(key).decrypt(value["nonce"], value["data"], context.encode()))
    except InvalidTag:
        raise SealError(f"the sealed secrets of {context} do not open with this cluster's key "
                        "(altered, copied from another job, or sealed for another cluster)") from None


def open_inputs(store: Any, keys: Keys, value: dict[str, Any], user: str, job_id: str) -> dict[str, str]:
    """The plain secret inputs of a job, from the value of ``users/<user>/secrets/<job>``. Values
    written before sealing existed (a plain map) are returned as they are. Raises SealError,
    PermissionDenied (only the node account and admins can read the private key)."""
    if "sealed" not in value:
        return {k: v for k, v in value.items() if k != "v"}
    cache_key = (id(store), keys.seal_private())
    private = _opened.get(cache_key)
    if private is None:
        kv = store.get(keys.seal_private())
        if kv is None:
            raise SealError("this cluster's private seal key is missing (cluster/seal)")
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        private = X25519PrivateKey.from_private_bytes(codec.unpack(kv.value)["key"])
        _opened[cache_key] = private
    return open_sealed(_private_raw(private), value, f"{user}/{job_id}")
