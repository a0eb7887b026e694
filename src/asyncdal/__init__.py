"""asyncdal: the async data-access layer: Database -> UnitOfWork -> Repository[Model].

The names below load on first use (PEP 562): importing ``asyncdal`` alone imports nothing heavy,
so the pytest plugin (``asyncdal.testing``, loaded by every pytest run in an environment where
asyncdal is installed) costs an unrelated project nothing. ``from asyncdal import Database``
works as ever.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .database import Database as Database
    from .database import PoolStatus as PoolStatus
    from .repository import Page as Page
    from .repository import Repository as Repository
    from .settings import DatabaseSettings as DatabaseSettings
    from .uow import UnitOfWork as UnitOfWork

    __version__: str

_HOMES = {
    "Database": ".database",
    "DatabaseSettings": ".settings",
    "Page": ".repository",
    "PoolStatus": ".database",
    "Repository": ".repository",
    "UnitOfWork": ".uow",
}

__all__ = [
    "Database",
    "DatabaseSettings",
    "Page",
    "PoolStatus",
    "Repository",
    "UnitOfWork",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value: Any = version("asyncdal")
        except PackageNotFoundError:  # pragma: no cover - a source tree without install
            value = "0.0.0"
    elif name in _HOMES:
        value = getattr(import_module(_HOMES[name], __name__), name)
    else:
        raise AttributeError(f"module 'asyncdal' has no attribute {name!r}")
    globals()[name] = value  # once loaded, a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
