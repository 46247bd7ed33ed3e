"""Certificates for the TLS tests: distinguishable self-signed pairs and a CA-signed chain."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509.oid import NameOID

from wschat.certs import write_dev_cert


@dataclass(frozen=True)
class Pair:
    """A certificate file and its key, and the leaf certificate's DER to recognise it by."""

    cert: Path
    key: Path

    @property
    def der(self) -> bytes:
        leaf = x509.load_pem_x509_certificates(self.cert.read_bytes())[0]
        return leaf.public_bytes(serialization.Encoding.DER)

    @property
    def leaf_pem(self) -> str:
        leaf = x509.load_pem_x509_certificates(self.cert.read_bytes())[0]
        return leaf.public_bytes(serialization.Encoding.PEM).decode()

    def install(self, cert: Path, key: Path) -> None:
        """Put this pair at `cert` and `key` the way a renewal does: each file replaced whole."""
        for source, target in ((self.cert, cert), (self.key, key)):
            staging = target.with_name(f".{target.name}.new")
            shutil.copyfile(source, staging)
            os.replace(staging, target)


def self_signed(directory: Path, common_name: str) -> Pair:
    """A development pair whose subject is `common_name` (valid for 127.0.0.1 too)."""
    cert, key = write_dev_cert(directory, (common_name,))
    return Pair(cert, key)


def x25519_key(path: Path) -> Path:
    """A PEM X25519 key: it loads, but it can only agree on a secret, not sign a handshake."""
    key = x25519.X25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _sign(
    subject: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        names: list[x509.GeneralName] = [x509.DNSName("localhost")]
        names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def chain(directory: Path) -> tuple[Path, Pair]:
    """A root CA, an intermediate it signed, and a leaf for localhost the intermediate signed.

    Returns the root's PEM file (what a client trusts) and the pair a server is given, whose
    certificate file is leaf + intermediate, like certbot's fullchain.pem."""
    directory.mkdir(parents=True, exist_ok=True)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _sign("test root", root_key.public_key(), "test root", root_key, ca=True)
    mid_key = ec.generate_private_key(ec.SECP256R1())
    mid = _sign("test intermediate", mid_key.public_key(), "test root", root_key, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _sign("localhost", leaf_key.public_key(), "test intermediate", mid_key, ca=False)
    pem = serialization.Encoding.PEM
    root_path = directory / "root.pem"
    root_path.write_bytes(root.public_bytes(pem))
    fullchain = directory / "fullchain.pem"
    fullchain.write_bytes(leaf.public_bytes(pem) + mid.public_bytes(pem))
    key = directory / "privkey.pem"
    key.write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return root_path, Pair(fullchain, key)
