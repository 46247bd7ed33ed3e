"""Token verification (wschat/tokens.py): PyJWT with pinned algorithms, keys from files and
from a JWKS, the times checked against the server's clock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from jwt.warnings import InsecureKeyLengthWarning
from twisted.internet import reactor
from twisted.internet.testing import EventLoggingObserver
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from wschat.chat.errors import KeysUnavailable, TokenInvalid
from wschat.chat.identity import Identity
from wschat.server.tokens import (
    JWKS_MAX_AGE_S,
    JWKS_MIN_REFETCH_S,
    JwksKeys,
    KeyConfigError,
    KeySource,
    StaticKey,
    TokenVerifier,
    check_jwks_url,
    http_fetch,
    load_public_key,
    load_secret,
)

from .chatkit import run
from .jwtkit import (
    NOW_S,
    SECRET,
    claims,
    ec_pair,
    hs256,
    hs256_with_key_bytes,
    p384_pair,
    rsa_pair,
    signed,
    unsigned,
    weak_rsa_pair,
    write_public_key,
    write_secret,
)


class Time:
    def __init__(self, now_s: float = NOW_S) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def verifier(keys: KeySource | None = None, time: Time | None = None, **kw: Any) -> TokenVerifier:
    return TokenVerifier(keys or StaticKey(SECRET, ("HS256",)), time or Time(), **kw)


def public_key_of(pair: Any) -> StaticKey:
    return StaticKey(pair.private.public_key(), (pair.alg,))


def refused(v: TokenVerifier, token: str) -> str:
    """Verify `token`, which must fail; the reason given."""
    with pytest.raises(TokenInvalid) as caught:
        run(v.verify(token))
    return caught.value.message


def test_a_valid_hs256_token_gives_its_identity() -> None:
    """A good token's claims become the Identity; the name defaults to the sub."""
    identity = run(verifier().verify(hs256(claims())))
    assert identity == Identity("u-alice", "u-alice", NOW_S + 3600, None, False)
    named = run(verifier().verify(hs256(claims(name="Alice", rooms=["team-*"], admin=True))))
    assert (named.name, named.rooms, named.admin) == ("Alice", ("team-*",), True)


def test_expiry_is_checked_on_the_servers_clock_with_leeway() -> None:
    """A token whose exp has passed is refused; --jwt-leeway tolerates that much skew."""
    time = Time(NOW_S + 3600)
    assert "expired" in refused(verifier(time=time), hs256(claims()))
    time.now_s = NOW_S + 3599
    assert run(verifier(time=time).verify(hs256(claims()))).sub == "u-alice"
    time.now_s = NOW_S + 3610
    assert run(verifier(time=time, leeway_s=30).verify(hs256(claims()))).sub == "u-alice"


def test_not_before_in_the_future_is_refused() -> None:
    """nbf later than now (beyond the leeway) is refused."""
    token = hs256(claims(nbf=int(NOW_S) + 60))
    assert "not valid yet" in refused(verifier(), token)
    assert run(verifier(leeway_s=60).verify(token)).sub == "u-alice"


def test_a_wrong_signature_is_refused() -> None:
    """A token signed with another secret is refused as such."""
    assert "signature" in refused(verifier(), hs256(claims(), b"another-secret-" * 4))


def test_audience_and_issuer_must_match() -> None:
    """--jwt-audience and --jwt-issuer must be in the token; without --jwt-audience a token
    meant for some audience is refused too (it was issued for another service)."""
    v = verifier(audience="chat", issuer="https://app.example")
    good = hs256(claims(aud="chat", iss="https://app.example"))
    assert run(v.verify(good)).sub == "u-alice"
    assert "audience" in refused(v, hs256(claims(aud="billing", iss="https://app.example")))
    assert "'aud'" in refused(v, hs256(claims(iss="https://app.example")))
    assert "issuer" in refused(v, hs256(claims(aud="chat", iss="https://evil.example")))
    assert "audience" in refused(verifier(), hs256(claims(aud="chat")))


def test_alg_none_is_never_accepted() -> None:
    """An unsigned token (alg none) is refused by every kind of key."""
    token = unsigned(claims())
    assert "'none'" in refused(verifier(), token)
    assert "'none'" in refused(verifier(public_key_of(rsa_pair())), token)


def test_hs256_signed_with_the_public_key_is_refused(tmp_path: Path) -> None:
    """The algorithm-confusion attack fails: a public key accepts only its own algorithm."""
    pair = rsa_pair()
    v = verifier(load_public_key(str(write_public_key(tmp_path, pair))))
    assert "'HS256'" in refused(v, hs256_with_key_bytes(claims(), pair.public_pem))
    assert run(v.verify(signed(claims(), pair))).sub == "u-alice"


def test_public_keys_pin_their_own_algorithm(tmp_path: Path) -> None:
    """An ES256 key accepts ES256 tokens and refuses RS256 and HS256 ones."""
    v = verifier(load_public_key(str(write_public_key(tmp_path, ec_pair()))))
    assert run(v.verify(signed(claims(), ec_pair()))).sub == "u-alice"
    assert "'RS256'" in refused(v, signed(claims(), rsa_pair()))
    assert "'HS256'" in refused(v, hs256(claims()))


def test_required_claims() -> None:
    """A token without exp or without sub is refused, naming the claim."""
    assert "'exp'" in refused(verifier(), hs256({"sub": "u-alice"}))
    assert "'sub'" in refused(verifier(), hs256({"exp": int(NOW_S) + 60}))


def test_garbage_is_not_a_jwt() -> None:
    """Something that is not a JWT at all is refused as such."""
    assert "not a JWT" in refused(verifier(), "hello")


def test_bad_claims_are_refused() -> None:
    """Claims of the wrong type or shape are refused, naming the claim."""
    assert "'name'" in refused(verifier(), hs256(claims(name=" padded")))
    assert "'rooms'" in refused(verifier(), hs256(claims(rooms="lobby")))
    assert "'admin'" in refused(verifier(), hs256(claims(admin="yes")))


def test_key_files_are_checked_at_load(tmp_path: Path) -> None:
    """A short secret, a private key given as public, or garbage stop start-up clearly."""
    assert load_secret(str(write_secret(tmp_path))).key == SECRET
    with pytest.raises(KeyConfigError, match="at least 32"):
        load_secret(str(write_secret(tmp_path, b"short")))
    with pytest.raises(KeyConfigError, match="cannot read"):
        load_secret(str(tmp_path / "missing"))
    private = tmp_path / "private.pem"
    from cryptography.hazmat.primitives import serialization

    private.write_bytes(
        rsa_pair().private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeyConfigError, match="private key"):
        load_public_key(str(private))
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(KeyConfigError, match="not a PEM"):
        load_public_key(str(tmp_path / "junk.pem"))
    assert load_public_key(str(write_public_key(tmp_path, rsa_pair()))).algorithms == ("RS256",)


class FakeJwks:
    """A key server in memory: `keys` is what it serves; it counts the fetches."""

    def __init__(self, *entries: dict[str, Any]) -> None:
        self.entries = list(entries)
        self.fetches = 0
        self.down = False

    async def __call__(self, url: str) -> bytes:
        self.fetches += 1
        if self.down:
            raise ConnectionRefusedError("down")
        return json.dumps({"keys": self.entries}).encode()


def test_jwks_keys_are_fetched_once_and_cached() -> None:
    """Tokens of a key in the set verify; the set is fetched once for many tokens."""
    served = FakeJwks(rsa_pair().jwk("k1"), ec_pair().jwk("k2"))
    time = Time()
    v = verifier(JwksKeys("https://app.example/jwks", served, time), time)
    assert run(v.verify(signed(claims(), rsa_pair(), kid="k1"))).sub == "u-alice"
    assert run(v.verify(signed(claims("u-bob"), ec_pair(), kid="k2"))).sub == "u-bob"
    assert served.fetches == 1


def test_an_unknown_kid_fetches_the_set_again_but_not_too_often() -> None:
    """After a rotation the new kid is fetched at once; made-up kids fetch at most once per
    JWKS_MIN_REFETCH_S; the whole set is fetched again after JWKS_MAX_AGE_S."""
    served = FakeJwks(rsa_pair(0).jwk("old"))
    time = Time()
    v = verifier(JwksKeys("https://app.example/jwks", served, time), time)
    assert run(v.verify(signed(claims(), rsa_pair(0), kid="old"))).sub == "u-alice"
    served.entries = [rsa_pair(1).jwk("new")]
    assert run(v.verify(signed(claims(), rsa_pair(1), kid="new"))).sub == "u-alice"
    assert served.fetches == 2
    for _ in range(5):
        assert "no key" in refused(v, signed(claims(), rsa_pair(1), kid="made-up"))
    assert served.fetches == 2
    time.now_s += JWKS_MIN_REFETCH_S
    assert "no key" in refused(v, signed(claims(), rsa_pair(1), kid="made-up"))
    assert served.fetches == 3
    time.now_s += JWKS_MAX_AGE_S
    assert "no key" in refused(v, signed(claims(), rsa_pair(0), kid="old"))
    assert served.fetches == 4


def test_a_key_server_that_is_down_keeps_the_keys_it_gave() -> None:
    """A failed fetch keeps the earlier keys; with none at all the answer is 'try later'."""
    served = FakeJwks(rsa_pair().jwk("k1"))
    time = Time()
    v = verifier(JwksKeys("https://app.example/jwks", served, time), time)
    assert run(v.verify(signed(claims(), rsa_pair(), kid="k1"))).sub == "u-alice"
    served.down = True
    time.now_s += JWKS_MAX_AGE_S
    assert run(v.verify(signed(claims(), rsa_pair(), kid="k1"))).sub == "u-alice"
    nothing = verifier(JwksKeys("https://app.example/jwks", served, time), time)
    with pytest.raises(KeysUnavailable):
        run(nothing.verify(signed(claims(), rsa_pair(), kid="k1")))


def test_a_jwks_never_supplies_a_symmetric_key() -> None:
    """An 'oct' (HS256) key in the set is ignored, and HS256 tokens are refused outright."""
    oct_key = {"kty": "oct", "kid": "s", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}
    served = FakeJwks(oct_key, rsa_pair().jwk("k1"))
    time = Time()
    v = verifier(JwksKeys("https://app.example/jwks", served, time), time)
    assert "'HS256'" in refused(v, hs256(claims(), kid="s"))
    assert "no key" in refused(v, signed(claims(), ec_pair(), kid="s"))
    # A token whose alg differs from its key's is refused before the signature is checked.
    assert "is for RS256" in refused(v, signed(claims(), ec_pair(), kid="k1"))


def test_jwks_keys_pass_the_checks_of_key_files(
    tmp_path: Path, log_events: EventLoggingObserver
) -> None:
    """RSA under 2048 bits and EC off P-256 are refused from a JWKS as from a key file."""
    weak, p384 = weak_rsa_pair(), p384_pair()
    for pair, problem in ((weak, "RSA of 1024 bits"), (p384, "EC on secp384r1")):
        with pytest.raises(KeyConfigError, match=problem):
            load_public_key(str(write_public_key(tmp_path, pair)))
    served = FakeJwks(weak.jwk("weak"), p384.jwk("p384"), rsa_pair().jwk("k1"))
    time = Time()
    v = verifier(JwksKeys("https://app.example/jwks", served, time), time)
    with pytest.warns(InsecureKeyLengthWarning):  # PyJWT warns, and signs
        weak_token = signed(claims(), weak, kid="weak")
    assert "no key with kid 'weak'" in refused(v, weak_token)
    assert "no key with kid 'p384'" in refused(v, signed(claims(), ec_pair(), kid="p384"))
    assert run(v.verify(signed(claims(), rsa_pair(), kid="k1"))).sub == "u-alice"
    skipped = [e["problem"] for e in log_events if e.get("log_format", "").startswith("JWKS key")]
    assert len(skipped) == 2 * served.fetches  # each fetch says which keys it skipped
    assert "'weak'" in skipped[0] and "'p384'" in skipped[1]
    only_weak = FakeJwks(weak.jwk("weak"))
    nothing = verifier(JwksKeys("https://app.example/jwks", only_weak, time), time)
    with pytest.raises(KeysUnavailable):
        run(nothing.verify(weak_token))


def test_the_jwks_url_is_https_or_to_this_host() -> None:
    """Plain http could be rewritten on the way (keys that sign anyone in): only loopback."""
    for url in (
        "https://auth.example.com/jwks.json",
        "http://127.0.0.1:8000/jwks.json",
        "http://127.3.4.5/jwks",
        "http://[::1]:8000/jwks",
        "http://localhost/jwks",
    ):
        check_jwks_url(url)
    for url in (
        "http://auth.example.com/jwks.json",
        "http://10.0.0.7/jwks",
        "http://localhost.example.com/jwks",
        "http://127.0.0.1.nip.io/jwks",
        "file:///etc/jwks.json",
        "https:///jwks",
    ):
        with pytest.raises(KeyConfigError, match="must be an https URL"):
            check_jwks_url(url)


def test_without_a_kid_the_only_key_is_used() -> None:
    """A token without a kid verifies while the set has exactly one key."""
    served = FakeJwks(rsa_pair().jwk("k1"))
    time = Time()
    v = verifier(JwksKeys("https://app.example/jwks", served, time), time)
    assert run(v.verify(signed(claims(), rsa_pair()))).sub == "u-alice"


class JwksResource(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[dict[str, Any]] = []
        self.requests = 0

    def render_GET(self, request: Request) -> bytes:
        self.requests += 1
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"keys": self.entries}).encode()


@pytest_twisted.ensureDeferred
async def test_jwks_rotation_over_real_http() -> None:
    """Keys are fetched with Twisted's Agent from a local HTTP server; a rotated key (new
    kid) is fetched again; tokens of the old key still verify while it is served."""
    resource = JwksResource()
    resource.entries = [rsa_pair(0).jwk("2026-01")]
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")  # type: ignore[arg-type]
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/jwks.json"  # type: ignore[attr-defined]
        time = Time()
        keys = JwksKeys(url, http_fetch(reactor), time)
        v = verifier(keys, time)
        first = await v.verify(signed(claims(), rsa_pair(0), kid="2026-01"))
        assert first.sub == "u-alice"
        resource.entries = [rsa_pair(0).jwk("2026-01"), rsa_pair(1).jwk("2026-02")]
        second = await v.verify(signed(claims("u-bob"), rsa_pair(1), kid="2026-02"))
        assert second.sub == "u-bob"
        assert resource.requests == 2
    finally:
        stopped = port.stopListening()
        if stopped is not None:
            await stopped


@pytest_twisted.ensureDeferred
async def test_concurrent_verifications_share_one_fetch() -> None:
    """Tokens that arrive while the set is being fetched wait for that same fetch."""
    from twisted.internet.defer import Deferred, gatherResults

    fetches: list[Deferred[bytes]] = []

    def slow_fetch(url: str) -> Deferred[bytes]:
        fetched: Deferred[bytes] = Deferred()
        fetches.append(fetched)
        return fetched

    time = Time()
    v = verifier(JwksKeys("https://app.example/jwks", slow_fetch, time), time)
    pending = [
        Deferred.fromCoroutine(v.verify(signed(claims(f"u-{i}"), rsa_pair(), kid="k1")))
        for i in range(3)
    ]
    assert len(fetches) == 1
    fetches[0].callback(json.dumps({"keys": [rsa_pair().jwk("k1")]}).encode())
    identities = await gatherResults(pending)
    assert [i.sub for i in identities] == ["u-0", "u-1", "u-2"]
