"""Reloadable TLS endpoints: loading and checking pairs, swapping them, SIGHUP, in memory."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import LogLevel
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from wschat.app.tls import (
    TLS12_CIPHERS,
    ReloadableTls,
    TlsEndpoint,
    TlsFiles,
    TlsFilesError,
    TlsReloader,
    load_tls,
    split_tls_arguments,
    ssl_as_tls,
    tls_description,
)

from .tlskit import Pair, chain, self_signed, x25519_key


@implementer(IProtocolNegotiationFactory)
class Http11Factory(Factory):
    protocol = Protocol

    def acceptableProtocols(self) -> list[bytes]:
        return [b"http/1.1"]


def tls_protocol(creator: ReloadableTls) -> TLSMemoryBIOProtocol:
    """The TLS wrapper a listening port would build for one connection (not connected)."""
    protocol = TLSMemoryBIOFactory(creator, False, Http11Factory()).buildProtocol(None)
    assert protocol is not None
    return protocol


def handshake(creator: ReloadableTls, ciphers: str | None = None) -> SSL.Connection:
    """A full TLS handshake in memory against a new server connection; returns the client,
    which offers only `ciphers` (OpenSSL's names) in TLS 1.2 if given."""
    protocol = tls_protocol(creator)
    server = creator.serverConnectionForTLS(protocol)
    server.set_app_data(protocol)  # as Twisted does: the ALPN callback looks the factory up
    server.set_accept_state()
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if ciphers is not None:
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
        context.set_cipher_list(ciphers.encode())
    context.set_alpn_protos([b"http/1.1"])
    client = SSL.Connection(context, None)
    client.set_connect_state()
    for _ in range(10):
        for side, other in ((client, server), (server, client)):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                other.bio_write(side.bio_read(65536))
            except SSL.WantReadError:
                pass
    return client


def common_name(cert: x509.Certificate | Any) -> str:
    assert isinstance(cert, x509.Certificate)
    [attribute] = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attribute.value)


def serving(pair: Pair) -> ReloadableTls:
    """What a `wschat-tls:tcp:8443` string serves with this pair."""
    return ReloadableTls(TlsFiles(str(pair.cert), str(pair.key)), "tcp:8443")


@pytest.fixture
def pairs(tmp_path: Path) -> Callable[[str], Pair]:
    return lambda name: self_signed(tmp_path / name, name)


def test_a_matching_pair_loads_with_its_intermediates(tmp_path: Path) -> None:
    """A fullchain-style file gives the leaf plus its intermediate, both sent in a handshake."""
    _, pair = chain(tmp_path)
    loaded = load_tls(TlsFiles(str(pair.cert), str(pair.key)))
    assert loaded.info.subject == "CN=localhost" and loaded.info.chain == 1
    client = handshake(serving(pair))
    sent = client.get_peer_cert_chain(as_cryptography=True) or []
    assert [common_name(c) for c in sent] == ["localhost", "test intermediate"]


def test_bad_pairs_are_refused_with_the_file_and_the_problem(
    tmp_path: Path, pairs: Callable[[str], Pair]
) -> None:
    """Missing, non-PEM, encrypted and mismatched files raise TlsFilesError naming the file."""
    a, b = pairs("a"), pairs("b")
    cases = {
        "TLS certificate file not found": TlsFiles(str(tmp_path / "no.pem"), str(a.key)),
        "TLS private key file not found": TlsFiles(str(a.cert), str(tmp_path / "no.pem")),
        "holds no PEM certificate": TlsFiles(str(a.key), str(a.key)),
        "do not match": TlsFiles(str(a.cert), str(b.key)),
    }
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    cases["is not an unencrypted PEM key"] = TlsFiles(str(a.cert), str(encrypted))
    for message, files in cases.items():
        with pytest.raises(TlsFilesError, match=message) as raised:
            load_tls(files)
        assert files.cert in str(raised.value) or files.key in str(raised.value)


def test_a_key_that_cannot_sign_is_refused_at_load_and_on_reload(
    tmp_path: Path, pairs: Callable[[str], Pair], log_events: EventLoggingObserver
) -> None:
    """An X25519 key is a TlsFilesError naming the file; on SIGHUP one error, the old pair on."""
    a = pairs("a")
    x25519_key(tmp_path / "x25519.pem")
    with pytest.raises(TlsFilesError, match=r"x25519\.pem holds a key TLS cannot sign with"):
        load_tls(TlsFiles(str(a.cert), str(tmp_path / "x25519.pem")))
    creator = serving(a)
    x25519_key(a.key)
    assert TlsReloader([creator], ThreadlessReactor()).reload() == 1  # type: ignore[arg-type]
    [line] = [e for e in log_events if e.get("endpoint") == "tcp:8443"]
    assert line["log_level"] == LogLevel.error and "cannot sign" in line["problem"]
    assert common_name(handshake(creator).get_peer_certificate(as_cryptography=True)) == "a"


def test_tls12_offers_only_forward_secret_aead_suites(pairs: Callable[[str], Pair]) -> None:
    """TLS 1.2 agrees on ECDHE with AES-GCM or ChaCha20-Poly1305; CBC, SHA-1 and RSA key
    exchange are refused (an EC key here: the ECDSA half of the list)."""
    creator = serving(pairs("a"))
    for cipher in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "AES128-GCM-SHA256"):
        with pytest.raises(SSL.Error):
            handshake(creator, cipher)
    for cipher in TLS12_CIPHERS:
        if "-ECDSA-" in cipher:
            assert handshake(creator, cipher).get_cipher_name() == cipher
    assert all(c.startswith("ECDHE-") and ("GCM" in c or "CHACHA20" in c) for c in TLS12_CIPHERS)


def test_tls_arguments_split_into_the_endpoint_under_tls_and_the_files() -> None:
    """The `ssl:` keywords name the files, the rest is the endpoint; TCP takes only the `ssl:`
    endpoint's keywords; `sslmethod` (TLS 1.2 is the minimum) and `dhParameters` (no DHE
    suite) are refused."""
    assert split_tls_arguments(
        ["tcp", "8443"], {"privateKey": "/k:dir/key.pem", "certKey": "/c.pem", "backlog": "5"}
    ) == ("tcp:8443:backlog=5", TlsFiles("/c.pem", "/k:dir/key.pem"))
    assert split_tls_arguments(
        ["systemd"], {"domain": "INET6", "name": "https", "privateKey": "k", "certKey": "c"}
    ) == ("systemd:domain=INET6:name=https", TlsFiles("c", "k"))
    # A socket path keeps its colons and equals signs, escaped.
    assert split_tls_arguments(["unix", "/run/a:b=c"], {})[0] == r"unix:/run/a\:b\=c"
    # certKey defaults to privateKey, as in Twisted (one file holding both).
    assert split_tls_arguments(["tcp", "443"], {"privateKey": "both.pem"})[1] == TlsFiles(
        "both.pem", "both.pem"
    )
    with pytest.raises(ValueError, match="do not take sslmethod"):
        split_tls_arguments(["tcp", "443"], {"privateKey": "k.pem", "sslmethod": "TLSv1_METHOD"})
    with pytest.raises(ValueError, match="do not take sslmethod"):
        split_tls_arguments(["systemd"], {"name": "https", "sslmethod": "TLSv1_METHOD"})
    with pytest.raises(ValueError, match="do not take dhParameters"):
        split_tls_arguments(["tcp", "443"], {"privateKey": "k.pem", "dhParameters": "dh.pem"})
    with pytest.raises(ValueError, match="do not take mode"):
        split_tls_arguments(["tcp", "443"], {"mode": "600"})
    with pytest.raises(ValueError, match="expected tcp:PORT"):
        split_tls_arguments(["tcp"], {"privateKey": "k.pem"})


def test_tls_strings_parse_through_the_plugin(tmp_path: Path) -> None:
    """The strings the TLS options build, and `ssl:` strings, parse through the `wschat-tls:`
    plugin into an endpoint serving those files; a bad pair fails the parse."""
    pair = self_signed(tmp_path / "a:b=c", "a")
    files = TlsFiles(str(pair.cert), str(pair.key))
    reactor = MemoryReactorClock()
    built = serverFromString(reactor, tls_description("tcp:8443:interface=127.0.0.1", files))
    assert isinstance(built, TlsEndpoint)
    assert built.inner == "tcp:8443:interface=127.0.0.1"
    assert built.creator.files == files and built.creator.info.subject == "CN=a"
    key, cert = quoteStringArgument(str(pair.key)), quoteStringArgument(str(pair.cert))
    from_ssl = serverFromString(reactor, ssl_as_tls(f"ssl:8443:privateKey={key}:certKey={cert}"))
    assert isinstance(from_ssl, TlsEndpoint) and from_ssl.creator.files == files
    assert from_ssl.inner == "tcp:8443"
    with pytest.raises(TlsFilesError, match="not found"):
        serverFromString(reactor, tls_description("tcp:8443", TlsFiles(str(pair.cert), "no")))


def test_new_connections_get_the_reloaded_pair_and_old_ones_keep_theirs(
    pairs: Callable[[str], Pair],
) -> None:
    """A reload gives new handshakes the new certificate and ALPN; old connections keep theirs."""
    a, b = pairs("a"), pairs("b")
    creator = serving(a)
    before = creator.serverConnectionForTLS(tls_protocol(creator))
    assert common_name(handshake(creator).get_peer_certificate(as_cryptography=True)) == "a"

    b.install(a.cert, a.key)
    assert creator.reload().subject == "CN=b"
    client = handshake(creator)
    assert common_name(client.get_peer_certificate(as_cryptography=True)) == "b"
    assert client.get_alpn_proto_negotiated() == b"http/1.1"
    assert common_name(before.get_certificate(as_cryptography=True)) == "a"


def test_a_failed_reload_keeps_the_pair_that_was_loaded(pairs: Callable[[str], Pair]) -> None:
    """A half-written renewal (a certificate with another key) leaves the old pair serving."""
    a, b, c = pairs("a"), pairs("b"), pairs("c")
    creator = serving(a)
    shutil.copyfile(b.cert, a.cert)  # the new certificate, still the old key
    with pytest.raises(TlsFilesError, match="do not match"):
        creator.reload()
    assert common_name(handshake(creator).get_peer_certificate(as_cryptography=True)) == "a"
    os.remove(a.key)
    with pytest.raises(TlsFilesError, match="not found"):
        creator.reload()
    assert creator.info.subject == "CN=a"
    c.install(a.cert, a.key)
    assert creator.reload().subject == "CN=c"


class ThreadlessReactor:
    def __init__(self) -> None:
        self.calls: list[Callable[[], object]] = []

    def callFromThread(self, f: Callable[..., object], *args: object, **kwargs: object) -> None:
        self.calls.append(lambda: f(*args, **kwargs))


def test_sighup_reloads_every_endpoint_and_logs_one_line_each(
    pairs: Callable[[str], Pair], log_events: EventLoggingObserver
) -> None:
    """SIGHUP reloads in the reactor: a log line per endpoint, an error if broken."""
    a, b, other = pairs("a"), pairs("b"), pairs("other")
    good, bad = serving(a), serving(other)
    reactor = ThreadlessReactor()
    reloader = TlsReloader([good, bad], reactor)  # type: ignore[arg-type]
    previous = signal.getsignal(signal.SIGHUP)
    reloader.startService()
    try:
        b.install(a.cert, a.key)
        os.remove(other.key)
        os.kill(os.getpid(), signal.SIGHUP)
        [reload] = reactor.calls
        assert not log_events, "the handler itself only schedules the reload"
        reload()
    finally:
        reloader.stopService()
    assert signal.getsignal(signal.SIGHUP) == previous
    lines = [e for e in log_events if e.get("endpoint") == "tcp:8443"]
    assert [e["log_level"] for e in lines] == [LogLevel.info, LogLevel.error]
    assert lines[0]["subject"] == "CN=b"
    assert lines[1]["subject"] == "CN=other" and "not found" in lines[1]["problem"]
    assert good.info.subject == "CN=b" and bad.info.subject == "CN=other"


def test_sighup_without_tls_endpoints_is_harmless(log_events: EventLoggingObserver) -> None:
    """Without TLS endpoints a reload says so and changes nothing (and does not kill us)."""
    assert TlsReloader([], ThreadlessReactor()).reload() == 0  # type: ignore[arg-type]
    assert "no TLS endpoint" in log_events[-1]["log_format"]


def test_the_endpoint_wraps_the_factory_in_tls(pairs: Callable[[str], Pair]) -> None:
    """TlsEndpoint listens on its inner endpoint with the site inside a TLS factory."""
    reactor = MemoryReactorClock()
    site = Http11Factory()
    TlsEndpoint(reactor, "tcp:8443:backlog=7", serving(pairs("a"))).listen(site)
    [(port, factory, backlog, _)] = reactor.tcpServers
    assert (port, backlog) == (8443, 7)
    assert isinstance(factory, TLSMemoryBIOFactory) and factory.wrappedFactory is site
