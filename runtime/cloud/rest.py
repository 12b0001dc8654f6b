"""The KServe v2 REST protocol (HTTP/JSON, as Triton's HTTP endpoint speaks it) over
the same KServeServicer and TailService as gRPC, on the server's event loop (aiohttp).

Routes: ``/v2/health/live`` and ``/v2/health/ready`` (no token: they are probes),
``/v2`` (server metadata), ``/v2/models/{m}[/versions/{v}]`` (metadata, ``/ready``,
``/config``, ``/stats``, ``/infer``), ``/v2/models/stats`` and
``/v2/repository/index``. Inference takes tensors as JSON (``data``) or with the
binary tensor data extension (``Inference-Header-Content-Length``: the JSON header,
then each binary input's bytes in order), and answers the same way. Every request
gets the checks, limits, memory budget and token of the gRPC protocols; errors
are ``{"error": "..."}`` with the HTTP status of their gRPC code.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from aiohttp import web
from google.protobuf import json_format

from runtime.cloud.auth import check_bearer
from runtime.cloud.budget import Hold
from runtime.cloud.kserve import EXTENSIONS, VERSION, KServeServicer, _version
from runtime.cloud.service import TailService, status_and_message
from runtime.codec import Codec, Encoded
from runtime.errors import InvalidInputError, TooLargeError, shown
from runtime.kserve_types import DATATYPES, DTYPES

HEADER_LENGTH = "Inference-Header-Content-Length"
# what parsing JSON builds, at most, per byte of its text: a list of numbers costs a
# float object (24 bytes) and a pointer (8) per value of at least two characters
JSON_EXPANSION = 16
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Context:
    """What the request path asks of a gRPC context, for an HTTP request: no deadline
    (HTTP has none; the client's timeout ends the connection)."""

    def time_remaining(self) -> float | None:
        return None


def create_app(kserve: KServeServicer) -> web.Application:
    """The REST endpoint's application for ``kserve``'s tails."""
    service = kserve.service
    limits = service.host.limits
    app = web.Application(client_max_size=limits.max_http_body_bytes, middlewares=[_json_errors])
    rest = _Rest(kserve)
    for path, handler in (
        ("/v2/health/live", rest.live),
        ("/v2/health/ready", rest.live),
    ):
        app.router.add_get(path, handler)
    guarded = [
        ("GET", "/v2", rest.server_metadata),
        ("GET", "/v2/models/stats", rest.all_statistics),
        ("POST", "/v2/repository/index", rest.index),
    ]
    for model in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        guarded += [
            ("GET", model, rest.metadata),
            ("GET", model + "/ready", rest.ready),
            ("GET", model + "/config", rest.config),
            ("GET", model + "/stats", rest.statistics),
            ("POST", model + "/infer", rest.infer),
        ]
    for method, path, handler in guarded:
        app.router.add_route(method, path, rest.guarded(handler))
    return app


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals (no such route, method, a body over the limit) as KServe's
    JSON errors, which tritonclient reads, with their status."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        kept = {
            k: v
            for k, v in exc.headers.items()
            if k.lower() not in ("content-type", "content-length")
        }
        return web.json_response({"error": reason}, status=exc.status, headers=kept)


class _Rest:
    def __init__(self, kserve: KServeServicer) -> None:
        self.kserve = kserve
        self.service: TailService = kserve.service

    def guarded(self, handler: Handler) -> Handler:
        """``handler`` behind the bearer token, its errors as KServe's JSON errors."""

        async def run(request: web.Request) -> web.StreamResponse:
            try:
                self._authorize(request)
                return await handler(request)
            except web.HTTPException:
                raise
            except Exception as exc:
                return _error(exc)

        return run

    def _authorize(self, request: web.Request) -> None:
        token = self.service.token
        if token is not None:
            check_bearer(request.headers.getall("Authorization", []), token)

    async def live(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200)

    async def server_metadata(self, request: web.Request) -> web.StreamResponse:
        body = {"name": "splitinfer", "version": _version(), "extensions": list(EXTENSIONS)}
        return web.json_response(body)

    async def index(self, request: web.Request) -> web.StreamResponse:
        models = [
            {"name": name, "version": VERSION, "state": "READY"}
            for name in sorted(self.kserve.tails)
        ]
        return web.json_response(models)

    def _name(self, request: web.Request) -> tuple[str, str]:
        name = request.match_info["model"]
        version = request.match_info.get("version", "")
        self.kserve._tail(name, version)
        return name, version

    async def metadata(self, request: web.Request) -> web.StreamResponse:
        name, _ = self._name(request)
        inputs, outputs = self.kserve._signature(name)

        def ports(found: Any) -> list[dict[str, Any]]:
            return [
                {"name": p.name, "datatype": DTYPES.get(p.dtype, "BYTES"), "shape": list(p.dims)}
                for p in found
            ]

        body = {
            "name": name,
            "versions": [VERSION],
            "platform": "onnxruntime_onnx",
            "inputs": ports(inputs),
            "outputs": ports(outputs),
        }
        return web.json_response(body)

    async def ready(self, request: web.Request) -> web.StreamResponse:
        self._name(request)
        return web.Response(status=200)

    async def config(self, request: web.Request) -> web.StreamResponse:
        name, version = self._name(request)
        made = self.kserve.config(name, version)
        return web.json_response(json_format.MessageToDict(made, preserving_proto_field_name=True))

    async def statistics(self, request: web.Request) -> web.StreamResponse:
        name, version = self._name(request)
        return _proto_json(self.kserve.statistics(name, version))

    async def all_statistics(self, request: web.Request) -> web.StreamResponse:
        return _proto_json(self.kserve.statistics())

    async def infer(self, request: web.Request) -> web.StreamResponse:
        name, version = self._name(request)
        call = self.service.metrics.call("kserve-rest")
        hold = self.service.budget.hold()
        try:
            body = await self._body(request, hold)
            response = await self._infer(request, body, name, version, call, hold)
            del body
            await response.prepare(request)
            await response.write_eof()  # sent before the request's memory is released
        except ConnectionError:  # the client went away: nothing to answer, no alarm
            call.done(grpc.StatusCode.CANCELLED.name)
            return web.Response(status=499)
        except Exception as exc:
            call.done(status_and_message(exc)[0].name)
            return _error(exc)
        finally:
            hold.release()
        call.done(grpc.StatusCode.OK.name)
        return response

    async def _body(self, request: web.Request, hold: Hold) -> bytearray:
        """The request's body as it arrives, each chunk counted in the memory budget
        before it is kept (an announced length holds nothing yet), refused beyond
        max_http_body_bytes (413) or after body_timeout_s (408)."""
        limits = self.service.host.limits
        limit = limits.max_http_body_bytes
        announced = request.content_length
        if announced is not None and announced > limit:
            raise TooLargeError(_too_large(announced, limit))
        body = bytearray()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.body_timeout_s
        while True:
            left = deadline - loop.time()
            try:
                chunk = await asyncio.wait_for(request.content.readany(), max(left, 0.0))
            except TimeoutError:
                raise BodyTimeoutError(
                    f"the request's body did not arrive within {limits.body_timeout_s:g} s"
                ) from None
            if not chunk:
                return body
            if len(body) + len(chunk) > limit:
                raise TooLargeError(_too_large(len(body) + len(chunk), limit))
            hold.grow(len(chunk), "the request")
            body += chunk

    async def _infer(
        self,
        request: web.Request,
        body: bytearray,
        name: str,
        version: str,
        call: Any,
        hold: Hold,
    ) -> web.StreamResponse:
        header_size = request.headers.get(HEADER_LENGTH)
        size = len(body) if header_size is None else _header_size(header_size, len(body))
        # parsed and converted off the event loop, inside admission; what the parse
        # builds (Python objects: up to JSON_EXPANSION times the text) is held meanwhile
        parsing = JSON_EXPANSION * size
        hold.grow(parsing, "the request's JSON, parsed")
        header, tensors, converted = await self.service.offload(lambda: _decoded(body, size), size)
        hold.shrink(parsing)
        hold.grow(converted, "the request's JSON tensors")
        nbytes = sum(len(t.payload) for t in tensors)
        requested = _list(header, "outputs")
        asked = [str(o.get("name", "")) for o in requested]
        classified = [
            n for o, n in zip(requested, asked, strict=True) if "classification" in _own(o)
        ]
        outputs, server_ms = await self.kserve.run(
            name, version, asked, tensors, _Context(), call, hold, classified=classified
        )
        as_binary = _binary_outputs(header)
        size = sum(len(o.payload) for o in outputs)
        data, length = await self.service.offload(
            lambda: _answer(header, name, outputs, server_ms, as_binary), size + nbytes
        )
        hold.grow(2 * len(data), "the answer")
        response = web.Response(body=data, content_type="application/json")
        if length is not None:
            response.headers[HEADER_LENGTH] = str(length)
            response.content_type = "application/octet-stream"
        return response


def _too_large(size: int, limit: int) -> str:
    return (
        f"the request's body is {size} bytes or more; this server takes at most {limit} "
        "(serve --max-http-body)"
    )


class BodyTimeoutError(InvalidInputError):
    """A body that did not arrive in time (408)."""


def _header_size(text: str, total: int) -> int:
    # isdecimal and isdigit take other scripts' digits; 19 digits hold any size here
    if not (text.isascii() and text.isdigit() and len(text) <= 19) or int(text) > total:
        raise InvalidInputError(
            f"{HEADER_LENGTH} {shown(text)} is not a size within the body of {total} bytes"
        )
    return int(text)


def _decoded(body: bytearray, size: int) -> tuple[dict[str, Any], list[Encoded], int]:
    """The JSON header of ``body`` (its first ``size`` bytes) and the request's tensors
    (module ``_inputs``): the work a large JSON request costs."""
    header = _json(bytes(body[:size]))
    tensors, converted = _inputs(header, memoryview(body)[size:])
    return header, tensors, converted


def _json(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise InvalidInputError(f"the request is not JSON: {exc}") from None
    except RecursionError:
        raise InvalidInputError("the request's JSON is nested too deeply") from None
    if not isinstance(value, dict):
        raise InvalidInputError("the request's JSON must be an object")
    return value


def _list(header: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = header.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise InvalidInputError(f"{key!r} must be a list of objects")
    return value


def _own(item: dict[str, Any]) -> dict[str, Any]:
    """An input's or an output's ``parameters`` (an object, if any)."""
    parameters = item.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInputError(f"'parameters' must be an object, not {type(parameters).__name__}")
    return parameters


def _inputs(header: dict[str, Any], binary: memoryview) -> tuple[list[Encoded], int]:
    """The request's inputs as raw Encoded tensors (binary ones as views of the body),
    and the bytes their JSON values were converted into."""
    tensors, offset, converted = [], 0, 0
    for item in _list(header, "inputs"):
        name = str(item.get("name", ""))
        dtype = DATATYPES.get(str(item.get("datatype", "")))
        if dtype is None:
            raise InvalidInputError(
                f"input {shown(name)}: datatype {shown(item.get('datatype'))} is not supported "
                f"({', '.join(DATATYPES)})"
            )
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise InvalidInputError(f"input {shown(name)}: shape must be a list of sizes")
        parameters = item.get("parameters") or {}
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidInputError(
                    f"input {shown(name)}: binary_data_size {shown(size)} is beyond the "
                    f"{len(binary)} bytes of binary data"
                )
            payload: bytes | memoryview = binary[offset : offset + size]
            offset += size
        else:
            payload = _from_json(name, item.get("data"), dtype, shape)
            converted += len(payload)
        tensors.append(Encoded(Codec.RAW, dtype, tuple(shape), payload, name=name))
    if offset != len(binary):
        raise InvalidInputError(f"{len(binary) - offset} bytes of binary data belong to no input")
    return tensors, converted


def _from_json(name: str, data: Any, dtype: str, shape: list[int]) -> bytes:
    """JSON values (flat or nested, row-major) as a tensor's bytes; checked against the
    shape and the dtype's range."""
    if not isinstance(data, list):
        raise InvalidInputError(f"input {shown(name)}: give its values in 'data' or as binary")
    try:
        values = np.asarray(data, dtype=np.float64 if dtype != "bool" else bool)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise InvalidInputError(
            f"input {shown(name)}: 'data' holds values that are not numbers"
        ) from None
    count = math.prod(shape)
    if values.size != count:
        raise InvalidInputError(
            f"input {shown(name)}: {values.size} values in 'data' for shape {shape}"
        )
    kind = np.dtype(dtype)
    if kind.kind in "iu":
        info = np.iinfo(kind)
        if count and (values.min() < info.min or values.max() > info.max):
            raise InvalidInputError(f"input {shown(name)}: a value is out of range for {dtype}")
        if not np.array_equal(values, np.round(values)):
            raise InvalidInputError(f"input {shown(name)}: {dtype} values must be integers")
    return values.astype(kind).tobytes()


def _binary_outputs(header: dict[str, Any]) -> dict[str, bool]:
    """Which outputs go back as binary data: as each asks, else as the request asks."""
    parameters = header.get("parameters") or {}
    default = (
        bool(parameters.get("binary_data_output", False)) if isinstance(parameters, dict) else False
    )
    chosen = {}
    for item in _list(header, "outputs"):
        chosen[str(item.get("name", ""))] = bool(_own(item).get("binary_data", default))
    chosen[""] = default  # for outputs not named
    return chosen


def _answer(
    header: dict[str, Any],
    name: str,
    outputs: list[Encoded],
    server_ms: float,
    as_binary: dict[str, bool],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON part's length when binary data follows."""
    described, blobs = [], []
    for output in outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": DTYPES[output.dtype],
            "shape": list(output.shape),
        }
        if as_binary.get(output.name, as_binary[""]):
            entry["parameters"] = {"binary_data_size": len(output.payload)}
            blobs.append(output.payload)
        else:
            array = np.frombuffer(output.payload, dtype=np.dtype(output.dtype).newbyteorder("<"))
            entry["data"] = array.tolist()
        described.append(entry)
    body = {
        "model_name": name,
        "model_version": VERSION,
        "outputs": described,
        "parameters": {"server_ms": server_ms},
    }
    if "id" in header:
        body["id"] = header["id"]
    text = json.dumps(body).encode()
    if not blobs:
        return text, None
    return b"".join([text, *blobs]), len(text)


NUMBERS = {"count", "ns", "inference_count", "execution_count", "last_inference", "batch_size"}


def _proto_json(message: Any) -> web.Response:
    """A statistics message as Triton writes it: 64-bit counts as JSON numbers (protobuf's
    JSON mapping would write them as strings)."""

    def numbers(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: numbers(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [numbers(v, key) for v in value]
        return int(value) if key in NUMBERS and isinstance(value, str) else value

    as_dict = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return web.json_response(numbers(as_dict))


def _error(exc: BaseException) -> web.Response:
    code, message = status_and_message(exc)
    status = HTTP_STATUS.get(code, 500)
    if isinstance(exc, TooLargeError):
        status = 413
    elif isinstance(exc, BodyTimeoutError):
        status = 408
    return web.json_response({"error": message}, status=status)


async def start(kserve: KServeServicer, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve the REST endpoint on ``host:port`` (0: a free port), on the running event
    loop; returns the runner (``await runner.cleanup()`` stops it) and the port."""
    runner = web.AppRunner(create_app(kserve), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=False)
    await site.start()
    bound = [address[1] for address in runner.addresses]
    return runner, int(bound[0]) if bound else port
