"""TLS endpoints whose certificate and key are read again from their files on SIGHUP.

Twisted's `ssl:` endpoint builds one CertificateOptions, and that caches its SSL context for
the life of the port: a renewed certificate is only seen after a restart. Here every TLS
endpoint gets a `ReloadableTls` instead, which creates each new connection from the current
CertificateOptions; a reload builds a new one from the same files and swaps it in only if the
files load and match. A connection keeps the context it was created with (OpenSSL counts the
references), so open connections are not disturbed by a reload, whether it works or fails.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from types import FrameType
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from OpenSSL import SSL
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import _parse as parse_endpoint_description
from twisted.internet.endpoints import quoteStringArgument
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorFromThreads,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import CertificateOptions, DiffieHellmanParameters
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.filepath import FilePath
from zope.interface import implementer

# The keywords of Twisted's `ssl:` endpoint string that wschat's TLS endpoints understand.
# (`sslmethod` is left out on purpose: TLS 1.2 is the minimum, as CertificateOptions sets it.)
SSL_KEYWORDS = frozenset({"privateKey", "certKey", "extraCertChain", "dhParameters"})
TCP_KEYWORDS = frozenset({"interface", "backlog"})


class TlsFilesError(Exception):
    """A certificate/key pair that cannot be served; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where one TLS endpoint's certificate comes from (paths, read at start and on SIGHUP)."""

    cert: str  # PEM: the certificate first, then any intermediates (certbot's fullchain.pem)
    key: str
    extra_chain: str | None = None  # more intermediates, as the `ssl:` endpoint's extraCertChain
    dh_params: str | None = None


@dataclass(frozen=True, slots=True)
class TlsListen:
    """A TLS endpoint: a plain stream endpoint (`tcp:8443`, `systemd:...`) with TLS on top."""

    endpoint: str
    files: TlsFiles
    label: str  # how the operator wrote it, for the log


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
    try:
        return x509.load_pem_x509_certificates(_read(label, path))
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
    chain = certs[1:]
    if files.extra_chain is not None:
        chain += _certificates("chain", files.extra_chain)
    dh = None
    if files.dh_params is not None:
        _read("DH parameters", files.dh_params)
        dh = DiffieHellmanParameters.fromFile(FilePath(files.dh_params))
    # CertificateOptions is annotated with pyOpenSSL's X509/PKey, which pyOpenSSL itself now
    # deprecates in favour of the cryptography objects it accepts in their place.
    options = CertificateOptions(
        privateKey=cast(Any, key),
        certificate=cast(Any, certs[0]),
        extraCertChain=cast(Any, chain),
        dhParameters=dh,
    )
    try:
        options.getContext()  # builds the context now: a key that does not match fails here
    except SSL.Error as exc:
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


def tls_from_ssl_description(description: str) -> TlsListen:
    """An `ssl:PORT:privateKey=...:certKey=...` endpoint string as a reloadable TLS endpoint."""
    # Twisted's own tokenizer, so that quoting and escapes mean what they mean in Twisted.
    args, kwargs = parse_endpoint_description(description)
    if len(args) != 2:
        raise ValueError(f"{description}: expected ssl:PORT with keyword arguments")
    unknown = set(kwargs) - SSL_KEYWORDS - TCP_KEYWORDS
    if unknown:
        raise ValueError(
            f"{description}: wschat's TLS endpoints do not take {', '.join(sorted(unknown))} "
            f"(they take {', '.join(sorted(SSL_KEYWORDS | TCP_KEYWORDS))})"
        )
    key = kwargs.get("privateKey", "server.pem")
    files = TlsFiles(
        cert=kwargs.get("certKey", key),
        key=key,
        extra_chain=kwargs.get("extraCertChain"),
        dh_params=kwargs.get("dhParameters"),
    )
    tcp_options = sorted(TCP_KEYWORDS & set(kwargs))
    tcp = f"tcp:{args[1]}" + "".join(f":{k}={quoteStringArgument(kwargs[k])}" for k in tcp_options)
    return TlsListen(tcp, files, description)


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTls:
    """Creates each new TLS connection from the pair loaded last."""

    def __init__(self, listen: TlsListen) -> None:
        self.listen = listen
        self._loaded = load_tls(listen.files)

    @property
    def info(self) -> CertInfo:
        return self._loaded.info

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        # CertificateOptions adds the ALPN protocols of the wrapped factory (http/1.1).
        return self._loaded.options.serverConnectionForTLS(tlsProtocol)

    def reload(self) -> CertInfo:
        """Load the files again; raise TlsFilesError (keeping the old pair) if they are bad."""
        self._loaded = load_tls(self.listen.files)
        return self._loaded.info


@implementer(IStreamServerEndpoint)
class TlsEndpoint:
    """TLS over any stream server endpoint (TCP, or a socket passed by systemd)."""

    def __init__(
        self, inner: IStreamServerEndpoint, creator: ReloadableTls, clock: IReactorTime
    ) -> None:
        self._inner = inner
        self._creator = creator
        self._clock = clock

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        return self._inner.listen(
            TLSMemoryBIOFactory(self._creator, False, protocolFactory, clock=self._clock)
        )


class TlsReloader(Service):
    """SIGHUP reloads every TLS endpoint's pair. The handler is installed even without TLS
    endpoints: SIGHUP's default action would kill the server (`systemctl reload` sends it)."""

    _log = Logger(namespace="wschat.tlsreload.TlsReloader")

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
                    endpoint=tls.listen.label,
                    subject=old.subject,
                    sha256=old.sha256,
                    not_after=old.not_after,
                    problem=str(exc),
                )
                continue
            self._log.info(
                "TLS reload of {endpoint}: new connections get {subject} (sha256 {sha256}, "
                "valid until {not_after}, {chain} intermediate(s))",
                endpoint=tls.listen.label,
                subject=new.subject,
                sha256=new.sha256,
                not_after=new.not_after,
                chain=new.chain,
            )
        return failed
