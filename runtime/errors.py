"""The one error hierarchy of splitinfer.

Every error the library raises on purpose derives from :class:`SplitInferError`,
so a caller can catch one class; the CLI turns any of them into a one-line
message and exit status 2.

::

    SplitInferError
    ├── ModelError          a model that cannot be loaded, or is not valid ONNX
    │   └── UnsupportedModelError
    │                       valid ONNX that splitinfer cannot handle (says which node)
    ├── CutError            a cut that does not exist or does not separate the graph
    ├── ArtifactError       an artifact directory or manifest that is missing or broken
    ├── CodecError          an unknown codec, or a payload that does not decode to its tensor
    ├── ProfileError        a profile that is malformed, of another model, or inconsistent
    ├── PlanError           a plan that cannot be made or read (no allowed cut, bad link)
    ├── ExportError         a PyTorch module that could not be exported to ONNX
    ├── RequestError        a request the server refuses (runtime.status maps each to a status)
    │   ├── NotFoundError       an unknown model or cut           NOT_FOUND
    │   ├── InvalidInputError   tensors that do not fit the cut   INVALID_ARGUMENT
    │   ├── OverloadedError     more work than the server takes   RESOURCE_EXHAUSTED
    │   ├── DeadlineError       the caller's deadline passed      DEADLINE_EXCEEDED
    │   ├── UnauthenticatedError  a missing or wrong token        UNAUTHENTICATED
    │   └── ShuttingDownError   the server is stopping            UNAVAILABLE
    └── RemoteError         a call that failed on the way or on the server (client side)
        └── UnavailableError    the server cannot be reached      UNAVAILABLE

CodecError also answers INVALID_ARGUMENT; anything unexpected is INTERNAL.
"""

from __future__ import annotations

SHOWN_CHARS = 128  # of a client-supplied name, at most this much is echoed back


def shown(name: object, limit: int = SHOWN_CHARS) -> str:
    """A client-supplied name as an error message shows it: quoted, and cut to its
    first ``limit`` characters (a hostile name of a megabyte is not echoed back)."""
    text = str(name)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class SplitInferError(Exception):
    """Base class of every error splitinfer raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelError(SplitInferError):
    """A model file or ModelProto that cannot be loaded or fails validation."""


class UnsupportedModelError(ModelError):
    """A valid ONNX model using something splitinfer does not handle."""


class CutError(SplitInferError):
    """An unknown cut id or tensor, or a tensor list that does not separate the graph."""


class ArtifactError(SplitInferError):
    """An artifact directory or manifest.json that is missing, malformed or inconsistent."""


class CodecError(SplitInferError):
    """An unknown codec, a dtype it cannot carry, or a corrupted, truncated or oversized payload."""


class ProfileError(SplitInferError):
    """A profile that is malformed, was taken of another model, or has impossible numbers."""


class PlanError(SplitInferError):
    """A plan that cannot be made (nothing allowed) or read (malformed, another model)."""


class ExportError(SplitInferError):
    """A PyTorch module that could not be exported to ONNX."""


class RequestError(SplitInferError):
    """A request the server refuses; ``runtime.status`` gives each its gRPC status."""


class NotFoundError(RequestError):
    """An unknown model, or a cut the model does not have or the server does not run."""


class InvalidInputError(RequestError):
    """Tensors that do not match the cut: names, dtypes, ranks, shapes or sizes."""


class OverloadedError(RequestError):
    """The server already has as much work as it takes: retry later."""


class TooLargeError(OverloadedError):
    """A request larger than the server takes in one message (REST: 413)."""


class DeadlineError(RequestError):
    """The caller's deadline passed before the work could be done."""


class UnauthenticatedError(RequestError):
    """A missing, repeated or wrong bearer token."""


class ShuttingDownError(RequestError):
    """The server is stopping: its running tails were stopped, new work is refused."""


class RemoteError(SplitInferError):
    """A call that failed in transit or on the server, as seen by the client.

    ``code`` is the gRPC status code's name (``"INTERNAL"``, ``"UNAVAILABLE"``...).
    """

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code


class UnavailableError(RemoteError):
    """The server could not be reached, or the connection broke."""
