"""The kyu-trio web dashboard: an ASGI application (Starlette, Jinja2 templates) that
shows queues and jobs and acts on them through the library's own API.

Needs the ``dashboard`` extra (``pip install 'kyu-trio[dashboard]'``). Serve it with
``kyu-trio dashboard``, or mount it in a Starlette or FastAPI app.

Example::

    from fastapi import FastAPI
    from kyu_trio.dashboard import BasicAuth, create_app

    api = FastAPI()
    api.mount("/kyu", create_app(dsn=os.environ["KYU_DSN"], auth=BasicAuth("ops", password)))
"""

from .._errors import require_extra

# python-multipart parses the forms (Starlette imports it as python_multipart).
for _module in ("starlette", "jinja2", "python_multipart"):
    require_extra(_module, extra="dashboard", feature="the web dashboard")
del _module

from ._app import create_app as create_app  # noqa: E402
from ._config import BasicAuth as BasicAuth  # noqa: E402
from ._config import BearerAuth as BearerAuth  # noqa: E402
from ._config import DashboardConfig as DashboardConfig  # noqa: E402
from ._db import DashboardError as DashboardError  # noqa: E402
from ._db import StatementTimeout as StatementTimeout  # noqa: E402

__all__ = [
    "BasicAuth",
    "BearerAuth",
    "DashboardConfig",
    "DashboardError",
    "StatementTimeout",
    "create_app",
]
