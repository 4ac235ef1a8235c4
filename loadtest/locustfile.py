"""The realistic mix against any tokenpool deployment, for Locust.

    TOKENPOOL_API_KEY=tpk_... locust -f loadtest/locustfile.py --headless -u 50 -r 10 -t 60s \
        --host http://127.0.0.1:8000

Per simulated user, weights 4 : 1 : 1 — card creation, detokenize of the user's most recent cards'
external refs (up to 5 per request), read of a recent card — with 0.1-1 s think time. The key needs
the scopes cards:write, cards:read and tokens:detokenize (`tokenpool apikey create --name load
--scopes cards:write,cards:read,tokens:detokenize --json`).

Environment: ``TOKENPOOL_API_KEY`` (required), ``TOKENPOOL_LOADTEST_PROGRAM`` (card program, default
``default``). Every request has a 10 s timeout. An error answer is a failure in Locust's statistics,
named by its problem code. For exact arrival rates (the day in miniature, bursts, capacity) use
``python -m bench.e2e``: Locust users are closed loops, so their rate follows the server's latency.
"""

from __future__ import annotations

import os
import random
import uuid
from collections import deque

from locust import HttpUser, between, task

PROGRAM = os.environ.get("TOKENPOOL_LOADTEST_PROGRAM", "default")
TIMEOUT_S = 10.0
RECENT = 50  # cards each user remembers for detokenize and reads
DETOKENIZE_BATCH = 5


class CardServiceUser(HttpUser):
    wait_time = between(0.1, 1.0)

    def on_start(self) -> None:
        key = os.environ.get("TOKENPOOL_API_KEY")
        if not key:
            raise RuntimeError("set TOKENPOOL_API_KEY to a key with cards:write, cards:read, tokens:detokenize")
        self.client.headers["Authorization"] = f"Bearer {key}"
        self.recent: deque[tuple[str, str]] = deque(maxlen=RECENT)  # (card_id, external_ref)

    @task(4)
    def create_card(self) -> None:
        body = {"program": PROGRAM, "customer_ref": f"locust-{uuid.uuid4().hex[:16]}"}
        with self.client.post("/v1/cards", json=body, timeout=TIMEOUT_S, catch_response=True,
                              name="POST /v1/cards") as response:
            if response.status_code != 201:
                response.failure(_problem(response))
                return
            card = response.json()
            self.recent.append((card["card_id"], card["external_ref"]))

    @task(1)
    def detokenize_recent(self) -> None:
        if not self.recent:
            return
        refs = [ref for _card, ref in list(self.recent)[-DETOKENIZE_BATCH:]]
        with self.client.post("/v1/detokenize", json={"external_refs": refs}, timeout=TIMEOUT_S,
                              catch_response=True, name="POST /v1/detokenize") as response:
            if response.status_code != 200:
                response.failure(_problem(response))
            elif any(item["internal_token"] is None for item in response.json()["results"]):
                response.failure("a ref of a card this user created did not detokenize")

    @task(1)
    def read_card(self) -> None:
        if not self.recent:
            return
        card_id, _ref = random.choice(self.recent)
        with self.client.get(f"/v1/cards/{card_id}", timeout=TIMEOUT_S, catch_response=True,
                             name="GET /v1/cards/{card_id}") as response:
            if response.status_code != 200:
                response.failure(_problem(response))


def _problem(response: object) -> str:
    status = getattr(response, "status_code", 0)
    try:
        code = response.json().get("code")  # type: ignore[attr-defined]
    except ValueError:
        code = None
    return f"{status} {code or ''}".strip()
