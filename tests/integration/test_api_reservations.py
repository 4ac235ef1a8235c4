"""The reservation protocol over HTTP: reserve, commit, release, and each refusal's status."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from tests.integration import api_harness
from tests.integration.api_harness import POOL, Api, running_api
from tokenpool.pool import PairStatus

api = api_harness.api  # the fixture: a running service with its own database



async def _reserve(api: Api, client, program: str = POOL):
    return await client.post("/v1/reservations", json={"program": program},
                             headers=await api.headers("reservations:write"))


async def _action(api: Api, client, reservation_id: str, action: str, card_ref: str | None = None):
    body = {"card_ref": card_ref} if action == "commit" else None
    return await client.post(f"/v1/reservations/{reservation_id}/{action}", json=body,
                             headers=await api.headers("reservations:write"))


async def test_a_reservation_is_committed_once_and_a_repeat_for_the_same_card_is_harmless(api: Api):
    pairs = await api.seed(3)
    async with api.client() as client:
        reserved = await _reserve(api, client)
        assert reserved.status_code == 201, reserved.text
        body = reserved.json()
        assert body["token_source"] == "pool"
        assert (body["internal_token"], body["external_ref"]) in {(p.internal_token, p.external_ref) for p in pairs}
        committed = await _action(api, client, body["reservation_id"], "commit", "card-9")
        repeated = await _action(api, client, body["reservation_id"], "commit", "card-9")
        other = await _action(api, client, body["reservation_id"], "commit", "card-10")
        release = await _action(api, client, body["reservation_id"], "release")
    assert committed.status_code == repeated.status_code == 200
    assert committed.json() == {"reservation_id": body["reservation_id"], "status": "committed", "card_ref": "card-9"}
    assert (other.status_code, other.json()["code"]) == (409, "RESERVATION_CONFLICT")
    assert (release.status_code, release.json()["code"]) == (409, "RESERVATION_CONFLICT")
    assert (await api.store.stats(POOL)).counts == {PairStatus.AVAILABLE: 2, PairStatus.USED: 1}


async def test_a_released_reservation_returns_its_pair_to_the_pool(api: Api):
    await api.seed(1)
    async with api.client() as client:
        body = (await _reserve(api, client)).json()
        released = await _action(api, client, body["reservation_id"], "release")
    assert released.json() == {"reservation_id": body["reservation_id"], "status": "released", "card_ref": None}
    assert (await api.store.stats(POOL)).counts == {PairStatus.AVAILABLE: 1}


async def test_an_unknown_reservation_is_a_404(api: Api):
    async with api.client() as client:
        unknown = await _action(api, client, str(uuid.uuid4()), "commit", "card")
        malformed = await _action(api, client, "nope", "release")
    assert (unknown.status_code, unknown.json()["code"]) == (404, "RESERVATION_NOT_FOUND")
    assert (malformed.status_code, malformed.json()["code"]) == (404, "RESERVATION_NOT_FOUND")


async def test_a_lapsed_lease_is_a_410(database_url, tome):
    async with running_api(database_url, tome, lease_seconds=0.3) as api:
        await api.seed(1)
        async with api.client() as client:
            body = (await _reserve(api, client)).json()
            await asyncio.sleep(0.5)  # past the lease
            response = await _action(api, client, body["reservation_id"], "commit", "card")
    assert (response.status_code, response.json()["code"]) == (410, "RESERVATION_LEASE_EXPIRED")


async def test_concurrent_reservations_get_distinct_pairs(api: Api):
    await api.seed(60)
    async with api.client() as client:
        responses = await asyncio.gather(*(_reserve(api, client) for _ in range(50)))
    assert [r.status_code for r in responses] == [201] * 50
    assert len({r.json()["internal_token"] for r in responses}) == 50
    assert (await api.store.stats(POOL)).counts == {PairStatus.AVAILABLE: 10, PairStatus.RESERVED: 50}


async def test_an_empty_pool_reserves_a_tome_pair_that_commits_like_any_other(api: Api):
    async with api.client() as client:
        reserved = await _reserve(api, client)
        body = reserved.json()
        committed = await _action(api, client, body["reservation_id"], "commit", "card-t")
    assert reserved.status_code == 201
    assert body["token_source"] == "tome"
    assert body["internal_token"] in api.tome.issued("NS1")
    assert committed.status_code == 200
    assert (await api.store.stats(POOL)).counts == {PairStatus.USED: 1}


async def test_an_empty_pool_with_tome_down_is_a_503(api: Api):
    api.tome.set_faults(outage=True)
    async with api.client() as client:
        response = await _reserve(api, client)
    assert (response.status_code, response.json()["code"]) == (503, "POOL_EXHAUSTED_TOME_UNAVAILABLE")
    assert api.sql("SELECT count(*) FROM token_pool") == [(0,)]


async def test_only_the_key_that_made_a_reservation_may_commit_or_release_it(api: Api):
    await api.seed(2)
    owner, _key = await api.keys.create("reservation-owner", ["reservations:write"])
    mine = {"Authorization": f"Bearer {_key}"}
    _other, other_key = await api.keys.create("another-service", ["reservations:write"])
    theirs = {"Authorization": f"Bearer {other_key}"}
    async with api.client() as client:
        reserved = (await client.post("/v1/reservations", json={"program": POOL}, headers=mine)).json()
        path = f"/v1/reservations/{reserved['reservation_id']}"
        foreign_commit = await client.post(f"{path}/commit", json={"card_ref": "card-x"}, headers=theirs)
        foreign_release = await client.post(f"{path}/release", headers=theirs)
        unknown_id = str(uuid.uuid4())
        unknown = await client.post(f"/v1/reservations/{unknown_id}/release", headers=theirs)
        still_held = api.sql("SELECT status, reserved_by, card_ref FROM token_pool WHERE reservation_id = %s",
                             reserved["reservation_id"])
        committed = await client.post(f"{path}/commit", json={"card_ref": "card-1"}, headers=mine)
        foreign_replay = await client.post(f"{path}/commit", json={"card_ref": "card-1"}, headers=theirs)
        own_replay = await client.post(f"{path}/commit", json={"card_ref": "card-1"}, headers=mine)
    # Another key's reservation answers exactly like one that does not exist: nothing to learn from it.
    for refused in (foreign_commit, foreign_release, foreign_replay):
        assert (refused.status_code, refused.json()["code"]) == (404, "RESERVATION_NOT_FOUND")
        assert refused.json()["detail"].replace(reserved["reservation_id"], "ID") == \
            unknown.json()["detail"].replace(unknown_id, "ID")
    assert still_held == [("RESERVED", owner.api_key_id, None)], "the pair is still its owner's, untouched"
    assert committed.status_code == own_replay.status_code == 200


async def test_a_released_pair_forgets_its_owner_and_the_database_refuses_to_move_a_reservation(api: Api):
    await api.seed(1)
    owner, key = await api.keys.create("releaser", ["reservations:write"])
    headers = {"Authorization": f"Bearer {key}"}
    async with api.client() as client:
        reserved = (await client.post("/v1/reservations", json={"program": POOL}, headers=headers)).json()
        assert api.sql("SELECT reserved_by FROM token_pool") == [(owner.api_key_id,)]
        # Not even the owner role can hand a held reservation to another key: the status machine's trigger.
        with pytest.raises(psycopg.errors.CheckViolation):
            api.sql("UPDATE token_pool SET reserved_by = gen_random_uuid() WHERE reservation_id = %s",
                    reserved["reservation_id"])
        released = await client.post(f"/v1/reservations/{reserved['reservation_id']}/release", headers=headers)
    assert released.status_code == 200
    assert api.sql("SELECT status, reservation_id, reserved_by FROM token_pool") == [("AVAILABLE", None, None)]
    with pytest.raises(psycopg.errors.CheckViolation):  # a free pair has no owner
        api.sql("UPDATE token_pool SET reserved_by = gen_random_uuid()")
