"""A Python client generated from the service's own OpenAPI document works against the running service.

``openapi-python-client`` (a dev dependency) generates the client into a temporary folder from the document
the running server serves; the test imports it and creates a card and detokenizes its external_ref through
the generated ``create_card`` and ``detokenize`` (named after the operationIds), then reads a problem
response as the generated ``Problem`` model. Real uvicorn, real PostgreSQL, the TOME emulator.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from tests.integration import api_harness
from tests.integration.api_harness import POOL, Api

api = api_harness.api  # the fixture: a running service with its own database

PACKAGE = "tokenpool_generated_client"
GENERATOR = Path(sys.executable).parent / "openapi-python-client"


@pytest.fixture
def import_generated(tmp_path: Path) -> Iterator[object]:
    """``import_generated(document) -> the generated package``, removed from sys.modules/sys.path afterwards."""
    added: list[str] = []

    def generate(document: dict[str, object]) -> ModuleType:
        spec = tmp_path / "openapi.json"
        spec.write_text(json.dumps(document))
        config = tmp_path / "config.yaml"  # no post hooks: they would run ruff from PATH over the output
        config.write_text(f"package_name_override: {PACKAGE}\nproject_name_override: {PACKAGE}\npost_hooks: []\n")
        out = tmp_path / "client" / PACKAGE
        result = subprocess.run(
            [str(GENERATOR), "generate", "--path", str(spec), "--output-path", str(out), "--meta", "none",
             "--config", str(config)],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr
        sys.path.insert(0, str(out.parent))
        added.append(str(out.parent))
        importlib.invalidate_caches()
        return importlib.import_module(PACKAGE)

    yield generate
    for path in added:
        sys.path.remove(path)
    for name in [name for name in sys.modules if name == PACKAGE or name.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


async def test_a_generated_client_creates_a_card_and_detokenizes_it(api: Api, import_generated):
    await api.seed(3)
    async with api.client() as raw:
        document = (await raw.get("/openapi.json")).json()
    client_package = await asyncio.to_thread(import_generated, document)
    create_card = importlib.import_module(f"{PACKAGE}.api.cards.create_card")
    detokenize = importlib.import_module(f"{PACKAGE}.api.tokens.detokenize")
    get_card = importlib.import_module(f"{PACKAGE}.api.cards.get_card")
    models = importlib.import_module(f"{PACKAGE}.models")

    client = client_package.AuthenticatedClient(base_url=api.url, token=await api.key(),
                                                timeout=httpx.Timeout(15.0), raise_on_unexpected_status=True)
    async with client:
        created = await create_card.asyncio_detailed(
            client=client, body=models.CreateCardRequest(program=POOL, customer_ref="generated-client"),
            idempotency_key="generated-client-1")
        assert created.status_code == 201, created.content
        card = created.parsed
        assert isinstance(card, models.CardResponse)
        assert (card.program, card.customer_ref, card.token_source.value) == (POOL, "generated-client", "pool")
        assert created.headers["Location"] == f"/v1/cards/{card.card_id}"

        looked_up = await detokenize.asyncio(
            client=client, body=models.DetokenizeRequest(external_refs=[card.external_ref, "ext_unknown"]))
        assert isinstance(looked_up, models.DetokenizeResponse)
        assert looked_up.complete is True
        assert [(r.external_ref, r.internal_token) for r in looked_up.results] == [
            (card.external_ref, card.internal_token), ("ext_unknown", None)]

        read = await get_card.asyncio(client=client, card_id=str(card.card_id))
        assert isinstance(read, models.CardResponse)
        assert read.internal_token == card.internal_token

        replayed = await create_card.asyncio_detailed(
            client=client, body=models.CreateCardRequest(program=POOL, customer_ref="generated-client"),
            idempotency_key="generated-client-1")
        assert replayed.status_code == 200
        assert replayed.parsed.card_id == card.card_id

        # A documented problem comes back as the generated Problem model, with its stable code.
        refused = await create_card.asyncio(
            client=client, body=models.CreateCardRequest(program=POOL, customer_ref="a\x00b"))
        assert isinstance(refused, models.Problem)
        assert (refused.status, refused.code) == (422, "INVALID_CHARACTERS")
