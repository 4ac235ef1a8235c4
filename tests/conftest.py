"""Shared fixtures live in tests/fixtures/, one module per real dependency."""

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
import structlog

# The vault's key-encryption key for this test session: a file of its own (never the repository's
# ./.tokenpool), shared by every Settings() and every tokenpool process the tests start.
if "TOKENPOOL_VAULT_LOCAL_KEY_FILE" not in os.environ:
    _vault_dir = tempfile.mkdtemp(prefix="tokenpool-test-vault-")
    os.environ["TOKENPOOL_VAULT_LOCAL_KEY_FILE"] = os.path.join(_vault_dir, "kek.json")
    atexit.register(shutil.rmtree, _vault_dir, ignore_errors=True)

pytest_plugins = ["tests.fixtures.database", "tests.fixtures.tome", "tests.fixtures.moto", "tests.fixtures.webhook"]


@pytest.fixture(autouse=True)
def _fresh_log_context() -> Iterator[None]:
    """Tests share one event loop; a correlation id bound by one must not leak into the next."""
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()
