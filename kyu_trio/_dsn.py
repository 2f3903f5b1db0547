"""Pure helpers for connection strings: where they point, and how to show them safely."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from ._errors import ConfigError

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]*(?P<tail>@)")
_KV_PASSWORD = re.compile(
    r"(?P<head>(?<![?&])\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE
)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)[^&\s]*", re.IGNORECASE)


def mask_password(text: str) -> str:
    """Replace every password in a DSN/URL (or in a message quoting one) with ``***``.

    >>> mask_password("postgresql://u:secret@h:5432/db")
    'postgresql://u:***@h:5432/db'
    """
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + "***" + m.group("tail"), text)
    text = _KV_PASSWORD.sub(lambda m: m.group("head") + "***", text)
    return _QUERY_PASSWORD.sub(lambda m: m.group("head") + "***", text)


def postgres_address(dsn: str) -> str:
    """``host:port`` of a PostgreSQL DSN (URL or key=value form), for error messages."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except Exception as exc:  # psycopg raises ProgrammingError with the DSN in it
        raise ConfigError(f"malformed PostgreSQL DSN {mask_password(dsn)!r}") from exc
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    if not all(p.isdigit() and 0 < int(p) < 65536 for p in port.split(",")):
        raise ConfigError(f"malformed PostgreSQL DSN {mask_password(dsn)!r}: bad port {port!r}")
    return f"{host}:{port}"


def redis_address(url: str) -> str:
    """``host:port`` (or socket path) of a Redis URL, for error messages."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    try:
        port = parts.port or 6379
    except ValueError as exc:
        raise ConfigError(f"malformed Redis URL {mask_password(url)!r}: bad port") from exc
    return f"{parts.hostname or 'localhost'}:{port}"


def validate_redis_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"malformed Redis URL {mask_password(url)!r}: "
            "expected redis://host:port/db, rediss://... or unix:///path"
        )
    redis_address(url)
    db = parts.path.lstrip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ConfigError(
            f"malformed Redis URL {mask_password(url)!r}: the database must be a number"
        )
