"""splitinfer's partitioner: graph analysis, cuts and splitting (and, in
``partitioner.export``, the only place torch is imported)."""

from partitioner.cuts import Cut, cut_by_id, cut_from_tensors, enumerate_cuts, resolve_cut
from partitioner.graph import ModelGraph, load_model, normalize
from partitioner.split import head_model, tail_model, write_artifacts

__all__ = [
    "Cut",
    "ModelGraph",
    "cut_by_id",
    "cut_from_tensors",
    "enumerate_cuts",
    "head_model",
    "load_model",
    "normalize",
    "resolve_cut",
    "tail_model",
    "write_artifacts",
]
