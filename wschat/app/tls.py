"""TLS endpoints whose certificate and key are read again from their files on SIGHUP.

Twisted's `ssl:` endpoint builds one CertificateOptions, and that caches its SSL context for
the life of the port: a renewed certificate is only seen after a restart. wschat's TLS
listeners are `wschat-tls:` endpoint strings instead (the parser is a plugin in
twisted/plugins/wschat_plugin.py), each with a `ReloadableTls`, which creates each new
connection from the current CertificateOptions; a reload builds a new one from the same files
and swaps it in only if the files load and match. A connection keeps the context it was created
with (OpenSSL counts the references), so open connections are not disturbed by a reload,
whether it works or fails.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from OpenSSL import SSL
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorFromThreads,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from wschat.logger import NamedLogger

TLS_PREFIX = "wschat-tls"
# The keywords of a `wschat-tls:` string, named as in Twisted's `ssl:` endpoint string; the
# other keywords belong to the endpoint under the TLS. `sslmethod` is refused: TLS 1.2 is the
# minimum, as CertificateOptions sets it; `dhParameters` too: no DHE suite is offered.
TLS_KEYWORDS = frozenset({"privateKey", "certKey", "extraCertChain"})
REFUSED_KEYWORDS = frozenset({"sslmethod", "dhParameters"})
# TLS 1.2's suites, in the server's order of preference: forward secret (ECDHE) and AEAD only,
# as Mozilla's "intermediate" profile without DHE. Twisted's default list also has CBC with
# SHA-1. TLS 1.3's suites (OpenSSL's default three) are all forward secret and AEAD already.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)
# The key types OpenSSL can sign a TLS handshake with; an X25519 or X448 key only agrees.
SIGNING_KEYS = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)
# What TLS over TCP takes besides the port, as Twisted's `ssl:` endpoint does.
TCP_KEYWORDS = frozenset({"interface", "backlog"})
_TCP_TYPES = frozenset({"tcp", "tcp6"})


class TlsFilesError(ValueError):
    """A certificate/key pair that cannot be served; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where one TLS endpoint's certificate comes from (paths, read at start and on SIGHUP)."""

    cert: str  # PEM: the certificate first, then any intermediates (certbot's fullchain.pem)
    key: str
    extra_chain: str | None = None  # more intermediates, as the `ssl:` endpoint's extraCertChain


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What the log says about a loaded certificate."""

    subject: str
    not_after: str
    sha256: str
    chain: int  # intermediates sent after the certificate


@dataclass(frozen=True, slots=True)
class LoadedTls:
    options: CertificateOptions
    info: CertInfo


def _read(label: str, path: str) -> bytes:
    if not os.path.isfile(path):
        raise TlsFilesError(f"TLS {label} file not found: {path}")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise TlsFilesError(f"TLS {label} file {path} is unreadable: {exc.strerror}") from None


def _certificates(label: str, path: str) -> list[x509.Certificate]:
    pem = _read(label, path)
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TlsFilesError(f"TLS {label} file {path} holds no PEM certificate") from None


def load_tls(files: TlsFiles) -> LoadedTls:
    """Read and check a pair; raise TlsFilesError naming the file and the problem."""
    certs = _certificates("certificate", files.cert)
    key_pem = _read("private key", files.key)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        # TypeError: the key is encrypted; a server restarted unattended has no one to ask.
        raise TlsFilesError(
            f"TLS private key file {files.key} is not an unencrypted PEM key: {exc}"
        ) from None
    if not isinstance(key, SIGNING_KEYS):
        raise TlsFilesError(
            f"TLS private key file {files.key} holds a key TLS cannot sign with "
            f"({type(key).__name__}): use an RSA, EC or Ed25519 key"
        )
    chain = certs[1:]
    if files.extra_chain is not None:
        chain += _certificates("chain", files.extra_chain)
    try:
        # CertificateOptions is annotated with pyOpenSSL's X509/PKey, which pyOpenSSL itself
        # now deprecates in favour of the cryptography objects it accepts in their place.
        options = CertificateOptions(
            privateKey=cast(Any, key),
            certificate=cast(Any, certs[0]),
            extraCertChain=cast(Any, chain),
            acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(":".join(TLS12_CIPHERS)),
        )
        options.getContext()  # builds the context now: a key that does not match fails here
    except (SSL.Error, TypeError, ValueError) as exc:
        # SSL.Error: no match; TypeError, ValueError: what pyOpenSSL cannot take.
        raise TlsFilesError(
            f"TLS certificate {files.cert} and key {files.key} are unreadable or do not "
            f"match: {exc}"
        ) from None
    return LoadedTls(options, describe(certs[0], len(chain)))


def describe(cert: x509.Certificate, chain: int) -> CertInfo:
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        not_after=cert.not_valid_after_utc.isoformat(),
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
        chain=chain,
    )


def _quote(argument: str) -> str:
    """One argument of an endpoint string. Unlike quoteStringArgument this escapes `=` too,
    which a positional argument (a socket path) cannot hold unescaped."""
    return re.sub(r"([\\:=])", r"\\\1", argument)


def tls_description(endpoint: str, files: TlsFiles) -> str:
    """The `wschat-tls:` string that serves `files` on `endpoint`, a stream server endpoint
    string such as `tcp:8443` or `systemd:domain=INET6:name=https`."""
    keywords = {
        "certKey": files.cert,
        "privateKey": files.key,
        "extraCertChain": files.extra_chain,
    }
    given = [f"{name}={_quote(value)}" for name, value in keywords.items() if value is not None]
    return ":".join([TLS_PREFIX, endpoint, *given])


def ssl_as_tls(description: str) -> str:
    """Twisted's `ssl:PORT:...` string as the `wschat-tls:` string of the same listener."""
    return f"{TLS_PREFIX}:tcp:{description.removeprefix('ssl:')}"


def split_tls_arguments(args: Sequence[str], kwargs: Mapping[str, str]) -> tuple[str, TlsFiles]:
    """A `wschat-tls:` string's arguments, as Twisted parsed them, as the endpoint string under
    the TLS and the files on top; ValueError if they do not make a TLS listener."""
    if not args:
        raise ValueError(f"expected {TLS_PREFIX}:ENDPOINT, e.g. {TLS_PREFIX}:tcp:8443:...")
    kind, *positional = args
    inner_kwargs = {name: value for name, value in kwargs.items() if name not in TLS_KEYWORDS}
    unknown = REFUSED_KEYWORDS & set(kwargs)
    if kind.lower() in _TCP_TYPES:
        unknown |= set(inner_kwargs) - TCP_KEYWORDS
        if len(positional) != 1:
            raise ValueError(f"expected {kind}:PORT with keyword arguments")
    if unknown:
        raise ValueError(
            f"wschat's TLS endpoints do not take {', '.join(sorted(unknown))} "
            f"(they take {', '.join(sorted(TLS_KEYWORDS | TCP_KEYWORDS))})"
        )
    key = kwargs.get("privateKey", "server.pem")
    files = TlsFiles(
        cert=kwargs.get("certKey", key),  # as in Twisted: one file may hold both
        key=key,
        extra_chain=kwargs.get("extraCertChain"),
    )
    inner = [kind, *map(_quote, positional)]
    inner += [f"{name}={_quote(value)}" for name, value in inner_kwargs.items()]
    return ":".join(inner), files


def tls_endpoint(reactor: Any, *args: object, **kwargs: object) -> TlsEndpoint:
    """The endpoint of a `wschat-tls:` string (the plugin's parser). Its pair is loaded now,
    so a missing or mismatched pair fails the parse with TlsFilesError."""
    inner, files = split_tls_arguments(
        [str(arg) for arg in args], {name: str(value) for name, value in kwargs.items()}
    )
    return TlsEndpoint(reactor, inner, ReloadableTls(files, inner))


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTls:
    """Creates each new TLS connection from the pair loaded last."""

    def __init__(self, files: TlsFiles, label: str) -> None:
        self.files = files
        self.label = label  # the endpoint under the TLS, for the log
        self._loaded = load_tls(files)

    @property
    def info(self) -> CertInfo:
        return self._loaded.info

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        # CertificateOptions adds the ALPN protocols of the wrapped factory (http/1.1).
        return self._loaded.options.serverConnectionForTLS(tlsProtocol)

    def reload(self) -> CertInfo:
        """Load the files again; raise TlsFilesError (keeping the old pair) if they are bad."""
        self._loaded = load_tls(self.files)
        return self._loaded.info


@implementer(IStreamServerEndpoint)
class TlsEndpoint:
    """TLS over any stream server endpoint (TCP, or a socket passed by systemd).

    The endpoint under the TLS is made from its string only when it listens: a `wschat-tls:`
    string is also parsed by the options, to check its pair before start-up, and that parse
    must not look up a systemd socket or need one."""

    def __init__(self, reactor: IReactorTime, inner: str, creator: ReloadableTls) -> None:
        self._reactor = reactor
        self.inner = inner
        self.creator = creator

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        endpoint: IStreamServerEndpoint = serverFromString(self._reactor, self.inner)
        return endpoint.listen(
            TLSMemoryBIOFactory(self.creator, False, protocolFactory, clock=self._reactor)
        )


class TlsReloader(Service):
    """SIGHUP reloads every TLS endpoint's pair. The handler is installed even without TLS
    endpoints: SIGHUP's default action would kill the server (`systemctl reload` sends it)."""

    _log = NamedLogger("wschat.tlsreload.TlsReloader")

    def __init__(self, endpoints: list[ReloadableTls], reactor: IReactorFromThreads) -> None:
        self._endpoints = endpoints
        self._reactor = reactor
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._on_sighup)

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        # A signal handler interrupts the reactor anywhere: do the work in the reactor's turn.
        self._reactor.callFromThread(self.reload)

    def reload(self) -> int:
        """Reload every endpoint; return how many failed (each failure is one error line)."""
        if not self._endpoints:
            self._log.info("SIGHUP: no TLS endpoint, nothing to reload")
            return 0
        failed = 0
        for tls in self._endpoints:
            old = tls.info
            try:
                new = tls.reload()
            except TlsFilesError as exc:
                failed += 1
                self._log.error(
                    "TLS reload of {endpoint} failed, still serving {subject} (sha256 "
                    "{sha256}, valid until {not_after}): {problem}",
                    endpoint=tls.label,
                    subject=old.subject,
                    sha256=old.sha256,
                    not_after=old.not_after,
                    problem=str(exc),
                )
                continue
            self._log.info(
                "TLS reload of {endpoint}: new connections get {subject} (sha256 {sha256}, "
                "valid until {not_after}, {chain} intermediate(s))",
                endpoint=tls.label,
                subject=new.subject,
                sha256=new.sha256,
                not_after=new.not_after,
                chain=new.chain,
            )
        return failed
