"""Keys and tokens for the tests, issued as an application's backend would (PyJWT)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

SECRET = b"test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
NOW_S = 1_800_000_000.0


@dataclass(frozen=True)
class KeyPair:
    private: Any
    public_pem: bytes
    alg: str

    def jwk(self, kid: str) -> dict[str, Any]:
        """The public half as a JWKS entry."""
        algorithm = (
            jwt.algorithms.RSAAlgorithm if self.alg == "RS256" else jwt.algorithms.ECAlgorithm
        )
        entry: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        entry.update(kid=kid, use="sig", alg=self.alg)
        return entry


def _pair(private: Any, alg: str) -> KeyPair:
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return KeyPair(private, pem, alg)


@cache
def rsa_pair(index: int = 0) -> KeyPair:
    """An RSA-2048 key (cached: generating one takes a while)."""
    return _pair(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")


@cache
def ec_pair(index: int = 0) -> KeyPair:
    return _pair(ec.generate_private_key(ec.SECP256R1()), "ES256")


@cache
def weak_rsa_pair() -> KeyPair:
    """An RSA-1024 key: PyJWT signs and verifies with it, wschat must not."""
    return _pair(rsa.generate_private_key(public_exponent=65537, key_size=1024), "RS256")


@cache
def p384_pair() -> KeyPair:
    """An EC key on P-384 that calls itself ES256 (which is P-256 only)."""
    return _pair(ec.generate_private_key(ec.SECP384R1()), "ES256")


def claims(sub: str = "u-alice", **extra: Any) -> dict[str, Any]:
    """Claims of a token valid for an hour after NOW_S."""
    base: dict[str, Any] = {"sub": sub, "exp": int(NOW_S) + 3600}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def hs256(payload: dict[str, Any], secret: bytes = SECRET, **headers: Any) -> str:
    return jwt.encode(payload, secret, algorithm="HS256", headers=headers or None)


def signed(payload: dict[str, Any], pair: KeyPair, **headers: Any) -> str:
    return jwt.encode(payload, pair.private, algorithm=pair.alg, headers=headers or None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any]) -> str:
    """`alg: none`: a token with no signature at all."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(payload).encode())}."


def hs256_with_key_bytes(payload: dict[str, Any], key: bytes) -> str:
    """The algorithm-confusion attack: HS256 "signed" with the server's public key as the
    HMAC secret (PyJWT refuses to do that, so it is built by hand)."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(payload).encode())
    mac = hmac.new(key, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(mac)}"


def write_secret(directory: Path, secret: bytes = SECRET) -> Path:
    path = directory / "jwt.secret"
    path.write_bytes(secret + b"\n")
    return path


def write_public_key(directory: Path, pair: KeyPair) -> Path:
    path = directory / f"jwt-{pair.alg}.pub.pem"
    path.write_bytes(pair.public_pem)
    return path
