"""Shared fixtures live in tests/fixtures/, one module per real dependency."""

from collections.abc import Iterator

import pytest
import structlog

pytest_plugins = ["tests.fixtures.database", "tests.fixtures.tome", "tests.fixtures.moto", "tests.fixtures.webhook"]


@pytest.fixture(autouse=True)
def _fresh_log_context() -> Iterator[None]:
    """Tests share one event loop; a correlation id bound by one must not leak into the next."""
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()
