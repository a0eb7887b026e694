"""The public surface changes only on purpose."""

from __future__ import annotations

import asyncdal


def test_all_is_pinned() -> None:
    assert asyncdal.__all__ == [
        "Database",
        "DatabaseSettings",
        "Page",
        "PoolStatus",
        "Repository",
        "UnitOfWork",
        "__version__",
    ]
    assert sorted(asyncdal.__all__) == asyncdal.__all__


def test_version_comes_from_package_metadata() -> None:
    assert asyncdal.__version__ == "0.1.0"


def test_contract_names_import() -> None:
    from asyncdal.errors import (  # noqa: F401
        ConflictError,
        DataAccessError,
        InvalidQueryError,
        NotFoundError,
    )
    from asyncdal.models import Base, User  # noqa: F401
    from asyncdal.users import UserRepository, UserUnitOfWork  # noqa: F401
