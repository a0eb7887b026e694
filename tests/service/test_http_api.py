"""The example service's HTTP API on both backends: statuses, ETags, If-Match, keyset pages."""

from __future__ import annotations

import asyncio

import httpx

from tests.service.conftest import MakeApp, serving


async def _create(client: httpx.AsyncClient, name: str, age: int = 30, **extra: str) -> int:
    response = await client.post("/users", json={"name": name, "age": age, **extra})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def test_post_answers_201_with_location_and_etag(client: httpx.AsyncClient) -> None:
    response = await client.post("/users", json={"name": "Ann", "age": 30, "email": "a@x.org"})
    assert response.status_code == 201
    body = response.json()
    assert body == {"id": body["id"], "name": "Ann", "age": 30, "email": "a@x.org", "version": 1}
    assert response.headers["ETag"] == '"1"'
    fetched = await client.get(response.headers["Location"])
    assert fetched.status_code == 200
    assert fetched.json() == body


async def test_get_carries_the_version_as_etag_and_honours_if_none_match(
    client: httpx.AsyncClient,
) -> None:
    user_id = await _create(client, "Bo")
    first = await client.get(f"/users/{user_id}")
    assert first.headers["ETag"] == '"1"'
    unchanged = await client.get(f"/users/{user_id}", headers={"If-None-Match": '"1"'})
    assert unchanged.status_code == 304
    await client.patch(f"/users/{user_id}", json={"age": 31})
    changed = await client.get(f"/users/{user_id}", headers={"If-None-Match": '"1"'})
    assert (changed.status_code, changed.headers["ETag"]) == (200, '"2"')


async def test_patch_with_the_current_version_applies_and_moves_the_etag(
    client: httpx.AsyncClient,
) -> None:
    user_id = await _create(client, "Cy")
    response = await client.patch(
        f"/users/{user_id}", json={"age": 41}, headers={"If-Match": '"1"'}
    )
    assert response.status_code == 200
    assert (response.json()["age"], response.json()["version"]) == (41, 2)
    assert response.headers["ETag"] == '"2"'
    starred = await client.patch(f"/users/{user_id}", json={"age": 42}, headers={"If-Match": "*"})
    assert starred.status_code == 200


async def test_patch_with_a_stale_if_match_answers_412_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    user_id = await _create(client, "Di")
    await client.patch(f"/users/{user_id}", json={"age": 50})
    stale = await client.patch(f"/users/{user_id}", json={"age": 99}, headers={"If-Match": '"1"'})
    assert stale.status_code == 412
    assert (await client.get(f"/users/{user_id}")).json()["age"] == 50


async def test_concurrent_patches_with_one_if_match_let_exactly_one_through(
    client: httpx.AsyncClient,
) -> None:
    user_id = await _create(client, "Ed")

    async def patch(age: int) -> int:
        response = await client.patch(
            f"/users/{user_id}", json={"age": age}, headers={"If-Match": '"1"'}
        )
        return response.status_code

    statuses = await asyncio.gather(*(patch(age) for age in range(20, 36)))
    assert sorted(statuses) == [200] + [412] * 15
    assert (await client.get(f"/users/{user_id}")).json()["version"] == 2


async def test_delete_answers_204_then_404_and_honours_if_match(client: httpx.AsyncClient) -> None:
    user_id = await _create(client, "Flo")
    assert (
        await client.delete(f"/users/{user_id}", headers={"If-Match": '"7"'})
    ).status_code == 412
    assert (await client.delete(f"/users/{user_id}")).status_code == 204
    assert (await client.get(f"/users/{user_id}")).status_code == 404
    assert (await client.delete(f"/users/{user_id}")).status_code == 404


async def test_list_walks_every_user_once_in_keyset_pages(client: httpx.AsyncClient) -> None:
    created = [await _create(client, f"user {n}", age=n) for n in range(23)]
    seen: list[int] = []
    url: str | None = "/users?limit=10"
    pages = 0
    while url is not None:
        response = await client.get(url)
        assert response.status_code == 200
        body = response.json()
        seen += [item["id"] for item in body["items"]]
        url = body["next"]
        if url is not None:
            assert response.headers["Link"] == f'<{url}>; rel="next"'
        else:
            assert "Link" not in response.headers
        pages += 1
    assert seen == created
    assert pages == 3


async def test_healthz_answers_without_asking_the_database(make_app: MakeApp) -> None:
    # A pool of 1 held by a unit of work: anything touching the database would wait.
    app = make_app(pool_size=1, max_overflow=0, pool_timeout=5)
    async with serving(app) as client, app.state.db.unit_of_work(read_only=True):
        response = await asyncio.wait_for(client.get("/healthz"), timeout=2)
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_metrics_endpoint_reports_the_units_of_work_it_served(
    client: httpx.AsyncClient,
) -> None:
    user_id = await _create(client, "Gus")
    await client.get(f"/users/{user_id}")
    await client.get("/users/0")
    body = (await client.get("/metrics")).json()
    units = body["units_of_work"]
    assert units["committed"] == 1
    assert units["read_only"] == 1
    assert units["failed"] == {"NotFoundError": 1}
    assert body["pools"]["primary"]["checked_out"] == 0
    assert body["connection_wait"]["count"] == 3
