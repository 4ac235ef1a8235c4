"""POST /v1/detokenize."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from tokenpool.service.auth import TOKENS_DETOKENIZE, Principal
from tokenpool.service.correlation import current_correlation_id
from tokenpool.service.problems import ProblemError
from tokenpool.service.routes.docs import AUTHENTICATED, WITH_BODY, problems
from tokenpool.service.schemas import DetokenizeRequest, DetokenizeResponse, DetokenizeResult, ResponseWarning
from tokenpool.service.security import require
from tokenpool.service.state import components

router = APIRouter(prefix="/v1", tags=["tokens"])


@router.post("/detokenize", response_model=DetokenizeResponse, operation_id="detokenize", responses=problems(
    *AUTHENTICATED, *WITH_BODY, 429, details={
        403: "The scope needed: `tokens:detokenize`.",
        429: "External refs per key: `TOKENPOOL_RATE_LIMIT_DETOKENIZE_REFS` (a request costs its number of refs).",
        422: "`TOO_MANY_REFS`: more `external_refs` than the service's limit (`maxItems`).",
        503: "`TOME_UNAVAILABLE`: no ref in the database and TOME down.",
    }))
async def detokenize(
    body: DetokenizeRequest,
    request: Request,
    principal: Annotated[Principal, Depends(require(TOKENS_DETOKENIZE))],
) -> DetokenizeResponse:
    """External reference IDs -> internal tokens (null when unknown), in request order."""
    found = components(request)
    limit = found.settings.service_max_detokenize_refs
    if len(body.external_refs) > limit:
        raise ProblemError(422, "TOO_MANY_REFS", f"At most {limit} external_refs per request.")
    await found.rate_limits.detokenize_refs(principal, len(body.external_refs))  # a request costs its refs
    client = found.client_addresses.of(request)
    outcome = await found.detokenize.detokenize(body.external_refs, principal, current_correlation_id(), client)
    warnings = [] if outcome.complete else [ResponseWarning(
        code="TOME_UNAVAILABLE",
        detail="TOME was unavailable: references not in the database are null with source null.",
    )]
    return DetokenizeResponse(
        results=[DetokenizeResult(external_ref=r.external_ref, internal_token=r.internal_token, source=r.source)
                 for r in outcome.results],
        complete=outcome.complete,
        warnings=warnings,
    )
