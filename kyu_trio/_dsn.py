"""Pure helpers for connection strings: where they point, and how to show them safely.

Every error raised here is built outside the ``except`` block that caught the parser's
error: psycopg's and urllib's messages quote parts of the string (a password included),
and an exception raised inside the block would carry them along as ``__context__``, to
be printed by any traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import suppress
from typing import Any
from urllib.parse import urlsplit

from ._errors import ConfigError

# URL form: everything from the first ':' of the user info up to the LAST '@' of the
# text. A password with an unencoded '@', '/', '?' or space is not parsed the way its
# owner meant, so no boundary inside it can be trusted; hiding too much is the safe way
# to be wrong.
_URL_PASSWORD = re.compile(
    r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@?#\[\]]*:)(?P<secret>.*)@", re.DOTALL
)
# ?password=... / &sslpassword=...: up to the next "&name=" (a password may hold '&').
_QUERY_PASSWORD = re.compile(
    r"(?P<head>[?&](?:ssl)?password=)(?P<secret>.*?)(?=&[A-Za-z_][\w.-]*=|\Z)",
    re.IGNORECASE | re.DOTALL,
)
# key=value form: a quoted value (backslash escapes, maybe unterminated), or an unquoted
# one up to the next of libpq's keywords: libpq stops at a space, but "password=se cret"
# most likely means the password "se cret", and its error would quote "cret".
_NEXT_KEYWORD = (
    r"\s+(?:application_name|channel_binding|client_encoding|connect_timeout|dbname"
    r"|fallback_application_name|gssdelegation|gssencmode|gsslib|host|hostaddr|keepalives"
    r"|keepalives_count|keepalives_idle|keepalives_interval|krbsrvname|load_balance_hosts"
    r"|max_protocol_version|min_protocol_version|options|passfile|password|port|replication"
    r"|require_auth|requirepeer|service|ssl_max_protocol_version|ssl_min_protocol_version"
    r"|sslcert|sslcertmode|sslcompression|sslcrl|sslcrldir|sslkey|sslmode|sslnegotiation"
    r"|sslpassword|sslrootcert|sslsni|target_session_attrs|tcp_user_timeout|user)\s*="
)
_KV_PASSWORD = re.compile(
    r"(?P<head>(?<![?&\w])(?:ssl)?password\s*=\s*)"
    rf"(?P<secret>'(?:\\.|[^'\\])*(?:'|.*)|.*?(?={_NEXT_KEYWORD}|\Z))",
    re.IGNORECASE | re.DOTALL,
)

_SHOWN_LENGTH = 300


def mask_password(text: str) -> str:
    """Replace every password in a DSN/URL (or in a message quoting one) with ``***``.

    >>> mask_password("postgresql://u:secret@h:5432/db")
    'postgresql://u:***@h:5432/db'
    """
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + "***@", text)
    text = _QUERY_PASSWORD.sub(lambda m: m.group("head") + "***", text)
    return _KV_PASSWORD.sub(lambda m: m.group("head") + "***", text)


def _shown(text: str) -> str:
    """A connection string for an error message: masked, quoted, and not too long."""
    masked = repr(mask_password(text))
    return masked if len(masked) <= _SHOWN_LENGTH else masked[: _SHOWN_LENGTH - 4] + "...'"


#: What a parser's message means, said without quoting any part of the string (psycopg
#: quotes pieces of the DSN, e.g. ``missing "=" after "cret"``, where "cret" may be the
#: end of a password).
_REASONS = (
    (r"missing \"=\" after", "a word without '=' (quote values with spaces: x='a b')"),
    (r"unterminated quoted string", "a quoted value without its closing quote"),
    (r"invalid connection option", "an unknown connection option"),
    (r"unexpected spaces found", "a space in the URL (write it as %20)"),
    (r"invalid percent-encoded token", "an invalid percent-encoded character (use %XX)"),
    (r"forbidden value %00", "a NUL character (%00)"),
    (r"IPv6 host address|matching \"]\"", "a malformed IPv6 address (write it as [::1])"),
    (r"unexpected character", "an unexpected character in the URL"),
    (r"key/value separator|invalid URI query parameter", "a malformed query parameter"),
    (r"Invalid value for '(?P<name>[a-z_]+)' in connection URL", "bad value for {name}"),
)


def _safe_reason(message: str) -> str:
    for pattern, reason in _REASONS:
        found = re.search(pattern, message)
        if found is not None:
            return reason.format(**found.groupdict())
    return "it cannot be parsed"


_ENCODE_HINT = (
    "special characters in a user name or password must be percent-encoded: "
    "'@' as %40, '/' as %2F, ':' as %3A, '?' as %3F, '#' as %23, a space as %20"
)


def _url_shape_problem(dsn: str) -> str | None:
    """Why a URL-form DSN would not be read as its owner meant, following libpq: the
    user info ends at the first '@' seen before any '/', and a later unencoded '@' ends
    up in the host or database name (quoting the rest of the password in every error)."""
    _scheme, _, rest = dsn.partition("://")
    cut = re.search(r"[@/]", rest)
    if cut is not None and cut.group() == "@":
        rest = rest[cut.end() :]
    if "@" in rest.split("?", 1)[0]:
        return f"an unencoded '@' after the user info ({_ENCODE_HINT})"
    return None


def postgres_address(dsn: str) -> str:
    """``host:port`` of a PostgreSQL DSN (URL or key=value form), for error messages."""
    from psycopg.conninfo import conninfo_to_dict

    problem: str | None = None
    params: dict[str, Any] = {}
    try:
        params = conninfo_to_dict(dsn)
    except Exception as exc:  # psycopg's message quotes the DSN, password included
        problem = _safe_reason(str(exc))
    if problem is None and re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://", dsn):
        problem = _url_shape_problem(dsn)
    if problem is not None:
        raise ConfigError(f"malformed PostgreSQL DSN {_shown(dsn)}: {problem}")
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    if not all(p.isdigit() and 0 < int(p) < 65536 for p in port.split(",")):
        # Not echoed: after an unencoded '/' in a password, the port is a piece of it.
        raise ConfigError(
            f"malformed PostgreSQL DSN {_shown(dsn)}: the port is not a number 1-65535 "
            f"({_ENCODE_HINT})"
        )
    return _host_port(host, port)


def _host_port(host: str, port: object) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def redis_address(url: str) -> str:
    """``host:port`` (or socket path) of a Redis URL, for error messages."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    port: int | None = None
    with suppress(ValueError):  # raised below: its message quotes the port (or a password)
        port = parts.port or 6379
    if port is None:
        raise ConfigError(
            f"malformed Redis URL {_shown(url)}: the port is not a number 1-65535 ({_ENCODE_HINT})"
        )
    return _host_port(parts.hostname or "localhost", port)


def validate_redis_url(url: str) -> None:
    """Refuse, up front, every URL that redis-py would refuse when connecting."""
    from redis import connection

    parse_url: Callable[[str], dict[str, Any]] = connection.parse_url
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"malformed Redis URL {_shown(url)}: "
            "expected redis://host:port/db, rediss://... or unix:///path"
        )
    redis_address(url)
    db = parts.path.lstrip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ConfigError(
            f"malformed Redis URL {_shown(url)}: the database is not a number ({_ENCODE_HINT})"
        )
    problem: str | None = None
    try:
        parse_url(url)
    except Exception as exc:  # ValueError quoting a part of the URL
        problem = _safe_reason(str(exc))
    if problem is not None:
        raise ConfigError(f"malformed Redis URL {_shown(url)}: {problem}")
