"""asyncdal: the async data-access layer: Database -> UnitOfWork -> Repository[Model]."""

from importlib.metadata import PackageNotFoundError, version

from .database import Database as Database
from .database import PoolStatus as PoolStatus
from .repository import Page as Page
from .repository import Repository as Repository
from .settings import DatabaseSettings as DatabaseSettings
from .uow import UnitOfWork as UnitOfWork

try:
    __version__ = version("asyncdal")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "Database",
    "DatabaseSettings",
    "Page",
    "PoolStatus",
    "Repository",
    "UnitOfWork",
    "__version__",
]
