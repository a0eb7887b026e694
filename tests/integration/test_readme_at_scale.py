"""The README's "Data at scale" block runs as written, on both backends."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from asyncdal import Database
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork

README = Path(__file__).resolve().parents[2] / "README.md"


def _block() -> str:
    section = README.read_text().split("### Data at scale", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None
    return found.group(1)


async def test_readme_data_at_scale_block_runs(
    db: Database[UserUnitOfWork], capsys: pytest.CaptureFixture[str]
) -> None:
    namespace: dict[str, Any] = {
        "Database": Database,
        "UserUnitOfWork": UserUnitOfWork,
        "User": User,
    }
    exec(compile(_block(), str(README), "exec"), namespace)  # the README's own code
    await namespace["at_scale"](db)
    assert "committed" in capsys.readouterr().out
    async with db.unit_of_work(read_only=True) as uow:
        assert await uow.users.count(name="senior") == 1_000
        assert await uow.users.count(User.age < 5) == 0
        assert await uow.users.get_by_email("bob@example.com") is not None
