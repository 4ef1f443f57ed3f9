"""Leaving training: packed files (``save``/``load``), packed inference layers (``pack``), and
the runtimes' formats: ONNX, GGUF for llama.cpp and the transformers BitNet layout.

Examples:
    >>> import os, tempfile, torch, snapset, snapset.torch as st
    >>> model = st.constrain(torch.nn.Linear(64, 4), "weight", snapset.Sign())
    >>> path = st.export.save(model, os.path.join(tempfile.mkdtemp(), "m.safetensors"))
    >>> os.path.getsize(path) < 4 * 64 * 4  # a bit a weight, plus the header
    True
    >>> type(st.export.pack(model)).__name__
    'PackedLinear'
"""

from ._file import SnapsetFileError as SnapsetFileError
from ._file import load as load
from ._file import save as save
from ._gguf import export_gguf as export_gguf
from ._onnx import export_onnx as export_onnx
from ._pack import LUT_MAX_ROWS as LUT_MAX_ROWS
from ._pack import PackedConv as PackedConv
from ._pack import PackedLinear as PackedLinear
from ._pack import PackingReport as PackingReport
from ._pack import SignChain as SignChain
from ._pack import SignThresholds as SignThresholds
from ._pack import kernel_backend as kernel_backend
from ._pack import pack as pack
from ._pack import unpackable as unpackable
from ._pack_gf2 import PackedGF2Linear as PackedGF2Linear
from ._transformers import export_transformers as export_transformers

__all__ = [
    "LUT_MAX_ROWS",
    "PackedConv",
    "PackedGF2Linear",
    "PackedLinear",
    "PackingReport",
    "SignChain",
    "SignThresholds",
    "SnapsetFileError",
    "export_gguf",
    "export_onnx",
    "export_transformers",
    "kernel_backend",
    "load",
    "pack",
    "save",
    "unpackable",
]
