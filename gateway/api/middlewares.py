"""Request id, access log, metrics and error rendering for every request.

Invariant: a client never gets a 500 for anything it can send; a 500 means a bug, is logged
with its traceback, and tells the client nothing but the request id. A client that hangs up
before its request is read is no error of ours: logged at info level, counted as status 499
(the convention of nginx for "client closed request").
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from gateway import metrics
from gateway.errors import GatewayError, InvalidRequest, MethodNotAllowed, NotFound, PayloadTooLarge
from gateway.logs import request_id_var

log = logging.getLogger("gateway.http")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
CLIENT_CLOSED = 499

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _AnsweredError(msgspec.Struct):
    code: str
    param: str | None = None


class _Answered(msgspec.Struct):
    error: _AnsweredError


_ANSWERED = msgspec.json.Decoder(_Answered)


def _answered_error(response: web.StreamResponse) -> tuple[str, str | None] | None:
    """The code and param of an error answer that was not raised here (the replay of a stored
    refusal): read from its body, for error answers only, so the request line costs nothing more."""
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return None
    try:
        error = _ANSWERED.decode(response.body).error
    except msgspec.DecodeError:
        return None
    return error.code, error.param


def _error_response(exc: GatewayError, request_id: str) -> web.Response:
    metrics.ERRORS.labels(exc.code).inc()
    headers = {"Request-Id": request_id}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    return web.Response(
        body=msgspec.json.encode(exc.body(request_id)), status=exc.status, content_type="application/json",
        headers=headers,
    )


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get("X-Request-Id", "")
    request_id = given if _REQUEST_ID_RE.match(given) else f"req_{uuid.uuid4().hex}"
    token = request_id_var.set(request_id)
    started_s = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    status = 500
    error: GatewayError | None = None  # the error answered, for the request line
    answered: tuple[str, str | None] | None = None  # (code, param) of an error answer given as a body
    try:
        try:
            response = await handler(request)
        except GatewayError as exc:
            response = _error_response(error := exc, request_id)
        except web.HTTPRequestEntityTooLarge:
            response = _error_response(error := PayloadTooLarge("the request body is too large"), request_id)
        except web.HTTPNotFound:
            response = _error_response(error := NotFound("no such endpoint", code="unknown_endpoint"), request_id)
        except web.HTTPMethodNotAllowed as exc:
            response = _error_response(error := MethodNotAllowed(f"{request.method} is not allowed here"), request_id)
            response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        except web.HTTPException as exc:
            response = _error_response(error := InvalidRequest(exc.reason, code="http_error"), request_id)
            response.set_status(exc.status)
        except ConnectionResetError:  # the client hung up while its body was being read
            status = CLIENT_CLOSED
            log.info("client closed the connection", extra={"path": request.path})
            raise
        except asyncio.CancelledError:  # the connection was lost and the handler cancelled
            status = CLIENT_CLOSED
            raise
        except Exception:
            log.exception("unhandled error", extra={"path": request.path})
            response = _error_response(error := GatewayError("internal error; it has been logged"), request_id)
        response.headers["Request-Id"] = request_id
        status = response.status
        if error is None and status >= 400:
            answered = _answered_error(response)
        return response
    finally:
        elapsed_s = time.perf_counter() - started_s
        metrics.HTTP_REQUESTS.labels(request.method, route, str(status)).inc()
        metrics.HTTP_REQUEST_DURATION.labels(request.method, route, metrics.status_class(status)).observe(elapsed_s)
        # The request id rides on the record too: a handler that formats later has no context left.
        line: dict[str, object] = {"method": request.method, "route": route, "status": status,
                                   "duration_ms": round(elapsed_s * 1000, 2), "request_id": request_id}
        failure = (error.code, error.param) if error is not None else answered
        if failure is not None:
            line["code"] = failure[0]
            if failure[1] is not None:
                line["param"] = failure[1]
        log.info("request", extra=line)
        request_id_var.reset(token)
