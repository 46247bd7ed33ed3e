"""`--history-db postgresql://...`: which values name PostgreSQL, and the libpq connection string
made from one, with the password from a file and never from the command line."""

from __future__ import annotations

from pathlib import Path

import psycopg.conninfo

SCHEMES = ("postgresql://", "postgres://")
# libpq's default is to wait for ever; a node whose database is out of reach must say so soon.
CONNECT_TIMEOUT_S = 5
# A database host that vanishes without a reset (a partition, a failover in progress) is noticed
# after this long, instead of the kernel's two hours of keepalive or minutes of retransmits.
TCP_USER_TIMEOUT_MS = 5000
KEEPALIVES_IDLE_S = 5
KEEPALIVES_INTERVAL_S = 2
KEEPALIVES_COUNT = 3
# A statement that runs longer is cancelled: a request never waits longer for the database.
STATEMENT_TIMEOUT_MS = 5000


def is_postgres_url(value: str) -> bool:
    return value.startswith(SCHEMES)


def conninfo(url: str, password_file: str | None = None) -> str:
    """The libpq connection string for `url`, with the password read from `password_file` (its
    first line) and wschat's timeouts added where the URL sets none. TLS is as the URL asks
    (`sslmode=verify-full&sslrootcert=...` checks the server's certificate and name).
    ValueError: the URL does not parse, or holds a password."""
    if not is_postgres_url(url):
        raise ValueError(f"{url!r} is not a postgresql:// URL")
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"the PostgreSQL URL does not parse: {exc}") from None
    if "password" in params:
        raise ValueError(
            "the PostgreSQL URL holds a password, which `ps` shows to every user: put it in "
            "--history-db-password-file (or libpq's PGPASSFILE or ~/.pgpass)"
        )
    extra: dict[str, str | int] = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "keepalives": 1,
        "keepalives_idle": KEEPALIVES_IDLE_S,
        "keepalives_interval": KEEPALIVES_INTERVAL_S,
        "keepalives_count": KEEPALIVES_COUNT,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
        "application_name": "wschat",
    }
    for key, value in extra.items():
        params.setdefault(key, value)
    options = str(params.get("options", ""))
    if "statement_timeout" not in options:
        params["options"] = f"{options} -c statement_timeout={STATEMENT_TIMEOUT_MS}".strip()
    if password_file is not None:
        params["password"] = read_password(password_file)
    return psycopg.conninfo.make_conninfo("", **params)


def read_password(path: str) -> str:
    """The file's first line. OSError or ValueError (empty) stop start-up."""
    lines = Path(path).read_text("utf-8").splitlines()
    if not lines or not lines[0]:
        raise ValueError(f"{path} holds no password on its first line")
    return lines[0]


def redacted(url: str) -> str:
    """What a log line may say of the database: host, port and name."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://?"
    host = params.get("host", "")
    port = params.get("port", "")
    return f"postgresql://{host}{':' if port else ''}{port}/{params.get('dbname', '')}"
