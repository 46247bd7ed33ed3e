"""An application's token endpoint for wschat's browser client (--client-token-url), in full.

    python docs/examples/token_backend.py --secret-file jwt.secret --port 8090 \
        --chat-origin https://chat.example.com --users users.json

Your application has its own sessions; this one pretends: `users.json` maps a `session`
cookie's value to a user ({"s3cret-session": {"id": "u-123", "name": "Alice"}}). The browser
client fetches GET /chat-token with the user's cookies and gets {"token": "<jwt>"}: a
10-minute HS256 token naming the user, which it sends to wschat and refreshes before it runs
out. Only the standard library and PyJWT; the tests run this very file.
"""

from __future__ import annotations

import argparse
import json
import time
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt

TOKEN_LIFETIME_S = 600


def chat_token(
    user: dict[str, str], secret: bytes, audience: str | None, lifetime_s: int = TOKEN_LIFETIME_S
) -> str:
    """The claims wschat reads: sub, name, exp; rooms and admin when you need them."""
    claims: dict[str, object] = {
        "sub": user["id"],
        "name": user["name"],
        "exp": int(time.time()) + lifetime_s,
    }
    for optional in ("rooms", "admin"):
        if optional in user:
            claims[optional] = user[optional]
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")


def serve(
    secret: bytes,
    port: int,
    chat_origin: str,
    users: dict[str, dict[str, str]],
    audience: str | None,
    lifetime_s: int,
) -> None:
    class TokenHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            cookie = SimpleCookie(self.headers.get("cookie", ""))
            session = cookie["session"].value if "session" in cookie else None
            user = users.get(session or "")
            if self.path != "/chat-token" or user is None:
                self.answer(401, {"error": "sign in to the application first"})
                return
            self.answer(200, {"token": chat_token(user, secret, audience, lifetime_s)})

        def answer(self, status: int, body: dict[str, str]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("cache-control", "no-store")
            # The chat page is on another origin: let it read the answer, with cookies.
            self.send_header("access-control-allow-origin", chat_origin)
            self.send_header("access-control-allow-credentials", "true")
            self.send_header("vary", "origin")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), TokenHandler).serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secret-file", required=True)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--chat-origin", required=True, help="the origin of the chat page")
    parser.add_argument("--users", required=True, help="JSON: session cookie -> user")
    parser.add_argument("--audience", help="the aud wschat expects (--jwt-audience)")
    parser.add_argument("--lifetime", type=int, default=TOKEN_LIFETIME_S, help="seconds")
    args = parser.parse_args()
    secret = Path(args.secret_file).read_bytes().rstrip(b"\r\n")
    users = json.loads(Path(args.users).read_text("utf-8"))
    serve(secret, args.port, args.chat_origin, users, args.audience, args.lifetime)


if __name__ == "__main__":
    main()
