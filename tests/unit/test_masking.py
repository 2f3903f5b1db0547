"""No password in any message: `mask_password`, `Config` and the address helpers against
a corpus of DSN and Redis URL shapes (tests/unit/dsn_corpus.py).

For each shape: the masked text, and either ``repr(Config)`` and the ``host:port`` shown
in connection errors, or the `ConfigError` with its whole chain (``__cause__`` and
``__context__``, formatted as a traceback would be), hold no piece of the secret."""

from __future__ import annotations

import traceback

import pytest

from kyu_trio import Config, ConfigError
from kyu_trio._dsn import mask_password, postgres_address, redis_address
from tests.unit.dsn_corpus import POSTGRES_FORMS, REDIS_FORMS, fill, leaked


def everything_about(exc: BaseException) -> str:
    """Message, repr, args and formatted traceback of ``exc`` and of every exception
    chained to it, even a suppressed ``__context__``."""
    parts: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        parts += [str(current), repr(current), *map(str, current.args)]
        parts += traceback.format_exception(current)
        todo += [current.__cause__, current.__context__]
    return "\n".join(parts)


@pytest.mark.parametrize("form", POSTGRES_FORMS)
def test_postgres_dsn_shapes_never_show_the_password(form: str) -> None:
    dsn = fill(form, port=6543)
    assert leaked(mask_password(dsn)) == []
    assert leaked(mask_password(f"could not use {dsn}: it failed")) == []
    try:
        config = Config(dsn=dsn)
    except ConfigError as exc:
        assert "malformed PostgreSQL DSN" in str(exc)
        # Raised outside the parser's except block: nothing chained at all.
        assert exc.__cause__ is None and exc.__context__ is None
        assert leaked(everything_about(exc)) == []
        return
    assert leaked(repr(config) + str(config)) == []
    assert leaked(postgres_address(dsn)) == []


@pytest.mark.parametrize("form", REDIS_FORMS)
def test_redis_url_shapes_never_show_the_password(form: str) -> None:
    url = fill(form, port=6380)
    assert leaked(mask_password(url)) == []
    assert leaked(mask_password(f"Error connecting to {url}. Refused.")) == []
    try:
        config = Config(redis_url=url)
    except ConfigError as exc:
        assert "malformed Redis URL" in str(exc)
        assert exc.__cause__ is None and exc.__context__ is None
        assert leaked(everything_about(exc)) == []
        return
    assert leaked(repr(config) + str(config)) == []
    assert leaked(redis_address(url)) == []


def test_the_corpus_has_both_outcomes() -> None:
    """Shapes that parse and shapes that do not: both paths above are exercised."""
    outcomes = {"pg": set(), "redis": set()}
    for form in POSTGRES_FORMS:
        try:
            Config(dsn=fill(form))
            outcomes["pg"].add("ok")
        except ConfigError:
            outcomes["pg"].add("refused")
    for form in REDIS_FORMS:
        try:
            Config(redis_url=fill(form))
            outcomes["redis"].add("ok")
        except ConfigError:
            outcomes["redis"].add("refused")
    assert outcomes == {"pg": {"ok", "refused"}, "redis": {"ok", "refused"}}


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        # An unencoded '@': everything up to the last one is hidden.
        ("postgresql://u:pa@ss@h/db", "postgresql://u:***@h/db"),
        ("redis://:pa@ss@h:6379/0", "redis://:***@h:6379/0"),
        # Unquoted space in key=value form: up to the next keyword.
        ("host=h password=se cret dbname=x", "host=h password=*** dbname=x"),
        # Escapes in a quoted value, and a quote never closed.
        (r"host=h password='it\'s' dbname=x", "host=h password=*** dbname=x"),
        (r"host=h password='a\\' dbname=x", "host=h password=*** dbname=x"),
        ("host=h password='never closed dbname=x", "host=h password=***"),
        ("host=h sslpassword=k password=p", "host=h sslpassword=*** password=***"),
        ("postgresql://h/db?password=a&b&x=1", "postgresql://h/db?password=***&x=1"),
        ("postgresql://u:pw@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db"),
        ("postgresql://[::1]:5432/db?application_name=a@b", None),
        ("redis://h:6379/0", None),
        ("host=h user=password dbname=x", None),
    ],
)
def test_mask_password_shapes(raw: str, masked: str | None) -> None:
    assert mask_password(raw) == (raw if masked is None else masked)


@pytest.mark.parametrize(
    ("dsn", "hint"),
    [
        ("postgresql://u:pa@ss@h/db", "unencoded '@'"),
        ("postgresql://u:pa/ss@h/db", "unencoded '@'"),
        ("postgresql://u:p ss@h/db", "%20"),
        ("host=h password=se cret dbname=x", "quote values with spaces"),
        ("host=h password='se cret", "closing quote"),
        ("host=h bogus=1", "unknown connection option"),
        ("postgresql://u:pw@h:99999/db", "port is not a number"),
    ],
)
def test_malformed_dsn_says_what_is_wrong_without_quoting_it(dsn: str, hint: str) -> None:
    with pytest.raises(ConfigError, match="malformed PostgreSQL DSN") as info:
        Config(dsn=dsn)
    message = str(info.value)
    assert hint in message
    for piece in ("ss@h", "pa/ss", "cret", "99999"):
        assert piece not in message.split(": ", 1)[1], message


def test_ipv6_addresses_are_bracketed() -> None:
    assert postgres_address("postgresql://u@[::1]:6000/db") == "[::1]:6000"
    assert redis_address("redis://[::1]:6380/0") == "[::1]:6380"
