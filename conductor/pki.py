"""The certificates of a cluster: a CA, each machine's member certificate, a conductor's client
certificate. Pure functions over PEM bytes (no etcd, no network), plus 0600 file writing.

* The CA is an EC P-256 key with a self-signed certificate valid 10 years. Its fingerprint (the
  SHA-256 of its DER form, in hex) is what a join token pins.
* A member certificate serves etcd's client and peer ports and the join endpoint of one machine:
  its SANs are the machine's advertised address, 127.0.0.1, ``localhost`` and :data:`CLUSTER_NAME`
  (the name a connection to several members at once checks). It has both the server and the client
  extended key usage, since etcd peers are each other's clients.
* A client certificate (``CN=conductor``) lets a conductor or the command line talk to etcd, which
  runs with ``--client-cert-auth``.

Signing never trusts what a request says about names: :func:`sign` takes the public key out of a
CSR (after checking the CSR's own signature: proof the requester holds the key) and puts in the
SANs the caller chose. Errors: :class:`conductor.errors.InvalidSpec` for a malformed CSR or address.
"""
from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import InvalidSpec

CLUSTER_NAME = "conductor-etcd"  # a DNS SAN of every member: the name checked when dialling several
CA_DAYS = 3650
CERT_DAYS = 825


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def new_key() -> bytes:
    """A new EC P-256 private key, PEM (PKCS#8, unencrypted: it is kept in a 0600 file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidSpec("key", "not an EC private key")
    return key


def create_ca(cluster_id: str) -> tuple[bytes, bytes]:
    """A new cluster CA: (certificate PEM, key PEM)."""
    key_pem = new_key()
    key = _load_key(key_pem)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"conductor cluster {cluster_id} CA")])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate's DER form, lower-case hex (what a join token pins)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise InvalidSpec("certificate", f"not a PEM certificate: {exc}") from None
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def make_csr(key_pem: bytes, name: str) -> bytes:
    """A certificate signing request for ``key_pem`` (the names in it are ignored by :func:`sign`)."""
    key = _load_key(key_pem)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def _san(addresses: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for address in addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            names.append(x509.DNSName(address))
    return x509.SubjectAlternativeName(names)


def member_names(advertise: str) -> list[str]:
    """The SANs of a member certificate for a machine that advertises ``advertise``."""
    names = [advertise, "127.0.0.1", "localhost", CLUSTER_NAME]
    return list(dict.fromkeys(names))


def sign(ca_cert_pem: bytes, ca_key_pem: bytes, csr_pem: bytes, common_name: str, sans: list[str],
         server: bool) -> bytes:
    """Sign the public key of ``csr_pem`` with the CA: a certificate for ``common_name`` with
    ``sans`` (IP addresses or DNS names), client auth, and server auth too when ``server``.
    Raises InvalidSpec when the CSR is malformed or its signature does not verify."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise InvalidSpec("csr", f"not a PEM certificate request: {exc}") from None
    if not csr.is_signature_valid:
        raise InvalidSpec("csr", "its signature does not verify (the requester does not hold the key)")
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = _load_key(ca_key_pem)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
    now = _now()
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .issuer_name(ca_cert.subject).public_key(csr.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if sans:
        builder = builder.add_extension(_san(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def issued_by(cert_pem: bytes, ca_cert_pem: bytes) -> bool:
    """Was ``cert_pem`` signed by the CA of ``ca_cert_pem``?"""
    cert = x509.load_pem_x509_certificate(cert_pem)
    ca = x509.load_pem_x509_certificate(ca_cert_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):  # noqa: BLE001 - InvalidSignature is not a ValueError
        return False
    return True


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (created 0600, never world-readable
    for an instant), replacing any old file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)
