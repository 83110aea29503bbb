"""Request bodies parsed and validated on a worker thread, not on the event loop's: a legal 8 MB body (250k
messages, 150k tools) takes seconds to decode and validate, and every stream's bytes wait on that thread.
Decoding holds the GIL wherever it runs, so a large body is first counted in a helper process (`census.py`)
and refused there if it holds more than the server decodes at a bounded cost.
FastAPI would do both on the loop, so each endpoint's body is typed `parsed(Model)` (a dependency),
with the same errors FastAPI gives (its `RequestValidationError`, answered as our 400), and documents it with
`documented(Model)` so the OpenAPI schema still shows it."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from agentkv.server.errors import APIError


def parsed(model: type[BaseModel]) -> Any:
    """`body: parsed(Model)`'s type: the request's JSON body as `model`, decoded and validated off the loop."""

    async def parse(request: Request) -> BaseModel:
        try:
            raw = await request.body()
        except ClientDisconnect:  # gone, or cut off by --body-timeout: the answer reaches no one
            raise APIError(400, "the client left before its body arrived") from None
        await request.app.state.census.check(raw)
        return await asyncio.to_thread(validate, model, raw)

    return Annotated[model, Depends(parse)]


def validate(model: type[BaseModel], raw: bytes) -> BaseModel:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", e.pos), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": e.msg}}]) from None
    except (ValueError, RecursionError):  # not UTF-8, or nested past the decoder's stack
        raise APIError(400, "There was an error parsing the body", code="invalid_json") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])}
                                      for err in e.errors(include_url=False)]) from None


def documented(model: type[BaseModel]) -> dict[str, Any]:
    """The route's `openapi_extra`: its body, as FastAPI would have documented it."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def components(models: list[type[BaseModel]]) -> dict[str, Any]:
    """The schemas `documented` refers to, nested models included."""
    from pydantic.json_schema import models_json_schema

    _, defs = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
    return defs.get("$defs", {})
