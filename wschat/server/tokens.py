"""Verifying signed identities (JWTs) with PyJWT: keys from a file or a JWKS URL.

The algorithms are pinned by where the key comes from, and checked before the key is even
looked up: a shared secret accepts only HS256, a public key only its own algorithm (RS256 for
RSA, ES256 for P-256), a JWKS only the asymmetric ones. So `alg: none` is never accepted, and
neither is an HS256 token "signed" with the (public) RSA key, the classic confusion attack.

`exp` and `nbf` are checked here, against the `now_s` the server runs on (the reactor's
clock), rather than by PyJWT against the wall clock: the grace period and the tests then share
one time. What the claims mean is chat/identity.py's business.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol as Protocol_
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from wschat.chat.errors import KeysUnavailable, TokenInvalid
from wschat.chat.identity import Identity, identity_from_claims

HMAC_ALGORITHMS: tuple[str, ...] = ("HS256",)
ASYMMETRIC_ALGORITHMS: tuple[str, ...] = ("RS256", "ES256")
# RFC 7518 3.2: an HS256 key must be at least as long as the hash, 256 bits.
MIN_SECRET_BYTES = 32
# RFC 7518 3.3 (RS256), and NIST's minimum since 2013.
MIN_RSA_BITS = 2048
# A JWKS is fetched again when older than this, before the next verification; and for a
# `kid` it does not hold (a rotated key) at once, but at most once per JWKS_MIN_REFETCH_S, so
# that tokens with made-up kids cannot make the server hammer the key server.
JWKS_MAX_AGE_S = 300.0
JWKS_MIN_REFETCH_S = 30.0
JWKS_FETCH_TIMEOUT_S = 10.0
JWKS_MAX_BYTES = 1024 * 1024

_log = Logger(namespace="wschat.tokens")


class KeyConfigError(ValueError):
    """A key option cannot be used; the message says why (twistd shows it at start-up)."""


class KeySource(Protocol):
    @property
    def algorithms(self) -> tuple[str, ...]:
        """The algorithms this source's keys may verify."""

    async def key_for(self, kid: str | None, alg: str) -> Any:
        """The key that verifies a token with this header; TokenInvalid if there is none."""


@dataclass(frozen=True, slots=True)
class StaticKey:
    key: Any
    algorithms: tuple[str, ...]

    async def key_for(self, kid: str | None, alg: str) -> Any:
        return self.key


def load_secret(path: str) -> StaticKey:
    """--jwt-secret-file: the shared HS256 secret, the whole file but a final newline."""
    try:
        secret = Path(path).read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise KeyConfigError(f"cannot read the JWT secret file {path}: {exc.strerror}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise KeyConfigError(
            f"the JWT secret in {path} is {len(secret)} bytes; HS256 needs at least "
            f"{MIN_SECRET_BYTES} (e.g. `openssl rand -base64 48 > {path}`)"
        )
    return StaticKey(secret, HMAC_ALGORITHMS)


def load_public_key(path: str) -> StaticKey:
    """--jwt-public-key-file: a PEM public key, RSA (RS256) or EC P-256 (ES256)."""
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise KeyConfigError(
            f"cannot read the JWT public key file {path}: {exc.strerror}"
        ) from None
    if b"PRIVATE KEY" in pem:
        raise KeyConfigError(f"{path} holds a private key; give wschat only the public key")
    try:
        key = load_pem_public_key(pem)
    except ValueError:
        raise KeyConfigError(f"{path} is not a PEM public key") from None
    return StaticKey(key, (key_algorithm(key, f"the key in {path}"),))


def key_algorithm(key: Any, what: str) -> str:
    """The one algorithm a public key verifies: RS256 for RSA of MIN_RSA_BITS or more, ES256
    for EC P-256; KeyConfigError (starting with `what`) for any other key. Key files and the
    keys of a JWKS pass the same checks."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyConfigError(f"{what} is RSA of {key.key_size} bits; use {MIN_RSA_BITS}+")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise KeyConfigError(f"{what} is EC on {key.curve.name}; ES256 needs P-256")
        return "ES256"
    raise KeyConfigError(f"{what} is neither RSA nor EC P-256 (RS256 or ES256)")


def check_jwks_url(url: str) -> None:
    """--jwks-url must be https: whoever can change the key set in transit can sign in as
    anyone, admins included. Plain http only to this host (a key server beside wschat)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return
    raise KeyConfigError(
        f"--jwks-url must be an https URL (http only for localhost/127.0.0.1/::1), not {url!r}"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


Fetch = Callable[[str], Awaitable[bytes]]


class JwksKeys:
    """--jwks-url: the application's key set, fetched without blocking, cached, and fetched
    again for a `kid` it does not hold (the issuer rotated its key)."""

    algorithms: tuple[str, ...] = ASYMMETRIC_ALGORITHMS

    def __init__(self, url: str, fetch: Fetch, now_s: Callable[[], float]) -> None:
        self.url = url
        self._fetch = fetch
        self._now_s = now_s
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at_s: float | None = None
        # When a kid not in the set last made us fetch it again.
        self._missed_at_s: float | None = None
        self._waiting: list[Deferred[None]] | None = None

    async def key_for(self, kid: str | None, alg: str) -> Any:
        now_s = self._now_s()
        fetched = False
        if self._fetched_at_s is None or now_s - self._fetched_at_s >= JWKS_MAX_AGE_S:
            await self._update()
            fetched = True
        key = self._find(kid)
        if key is None and not fetched:
            if self._missed_at_s is None or now_s - self._missed_at_s >= JWKS_MIN_REFETCH_S:
                self._missed_at_s = now_s
                await self._update()
                key = self._find(kid)
        if key is None:
            if not self._keys:
                raise KeysUnavailable(f"no keys could be fetched from {self.url}")
            raise TokenInvalid(f"no key with kid {kid!r} in the key set")
        if key.algorithm_name != alg:
            raise TokenInvalid(f"the key {kid!r} is for {key.algorithm_name}, not {alg}")
        return key.key

    def _find(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            # A token without a kid is fine while the set holds one key.
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _update(self) -> None:
        """One fetch at a time: verifications arriving meanwhile wait for the same one."""
        if self._waiting is not None:
            waiter: Deferred[None] = Deferred()
            self._waiting.append(waiter)
            await waiter
            return
        self._waiting = []
        try:
            self._keys = self._parse(await self._fetch(self.url))
            _log.info(
                "fetched {count} signing keys from {url}", count=len(self._keys), url=self.url
            )
        except Exception as exc:
            # Keep what we had: a key server that is down must not sign everybody out.
            _log.warn("could not fetch the JWKS {url}: {error}", url=self.url, error=str(exc))
        finally:
            self._fetched_at_s = self._now_s()
            waiting, self._waiting = self._waiting, None
            for waiter in waiting:
                waiter.callback(None)

    def _parse(self, body: bytes) -> dict[str | None, jwt.PyJWK]:
        data = json.loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError("not a JWKS: no 'keys' list")
        keys: dict[str | None, jwt.PyJWK] = {}
        for entry in data["keys"]:
            try:
                key = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue  # a key type or algorithm PyJWT does not know: not ours to use
            # Never a symmetric ("oct") key from a URL, whatever its `alg` says.
            if key.algorithm_name not in ASYMMETRIC_ALGORITHMS or entry.get("use", "sig") != "sig":
                continue
            kid = entry.get("kid")
            try:
                # The checks of key files; PyJWT itself takes any size and any curve.
                if key_algorithm(key.key, f"the key {kid!r} of {self.url}") == key.algorithm_name:
                    keys[kid] = key
            except KeyConfigError as exc:
                _log.warn("JWKS key skipped: {problem}", problem=str(exc))
        if not keys:
            raise ValueError("the key set holds no RS256 or ES256 signing key")
        return keys


class _Body(Protocol_):
    """Collects a response body, giving up beyond JWKS_MAX_BYTES."""

    def __init__(self, done: Deferred[bytes]) -> None:
        self._done = done
        self._parts: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > JWKS_MAX_BYTES:
            # deliverBody's transport is the response's producer.
            cast(IPushProducer, self.transport).stopProducing()
            if not self._done.called:
                self._done.errback(ValueError(f"the key set is over {JWKS_MAX_BYTES} bytes"))
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback(b"".join(self._parts))
        else:
            self._done.errback(reason)


def http_fetch(reactor: Any, timeout_s: float = JWKS_FETCH_TIMEOUT_S) -> Fetch:
    """GET a URL with Twisted's Agent (certificates verified for https), never blocking."""
    agent = Agent(reactor, connectTimeout=timeout_s)

    async def fetch(url: str) -> bytes:
        requested = agent.request(
            b"GET", url.encode("ascii"), Headers({b"accept": [b"application/json"]})
        )
        requested.addTimeout(timeout_s, reactor)
        response = await requested
        if response.code != 200:
            raise ValueError(f"HTTP {response.code}")
        body: Deferred[bytes] = Deferred()
        response.deliverBody(_Body(body))
        body.addTimeout(timeout_s, reactor)
        return await body

    return fetch


class TokenVerifier:
    """Turns a token into an Identity, or raises TokenInvalid saying what is wrong with it."""

    def __init__(
        self,
        keys: KeySource,
        now_s: Callable[[], float],
        audience: str | None = None,
        issuer: str | None = None,
        leeway_s: float = 0.0,
    ) -> None:
        self.keys = keys
        self._now_s = now_s
        self.audience = audience
        self.issuer = issuer
        self.leeway_s = leeway_s

    async def verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenInvalid("the token is not a JWT") from None
        alg = header.get("alg")
        if alg not in self.keys.algorithms:
            raise TokenInvalid(
                f"the token's alg {alg!r} is not accepted here "
                f"(only {', '.join(self.keys.algorithms)})"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenInvalid("the token's kid is not a string")
        key = await self.keys.key_for(kid, alg)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "require": ["exp", "sub"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise TokenInvalid("the token's signature is wrong") from None
        except jwt.InvalidAudienceError:
            expected = repr(self.audience) if self.audience else "none (no --jwt-audience)"
            raise TokenInvalid(f"the token's audience is wrong: expected {expected}") from None
        except jwt.InvalidIssuerError:
            raise TokenInvalid(f"the token's issuer is not {self.issuer!r}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenInvalid(f"the token has no {exc.claim!r} claim") from None
        except jwt.PyJWTError as exc:
            raise TokenInvalid(f"the token is invalid: {exc}") from None
        self._check_times(claims)
        return identity_from_claims(claims)

    def _check_times(self, claims: dict[str, Any]) -> None:
        now = self._now_s()
        exp = claims.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            if exp + self.leeway_s <= now:
                raise TokenInvalid("the token has expired")
        nbf = claims.get("nbf")
        if nbf is not None:
            if isinstance(nbf, bool) or not isinstance(nbf, int | float):
                raise TokenInvalid("'nbf' must be a number of seconds since the epoch")
            if nbf - self.leeway_s > now:
                raise TokenInvalid("the token is not valid yet (nbf)")
