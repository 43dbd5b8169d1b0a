"""How to reach a secured etcd: TLS files and an etcd user, as etcdctl takes them.

A plain value (no network, no gRPC): the CLI fills it from options and ``CONDUCTOR_*`` variables,
:class:`conductor.store.Store` uses it, and the node hands it to its supervisor process as a dict
(:meth:`Credentials.config`). The password file is read again at every authentication, so a
changed password is picked up without a restart.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .errors import InvalidSpec

if TYPE_CHECKING:  # ssl and http.client are imported where used: the CLI's every command imports this module
    import ssl

PasswordPrompt = Callable[[str], str]  # asked with the user name; returns the password


@dataclass
class Credentials:
    """TLS files (PEM paths) and an etcd user. ``password_file`` wins over ``password``."""

    cacert: str = ""  # CA bundle that signed etcd's certificate; "" = the system roots
    cert: str = ""  # client certificate, for etcd's --client-cert-auth
    key: str = ""  # its private key
    user: str = ""  # etcd user name (etcd auth is used only with a password or a password file)
    password: str = ""
    password_file: str = ""
    server_name: str = ""  # check etcd's certificates for this name instead of the dialled host
    prompt: PasswordPrompt | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_env(cls, cacert: str | None = None, cert: str | None = None, key: str | None = None,
                 user: str | None = None, password_file: str | None = None) -> "Credentials":
        """Options given win over ``CONDUCTOR_CACERT``, ``_CERT``, ``_KEY``, ``_USER``,
        ``_PASSWORD`` and ``_PASSWORD_FILE``. ``user`` may be ``NAME:PASSWORD`` (as etcdctl's
        ``--user``). Raises InvalidSpec for a file that cannot be read or a key without a cert."""
        env = os.environ.get
        name, sep, password = (user or env("CONDUCTOR_USER") or "").partition(":")
        creds = cls(cacert=cacert or env("CONDUCTOR_CACERT", ""), cert=cert or env("CONDUCTOR_CERT", ""),
                    key=key or env("CONDUCTOR_KEY", ""), user=name,
                    password=password if sep else env("CONDUCTOR_PASSWORD", ""),
                    password_file=password_file or env("CONDUCTOR_PASSWORD_FILE", ""))
        creds.check()
        return creds

    def check(self) -> None:
        """Every named file is readable and cert and key come together; raises InvalidSpec."""
        for option, path in (("--cacert", self.cacert), ("--cert", self.cert), ("--key", self.key),
                             ("--password-file", self.password_file)):
            if path and not os.access(path, os.R_OK):
                raise InvalidSpec(option, f"cannot read {path!r}")
        if bool(self.cert) != bool(self.key):
            raise InvalidSpec("--cert" if self.key else "--key", "--cert and --key go together")

    @property
    def tls(self) -> bool:
        """TLS files were given, so even a bare host:port means TLS."""
        return bool(self.cacert or self.cert)

    @property
    def auth(self) -> bool:
        """etcd auth is used: a password (or a file holding one) was given."""
        return bool(self.password or self.password_file)

    def read_password(self) -> str:
        """The password now: the file's first line (read again each time: it may have changed),
        else the one given. Raises InvalidSpec when the file cannot be read."""
        if not self.password_file:
            return self.password
        try:
            lines = Path(self.password_file).read_text().splitlines()
        except OSError as exc:
            raise InvalidSpec("--password-file", f"cannot read {self.password_file!r}: {exc.strerror}") from None
        return lines[0] if lines else ""

    def ask_password(self) -> bool:
        """Ask for the password (on a terminal, through ``prompt``) when none was given; True if
        one was got. Only asked once: the answer is kept for re-authentication."""
        if self.auth or self.prompt is None or not self.user:
            return False
        self.password = self.prompt(self.user)
        self.prompt = None
        return bool(self.password)

    def tls_files(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """(root CA, client key, client cert) as PEM bytes, None where not given."""
        def read(option: str, path: str) -> bytes | None:
            if not path:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise InvalidSpec(option, f"cannot read {path!r}: {exc.strerror}") from None

        return read("--cacert", self.cacert), read("--key", self.key), read("--cert", self.cert)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context for etcd's HTTP side (the clock's ``/version``, TLS diagnosis):
        verifies etcd's certificate against ``cacert`` (else the system roots) and presents the
        client certificate, as the gRPC channel does."""
        import ssl

        context = ssl.create_default_context(cafile=self.cacert or None)
        if self.cert:
            context.load_cert_chain(self.cert, self.key or None)
        return context

    def task_env(self) -> dict[str, str]:
        """What a task's ``conductor`` commands need to reach etcd over TLS as the node does: the
        TLS files (absolute: tasks run elsewhere). Never the password: a task is not the node's
        etcd user."""
        names = {"CONDUCTOR_CACERT": self.cacert, "CONDUCTOR_CERT": self.cert, "CONDUCTOR_KEY": self.key}
        return {name: os.path.abspath(path) for name, path in names.items() if path}

    def config(self) -> dict[str, Any]:
        """As a plain dict (for the supervisor process); no prompt."""
        out = asdict(self)
        out.pop("prompt", None)
        return out

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> "Credentials":
        given = {k: str(v) for k, v in (config or {}).items() if k in _FIELDS}
        return cls(given.get("cacert", ""), given.get("cert", ""), given.get("key", ""), given.get("user", ""),
                   given.get("password", ""), given.get("password_file", ""), given.get("server_name", ""))


_FIELDS = ("cacert", "cert", "key", "user", "password", "password_file", "server_name")
PROBE_TIMEOUT = 2.0


def probe_tls(host: str, port: int, creds: Credentials, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why TLS with etcd at host:port fails (``certificate verify failed: unable to get local
    issuer certificate``...), or None when it works or the failure is not about TLS (nothing
    listens, no answer). A GET of ``/version``: with TLS 1.3 a refused client certificate shows
    only once something is read."""
    import http.client
    import ssl

    try:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=creds.ssl_context())
    except (ssl.SSLError, OSError) as exc:  # our own files: a key that does not match the cert...
        return f"cannot use the client certificate or CA file: {exc}"
    try:
        conn.request("GET", "/version")
        conn.getresponse().read()
        return None
    except ssl.SSLCertVerificationError as exc:
        return f"certificate verify failed: {exc.verify_message}"
    except ssl.SSLError as exc:
        reason = str(exc.reason or exc)
        if "ALERT" in reason:  # etcd sent an alert: it refused us, most often our certificate
            return f"etcd refused the handshake ({reason}): does it want a client certificate (--cert, --key) " \
                   "signed by a CA it trusts?"
        return reason
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def wants_tls(endpoints: str | Sequence[str], creds: Credentials) -> bool:
    """Whether these endpoints are reached over TLS: ``https://`` always is (system roots when no
    CA is given); a bare host:port is when TLS files were given; ``http://`` never is. Raises
    InvalidSpec for a mix of ``https://`` and ``http://``, or ``http://`` with TLS files."""
    items = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    parts = [p.strip() for item in items for p in item.split(",") if p.strip()]
    secure = [p for p in parts if p.startswith("https://")]
    plain = [p for p in parts if p.startswith("http://")]
    if secure and plain:
        raise InvalidSpec("--etcd", f"{plain[0]} is plaintext but {secure[0]} is TLS: use one scheme")
    if plain and creds.tls:
        raise InvalidSpec("--etcd", f"{plain[0]} is plaintext but --cacert/--cert were given: use https://")
    return bool(secure) or (creds.tls and not plain)


__all__ = ["Credentials", "PasswordPrompt", "probe_tls", "wants_tls"]
