"""Errors as clients expect them: OpenAI's `{"error": {...}}` on /v1/chat|completions|models, Anthropic's
`{"type": "error", "error": {...}}` on /v1/messages, so each official client raises its own typed exception."""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                 413: "invalid_request_error", 431: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable"}
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    503: "overloaded_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_response(request: Request, err: APIError) -> JSONResponse:
    if request.url.path.startswith("/v1/messages"):
        body: dict = {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(err.status, "api_error"),
                                                 "message": err.message}}
    else:
        body = {"error": {"message": err.message, "type": _OPENAI_TYPES.get(err.status, "server_error"),
                          "param": err.param, "code": err.code}}
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def validation_error(exc: RequestValidationError) -> APIError:
    """One 400 naming the first bad field (`messages.0.role: ...`), or the JSON syntax error."""
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return APIError(400, f"malformed JSON body: {first.get('ctx', {}).get('error', first['msg'])}",
                        code="invalid_json")
    if first.get("type") == "model_attributes_type" or not loc:
        return APIError(400, f"request body: {first['msg']}", code="invalid_request")
    param = ".".join(loc)
    return APIError(400, f"{param}: {first['msg']}", param=param, code="invalid_value")


def install(app) -> None:
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(request, exc)

    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, validation_error(exc))

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(request, APIError(exc.status_code, str(exc.detail), headers=exc.headers))

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)


def document_400(app, bodies: dict | None = None) -> None:
    """The schema says what the server does: a bad body is 400 with the error body above, not FastAPI's 422;
    `bodies`: the component schemas of the request bodies the routes parse themselves (`bodies.py`)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            known = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, body in (bodies or {}).items():
                known.setdefault(name, body)
            for path in schema.get("paths", {}).values():
                for op in path.values():
                    responses = op.get("responses", {})
                    if responses.pop("422", None) is not None:
                        responses["400"] = {"description": "invalid request: the error names the field",
                                            "content": {"application/json": {"schema": {"type": "object"}}}}
            schema.get("components", {}).get("schemas", {}).pop("HTTPValidationError", None)
            schema.get("components", {}).get("schemas", {}).pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
