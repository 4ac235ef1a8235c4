"""The ASGI entry point: ``uvicorn --factory tokenpool.entrypoints.api:create_app_from_env``."""

from __future__ import annotations

from fastapi import FastAPI

from tokenpool import bootstrap
from tokenpool.observability.logging import configure_logging
from tokenpool.settings import get_settings


def create_app_from_env() -> FastAPI:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    return bootstrap.create_service_app(settings)
