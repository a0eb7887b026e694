"""Every error the service maps, provoked for real on both backends: the status, Retry-After
on 503, and bodies that never carry SQL, parameters, a driver message or a password."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from asyncdal import Database
from asyncdal.errors import StaleVersionError
from asyncdal.users import UserRepository
from examples.service.errors import status_of
from tests.faults._helpers_core import eventually
from tests.service._locks import holding
from tests.service.conftest import MakeApp, assert_nothing_leaks, serving
from tests.support import Backend


async def _checked_out(db: Database[Any]) -> bool:
    return db.metrics().pools["primary"].checked_out > 0


async def _create(client: httpx.AsyncClient, **fields: object) -> int:
    response = await client.post("/users", json={"name": "Ann", "age": 30, **fields})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def test_missing_user_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/users/424242")
    assert response.status_code == 404
    assert_nothing_leaks(response.text, "424242")


async def test_taken_email_is_409_without_the_email(client: httpx.AsyncClient) -> None:
    await _create(client, email="taken@example.com")
    response = await client.post(
        "/users", json={"name": "Bo", "age": 3, "email": "taken@example.com"}
    )
    assert response.status_code == 409
    assert_nothing_leaks(response.text, "taken@example.com", "uq_users_email")


async def test_stale_if_match_is_412(client: httpx.AsyncClient) -> None:
    user_id = await _create(client)
    await client.patch(f"/users/{user_id}", json={"age": 31})
    response = await client.patch(
        f"/users/{user_id}", json={"age": 32}, headers={"If-Match": '"1"'}
    )
    assert response.status_code == 412
    assert_nothing_leaks(response.text)


def test_a_stale_version_that_outlived_the_retries_is_412_not_503() -> None:
    assert status_of(StaleVersionError("UPDATE users ... version 3"))[0] == 412


async def test_malformed_cursor_is_400_without_echoing_it(client: httpx.AsyncClient) -> None:
    response = await client.get("/users", params={"after": "zz'; DROP TABLE users; --"})
    assert response.status_code == 400
    assert_nothing_leaks(response.text, "DROP TABLE", "zz'")


async def test_value_the_model_rejects_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/users", json={"name": "nul\u0000byte", "age": 3})
    assert response.status_code == 422
    assert_nothing_leaks(response.text, "nul", "byte")


async def test_invalid_body_is_422_without_echoing_the_input(client: httpx.AsyncClient) -> None:
    response = await client.post("/users", json={"name": "x" * 101 + "tail", "age": 3})
    assert response.status_code == 422
    assert response.json()["details"][0]["loc"] == ["body", "name"]
    assert_nothing_leaks(response.text, "xxxxtail")


async def test_work_outliving_the_request_timeout_is_504(
    make_app: MakeApp, backend: Backend
) -> None:
    async with serving(make_app(request_timeout=0.3, sqlite_busy_timeout=1)) as client:
        user_id = await _create(client)
        async with holding(backend, user_id):
            response = await client.patch(f"/users/{user_id}", json={"name": "secret-new-name"})
        assert response.status_code == 504
        assert_nothing_leaks(response.text, "secret-new-name")
        assert (await client.get(f"/users/{user_id}")).json()["name"] == "Ann"


async def test_transient_failure_left_after_retries_is_503_with_retry_after(
    make_app: MakeApp, backend: Backend
) -> None:
    # lock_timeout (PostgreSQL) and the busy timeout (SQLite) raise RetryableError; each of
    # run_in_transaction's attempts meets the same lock.
    app = make_app(lock_timeout=0.05, sqlite_busy_timeout=0.05)
    async with serving(app) as client:
        user_id = await _create(client)
        async with holding(backend, user_id):
            response = await client.patch(f"/users/{user_id}", json={"name": "secret-2"})
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert_nothing_leaks(response.text, "secret-2", "55P03", "busy")
        assert app.state.db.metrics().retries == {"RetryableError": 2}


async def test_exhausted_pool_is_503_with_retry_after(make_app: MakeApp, backend: Backend) -> None:
    app = make_app(pool_size=1, max_overflow=0, pool_timeout=0.2, sqlite_busy_timeout=10)
    async with serving(app) as client:
        user_id = await _create(client)
        async with holding(backend, user_id):
            # Holds the only connection, waiting for the lock.
            stuck = asyncio.create_task(client.patch(f"/users/{user_id}", json={"age": 5}))
            assert await eventually(lambda: _checked_out(app.state.db), within=5)
            response = await client.get(f"/users/{user_id}")
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert_nothing_leaks(response.text)
        assert (await stuck).status_code == 200


async def test_unexpected_error_is_a_bare_500(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("password=s3cret SELECT * FROM users WHERE email = 'x@y'")

    monkeypatch.setattr(UserRepository, "get_one", broken)
    async with serving(make_app(), raise_app_exceptions=False) as client:
        response = await client.get("/users/1")
    assert response.status_code == 500
    assert response.json() == {"error": "internal error"}
    assert_nothing_leaks(response.text, "s3cret", "x@y")
