"""The KServe v2 protocol's side of the contract, which device and cloud share: its
datatype names for numpy's, and the name of one tail as a KServe (and Triton) model."""

from __future__ import annotations

SEPARATOR = "__"
DATATYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
DTYPES = {v: k for k, v in DATATYPES.items()}


def model_name(model: str, cut: str) -> str:
    """The KServe (and Triton repository) name of one tail."""
    return f"{model}{SEPARATOR}{cut}"


# A tail's model config carries the full model's sha256 under this parameter, so that
# a device can tell its artifacts from another version's (a retrained model's)
SHA256_PARAMETER = "splitinfer_model_sha256"
