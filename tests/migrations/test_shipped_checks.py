"""asyncdal's own revisions pass the migration checks it ships for users' revisions
(``asyncdal.testing.MigrationChecks``), on both backends; and those checks catch what they
promise to: models ahead of the revisions, two heads, a downgrade that fails."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from sqlalchemy.engine import URL, make_url

from asyncdal.testing import MigrationChecks
from tests.support import require_postgres

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(
    params=[
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def asyncdal_url(request: pytest.FixtureRequest, tmp_path: Path) -> URL:
    """Each check on both backends (the plugin's default is one URL for the session)."""
    if request.param == "postgres":
        return make_url(await require_postgres())
    return make_url(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}")


class TestAsyncdalRevisions(MigrationChecks):
    """The three shipped checks, on asyncdal's packaged revisions."""


#: A user's project: asyncdal's revisions copied, then broken three ways.
BROKEN_PROJECT_CONFTEST = """
import pytest
from alembic.config import Config
from sqlalchemy import Column, String

import asyncdal.models

# Models ahead of the revisions: a column no revision adds.
asyncdal.models.User.__table__.append_column(Column("nickname", String(50)))


@pytest.fixture(scope="session")
def asyncdal_alembic_config():
    config = Config()
    config.set_main_option("script_location", {location!r})
    return config
"""

SECOND_HEAD = '''
"""a branch no one merged"""

import sqlalchemy as sa
from alembic import op

revision = "0002a"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("extras", sa.Column("id", sa.Integer, primary_key=True))


def downgrade() -> None:
    pass  # forgets to drop the table
'''


def test_the_checks_fail_on_drifted_models_two_heads_and_a_leaky_downgrade(
    pytester: pytest.Pytester,
) -> None:
    scripts = pytester.path / "alembic"
    (scripts / "versions").mkdir(parents=True)
    for name in ("env.py", "script.py.mako", "versions/0001_users_and_posts.py"):
        (scripts / name).write_text((REPO / "alembic" / name).read_text())
    second = pytester.path / "alembic/versions/0002a_extras.py"
    second.write_text(SECOND_HEAD)
    (pytester.path / "alembic/versions/0002b_other.py").write_text(
        SECOND_HEAD.replace('"0002a"', '"0002b"').replace('"extras"', '"others"')
    )
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest(BROKEN_PROJECT_CONFTEST.format(location=str(scripts)))
    pytester.makepyfile(
        test_migrations=textwrap.dedent(
            """\
            from asyncdal.testing import MigrationChecks

            class TestMigrations(MigrationChecks):
                pass
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=3)
    output = result.stdout.str()
    assert "expected one head revision, found ['0002a', '0002b']" in output
    result.stdout.fnmatch_lines(["*upgrade base -> head failed*Multiple head revisions*"])
    second.unlink()  # one head again: now the leaky downgrade and the drift show
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
    assert "downgrade to base left tables behind: ['others']" in result.stdout.str()
    result.stdout.fnmatch_lines(
        ["*the models and the head revision differ*", "*'add_column', None, 'users'*nickname*"]
    )
