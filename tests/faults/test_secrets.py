"""Secrets: a URL's password appears in no repr, no error and no log line.

Passwords in the authority, in ``?password=``, and ones holding ``@`` and ``%`` (percent-encoded in
the URL). Checked in its raw and encoded forms, against reprs, the full formatted chain of every
error (a refused port, a malformed URL, bad settings) and everything logged at DEBUG with
``echo=True`` while a real PostgreSQL connection works, as a role of the test's own whose
password is the secret (a trust server ignores it, a password server checks it).
"""

from __future__ import annotations

import logging
import socket
import traceback
import uuid
from collections.abc import AsyncIterator
from urllib.parse import quote

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from asyncdal import Database, DatabaseSettings
from asyncdal.errors import ConfigurationError, DataAccessError, UnavailableError
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork
from tests.support import Backend, pg_admin_dsn

SECRET = "S3cr3t-p@ss%w0rd"
ENCODED = quote(SECRET, safe="")  # S3cr3t-p%40ss%25w0rd
FORMS = (SECRET, ENCODED, "S3cr3t")


def _with_password(url: str, where: str) -> str:
    parsed = make_url(url)
    authority = f"{parsed.username}:{ENCODED}@" if where == "authority" else f"{parsed.username}@"
    query = f"?password={ENCODED}" if where == "query" else ""
    port = f":{parsed.port}" if parsed.port else ""
    return f"postgresql+asyncpg://{authority}{parsed.host}{port}/{parsed.database}{query}"


def _assert_hidden(text: str, where: str) -> None:
    leaked = [form for form in FORMS if form in text]
    assert leaked == [], f"the password leaked into {where}: {text[:2000]}"


def _full(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PLACES = ["authority", "query"]


@pytest.mark.parametrize("where", PLACES)
async def test_password_is_in_no_repr(where: str) -> None:
    url = _with_password("postgresql://u@127.0.0.1:5432/app", where)
    settings = DatabaseSettings(url, application_name="asyncdal-faults-secrets")
    db = Database(settings, unit_of_work=UserUnitOfWork)
    try:
        assert make_url(settings.url).password == SECRET or SECRET in str(
            make_url(settings.url).query
        )
        for text, place in [
            (repr(settings), "repr(DatabaseSettings)"),
            (str(settings), "str(DatabaseSettings)"),
            (repr(db), "repr(Database)"),
            (db.url, "Database.url"),
            (settings.masked_url, "masked_url"),
            (repr(db.unit_of_work()), "repr(UnitOfWork)"),
            (str(db.engine.url), "str(engine.url)"),
            (repr(db.engine), "repr(AsyncEngine)"),
            (repr(db.engine.sync_engine), "repr(Engine)"),
        ]:
            _assert_hidden(text, place)
    finally:
        await db.dispose()


@pytest.mark.parametrize("where", PLACES)
async def test_password_is_in_no_connection_error(where: str) -> None:
    url = _with_password(f"postgresql://u@127.0.0.1:{_free_port()}/app", where)
    db = Database(
        DatabaseSettings(url, application_name="asyncdal-faults-secrets", connect_timeout=2)
    )
    try:
        with pytest.raises(UnavailableError) as raised:
            async with db.unit_of_work():
                pass
        _assert_hidden(_full(raised.value), "the UnavailableError chain")
    finally:
        await db.dispose()


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+asyncpg://u:{ENCODED}@127.0.0.1:notaport/app",
        f"postgresql+asyncpg://u:{ENCODED}@[::1/app",
        f"mysql://u:{ENCODED}@127.0.0.1/app",
        f"://u:{ENCODED}@host/app",
    ],
    ids=["bad-port", "bad-host", "unsupported-driver", "no-scheme"],
)
def test_password_is_in_no_configuration_error(url: str) -> None:
    with pytest.raises((ConfigurationError, DataAccessError)) as raised:
        Database(DatabaseSettings(url, application_name="asyncdal-faults-secrets"))
    _assert_hidden(_full(raised.value), "the ConfigurationError chain")


@pytest.mark.parametrize("where", PLACES)
def test_password_is_in_no_settings_error(where: str) -> None:
    url = _with_password("postgresql://u@127.0.0.1:5432/app", where)
    for bad in ({"pool_size": 0}, {"statement_timeout": -1}, {"application_name": ""}):
        with pytest.raises(ConfigurationError) as raised:
            DatabaseSettings(url, **bad)
        _assert_hidden(_full(raised.value), f"the error for {bad}")
    with pytest.raises(ConfigurationError) as raised:
        DatabaseSettings.from_env({"DATABASE_URL": url, "ASYNCDAL_POOL_SIZE": "many"})
    _assert_hidden(_full(raised.value), "the from_env() error")


@pytest.fixture
async def secret_role_url(backend: Backend) -> AsyncIterator[str]:
    """The backend's database, as a new login role whose password is ``SECRET``; dropped after.

    Its own role, so that the test never changes a password others rely on, and the secret is
    really sent and checked where the server asks for passwords (the embedded one does).
    """
    role = f"asyncdal_secrets_{uuid.uuid4().hex[:8]}"
    database = make_url(backend.url).database or "postgres"
    admin = await asyncpg.connect(pg_admin_dsn(backend.url, database))
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{SECRET}'")
        await admin.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        await admin.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
        yield make_url(backend.url).set(username=role, password=None).render_as_string()
    finally:
        await admin.execute(f"DROP OWNED BY {role}")  # the grants, in this database
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()


@pytest.mark.only_backend("postgres")  # a SQLite URL has no password
@pytest.mark.parametrize("where", PLACES)
async def test_password_is_in_no_log_line_at_debug_with_echo(
    secret_role_url: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    where: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = _with_password(secret_role_url, where)
    db = Database(
        DatabaseSettings(url, application_name="asyncdal-faults-secrets", echo=True),
        unit_of_work=UserUnitOfWork,
    )
    try:
        async with db.unit_of_work() as uow:
            await uow.users.add(User(name="logged", age=1))
            await uow.rollback()

        async def fail(uow: UserUnitOfWork) -> None:
            await uow.users.get_one(-1)

        with pytest.raises(DataAccessError):
            await db.run_in_transaction(fail)
    finally:
        await db.dispose()
    assert caplog.records, "nothing was logged: the check would be empty"
    for record in caplog.records:
        _assert_hidden(f"{record.name} {record.getMessage()} {record.args!r}", "a log record")
    _assert_hidden(caplog.text, "the captured log")
    _assert_hidden(capsys.readouterr().out, "echo's stdout")
