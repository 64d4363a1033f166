"""RFC 9457 problem+json for every error: a stable `type`, the status, and the field at fault."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from somastack.errors import SomaError

log = logging.getLogger("somastack.api")
MEDIA_TYPE = "application/problem+json"


def problem(status: int, type_: str, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": f"urn:somastack:problem:{type_}", "title": title, "status": status,
            "detail": detail, **{k: v for k, v in extra.items() if v is not None}}
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE)


def _field(loc: tuple[Any, ...]) -> str:
    """('body', 'items', 3, 'content') → 'items[3].content'; header/query names kept as sent."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header")] or list(loc[-1:])
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"field": "body" if e["type"] == "json_invalid" else _field(tuple(e["loc"])),
               "message": e["msg"]} for e in exc.errors()]
    first = errors[0] if errors else {"field": "body", "message": "invalid request"}
    return problem(422, "invalid-input", "Invalid input", f"{first['field']}: {first['message']}",
                   field=first["field"], errors=errors)


async def _soma(request: Request, exc: SomaError) -> JSONResponse:
    detail = f"{exc.field}: {exc.detail}" if exc.field else exc.detail
    response = problem(exc.status, exc.type, exc.title, detail, field=exc.field)
    response.headers.update(exc.headers)
    return response


async def _http(request: Request, exc: HTTPException) -> JSONResponse:
    # FastAPI's own 400 is a body it could not read as JSON (invalid UTF-8, nesting deeper than
    # its parser allows): the field at fault is the body
    where = "body" if exc.status_code == 400 else None
    detail = f"body: {exc.detail}" if where else str(exc.detail)
    return problem(exc.status_code, f"http-{exc.status_code}", str(exc.detail), detail, field=where)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "internal", "Internal error", "an unexpected error occurred; it was logged")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(SomaError, _soma)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unhandled)
