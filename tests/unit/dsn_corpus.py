"""Connection strings holding secrets, in every shape we could think of: URL and
key=value forms, query-string passwords, IPv6 hosts, and passwords with the characters
that break naive parsers (``@ / ? # : % ' " \\``, spaces, newlines, non-ASCII).

Every secret is built from pieces (``SECRET_PIECES``) long enough that finding one in a
message means a leak; a password with an ``@`` in it is two pieces, so a masker that stops
at the first ``@`` is caught showing the second. ``{host}`` and ``{port}`` are filled in by
each test (an unreachable port for the connecting tests).
"""

from __future__ import annotations

A, B = "Tok3nAlpha", "Tok3nBravo"
#: A valid port number outside Linux's ephemeral range (no test's free port can be it).
DIGITS = "65001"
UNICODE = "Tök3nÄlpha"
SECRET_PIECES = (A, B, DIGITS, UNICODE)

POSTGRES_FORMS = [
    # URL form
    "postgresql://kyu:" + A + "@{host}:{port}/app",
    "postgres://kyu:" + A + "@{host}:{port}/app?sslmode=disable",
    "postgresql://kyu:" + A + "%40" + B + "@{host}:{port}/app",
    "postgresql://kyu:" + A + "@" + B + "@{host}:{port}/app",
    "postgresql://kyu:" + A + "/" + B + "@{host}:{port}/app",
    "postgresql://kyu:" + DIGITS + "/" + B + "@{host}:{port}/app",
    "postgresql://kyu:" + A + "?" + B + "@{host}:{port}/app",
    "postgresql://kyu:" + A + "#" + B + "@{host}:{port}/app",
    "postgresql://kyu:" + A + " " + B + "@{host}:{port}/app",
    "postgresql://kyu:" + A + ":" + B + "@{host}:{port}/app",
    "postgresql://kyu:" + A + "'" + B + "@{host}:{port}/app",
    "postgresql://kyu:" + A + '"' + B + "@{host}:{port}/app",
    "postgresql://kyu:" + A + "\\" + B + "@{host}:{port}/app",
    "postgresql://kyu:" + A + "%zz@{host}:{port}/app",
    "postgresql://kyu:" + UNICODE + "@{host}:{port}/app",
    "postgresql://kyu:" + A + "@{host}:notaport/app",
    "postgresql://kyu:" + A + "@{host}:{port},{host}:{port}/app?target_session_attrs=any",
    "postgresql://kyu:" + A + "@[::1]:{port}/app",
    "postgresql://kyu:" + A + "@[::1/app",
    "postgresql://kyu@{host}:{port}/app?password=" + A,
    "postgresql://kyu@{host}:{port}/app?sslmode=disable&password=" + A + "&connect_timeout=5",
    "postgresql://kyu@{host}:{port}/app?password=" + A + "&" + B,
    "postgresql://kyu@{host}:{port}/app?password=" + A + " " + B,
    "postgresql://kyu:" + A + "@{host}:{port}/app?sslpassword=" + B + "&passfile=/tmp/pgpass",
    "postgresql://kyu:" + A + "@{host}:{port}/app?application_name=me@example.com",
    # key=value form
    "host={host} port={port} user=kyu password=" + A + " dbname=app",
    "host={host} port={port} password='" + A + " " + B + "' dbname=app",
    "host={host} port={port} password=" + A + " " + B + " dbname=app",
    "host={host} port={port} password='" + A + "\\'" + B + "' dbname=app",
    "host={host} port={port} password='" + A + "\\\\' dbname=app",
    "host={host} port={port} password='" + A + " " + B,
    "host={host} port={port} password=" + A + "\\ " + B + " dbname=app",
    "host={host} port={port} password=" + A + "\n" + B + " dbname=app",
    'host={host} port={port} password="' + A + " " + B + '" dbname=app',
    "host={host} port={port} password = " + A + " dbname=app",
    "password=" + A + " host={host} port={port}",
    "host={host} port={port} password=" + A + "@" + B,
    "host={host} port={port} password=" + A + "=" + B + " dbname=app",
    "host={host} port={port} password=" + A + " " + B + "=x dbname=app",
    "host={host} port=notaport password=" + A,
    "host=::1 port={port} password=" + A,
    "host={host} port={port} sslpassword=" + A + " password=" + B + " passfile=/tmp/x",
    "host={host} port={port} PASSWORD=" + A,
]

REDIS_FORMS = [
    "redis://:" + A + "@{host}:{port}/0",
    "redis://default:" + A + "@{host}:{port}/0",
    "rediss://kyu:" + A + "@{host}:{port}/1?ssl_cert_reqs=none",
    "redis://{host}:{port}/0?password=" + A,
    "redis://{host}:{port}/0?password=" + A + " " + B + "&db=1",
    "redis://:" + A + "%40" + B + "@{host}:{port}/0",
    "redis://:" + A + "@" + B + "@{host}:{port}/0",
    "redis://:" + A + "/" + B + "@{host}:{port}/0",
    "redis://:" + DIGITS + "/" + B + "@{host}:{port}/0",
    "redis://:" + A + "?" + B + "@{host}:{port}/0",
    "redis://:" + A + "#" + B + "@{host}:{port}/0",
    "redis://:" + A + " " + B + "@{host}:{port}/0",
    "redis://:" + A + ":" + B + "@{host}:{port}/0",
    "redis://:" + UNICODE + "@{host}:{port}/0",
    "redis://:" + A + "@[::1]:{port}/0",
    "unix://:" + A + "@/tmp/kyu-no-such.sock?db=0",
    "redis://:" + A + "@{host}:notaport/0",
    "redis://:" + A + "@{host}:{port}/notadb",
    "redis://:" + A + "@{host}:{port}/0?socket_timeout=abc",
    "http://:" + A + "@{host}:{port}/0",
]


def fill(form: str, host: str = "127.0.0.1", port: int = 5432) -> str:
    return form.replace("{host}", host).replace("{port}", str(port))


def leaked(text: str) -> list[str]:
    """The secret pieces found in ``text``."""
    return [piece for piece in SECRET_PIECES if piece in text]
