"""``GET /v1/health/``: no key needed, so load balancers and `letta-client`'s ``health()`` can call it."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from memgpt import __version__

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    version: str


@router.get("/v1/health/", response_model=Health)
@router.get("/v1/health", response_model=Health, include_in_schema=False)
def health() -> Health:
    return Health(status="ok", version=__version__)
