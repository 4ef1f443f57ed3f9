"""Table lookups in registers: AVX-512 permutes that numba's vectoriser does not emit by itself.

A code byte ``b`` of ``g`` base-``k`` digits splits into its low digits ``lo = b mod L`` and its
high digits ``hi = b div L`` (``L = k^((g + 1) // 2)``): 16 and 16 values for sign and
four-value weights, 27 and 9 for ternary. With an input row's two *half tables* per byte
position (``halves[j, 0, lo]``: the low inputs' sum for digits ``lo``; ``halves[j, 1, hi]``
likewise), the code's contribution is ``halves[j, 0, lo] + halves[j, 1, hi]``. Each half table
fits in two 16-float registers, so ``VPERMI2PS`` (``VPERMPS`` for 16 entries) looks up 16
outputs at once where a gather from memory reads one entry at a time: as T-MAC and
bitnet.cpp do with byte shuffles, but on float32 tables, so the sums stay those of float
inputs.

``half_sums`` writes numba's LLVM IR for the loop over byte positions of 64 outputs (a cache
line of codes): four accumulators of 16 lanes, each adding ``lo + hi`` in byte-position order,
as ``snapset._kernels._numba.lookup_halves`` adds the outputs it takes one at a time.
"""

from __future__ import annotations

import os
from typing import Any

import llvmlite.binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["BLOCK", "PERMUTES", "half_sums"]

#: Outputs ``half_sums`` takes a call: 64 code bytes, one cache line a byte position.
BLOCK = 64
#: Whether the kernels are compiled for a CPU with AVX-512 (the permutes exist); numba compiles
#: for the host unless ``NUMBA_CPU_NAME`` names another CPU, whose features are not known here.
PERMUTES = not os.environ.get("NUMBA_CPU_NAME") and bool(
    llvmlite.binding.get_host_cpu_features().get("avx512f", False)
)

_FLOATS = ir.VectorType(ir.FloatType(), 16)
_INTS = ir.VectorType(ir.IntType(32), 16)
_BYTES = ir.VectorType(ir.IntType(8), 16)
#: ``b div L = (b * magic) >> 16`` for every byte ``b``, with ``magic = ceil(2^16 / L)``
#: (exact while ``L <= 32``: the error stays below ``1 / L`` of a unit for ``b < 256``).
SHIFT = 16


def _half_sums(
    typingctx: Any,
    halves: Any,
    codes: Any,
    first: Any,
    last: Any,
    start: Any,
    low_size: Any,
    magic: Any,
    out: Any,
) -> Any:
    """``out[o] = sum_{first <= j < last} (halves[j, 0, lo] + halves[j, 1, hi])`` for the
    code bytes ``b = codes[j, start + o]``, ``o < 64``: ``hi = (b * magic) >> 16`` and ``lo =
    b - hi * low_size`` (``b >> 4`` and ``b & 15`` for ``low_size`` 16).

    ``halves`` is ``(groups, 2, 32)`` float32, ``codes`` ``(groups, out)`` uint8, both C-ordered;
    ``out`` holds 64 float32.
    """
    if not (
        isinstance(halves, types.Array)
        and halves.ndim == 3
        and halves.dtype == types.float32
        and isinstance(codes, types.Array)
        and codes.dtype == types.uint8
    ):
        return None
    signature = types.void(
        halves, codes, types.intp, types.intp, types.intp, types.intp, types.intp, out
    )

    def codegen(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> Any:
        tables = context.make_array(sig.args[0])(context, builder, args[0])
        code_rows = context.make_array(sig.args[1])(context, builder, args[1])
        first, last, start, low_size, magic = args[2:7]
        sums = context.make_array(sig.args[7])(context, builder, args[7])
        loop = _Loop(
            builder,
            registers=builder.bitcast(tables.data, _FLOATS.as_pointer()),
            code_bytes=builder.bitcast(code_rows.data, ir.IntType(8).as_pointer()),
            row_bytes=cgutils.unpack_tuple(builder, code_rows.strides, 2)[0],
            start=start,
        )
        nibbles = builder.icmp_signed("==", low_size, ir.Constant(low_size.type, 16))
        with builder.if_else(nibbles) as (by_nibbles, by_division):
            with by_nibbles:  # a loop of its own: one-register permutes on the nibbles
                loop.emit(first, last, _split_nibbles, loop.permute_one)
            with by_division:
                size, factor = (_broadcast(builder, value) for value in (low_size, magic))
                split = lambda b, byte: _split_by(b, byte, size, factor)  # noqa: E731
                loop.emit(first, last, split, loop.permute_two)
        targets = builder.bitcast(sums.data, _FLOATS.as_pointer())
        for q, accumulator in enumerate(loop.accumulators):
            where = builder.gep(targets, [ir.Constant(first.type, q)])
            builder.store(builder.load(accumulator), where, align=4)
        return context.get_dummy_value()

    return signature, codegen


class _Loop:
    """The loop over byte positions for 64 outputs, with its four accumulators."""

    def __init__(
        self,
        builder: ir.IRBuilder,
        registers: ir.Value,
        code_bytes: ir.Value,
        row_bytes: ir.Value,
        start: ir.Value,
    ) -> None:
        self.builder, self.registers, self.code_bytes = builder, registers, code_bytes
        self.row_bytes, self.start = row_bytes, start
        zero = ir.Constant(_FLOATS, [0.0] * 16)
        self.accumulators = [cgutils.alloca_once_value(builder, zero) for _ in range(BLOCK // 16)]
        # VPERMPS reads the low 4 bits of each index (16 entries, one register); VPERMI2PS
        # the low 5 (32 entries, two registers) and overwrites its index, costing a copy
        self._one = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(_FLOATS, [_FLOATS, _INTS]),
            "llvm.x86.avx512.permvar.sf.512",
        )
        self._two = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(_FLOATS, [_FLOATS, _INTS, _FLOATS]),
            "llvm.x86.avx512.vpermi2var.ps.512",
        )

    def permute_one(self, first: ir.Value, index: ir.Value, second: ir.Value) -> ir.Value:
        """``first[index]`` for each lane, from a 16-entry table (``second`` unused)."""
        return self.builder.call(self._one, [first, index])

    def permute_two(self, first: ir.Value, index: ir.Value, second: ir.Value) -> ir.Value:
        """``(first ++ second)[index]`` for each lane, from a 32-entry table."""
        return self.builder.call(self._two, [first, index, second])

    def emit(self, first: ir.Value, last: ir.Value, split: Any, permute: Any) -> None:
        """The loop, with ``split(builder, bytes) -> (low, high)`` for the digit indices and
        ``permute`` (``permute_one`` or ``permute_two``) to look them up."""
        b = self.builder
        intp = first.type
        with cgutils.for_range_slice(b, first, last, ir.Constant(intp, 1), inc=True) as (j, _):
            base = b.mul(j, ir.Constant(intp, 4))  # four registers a byte position
            low_a, low_b, high_a, high_b = (
                b.load(b.gep(self.registers, [b.add(base, ir.Constant(intp, i))]), align=4)
                for i in range(4)
            )
            row = b.gep(self.code_bytes, [b.add(b.mul(j, self.row_bytes), self.start)])
            for q, accumulator in enumerate(self.accumulators):
                where = b.bitcast(b.gep(row, [ir.Constant(intp, 16 * q)]), _BYTES.as_pointer())
                low, high = split(b, b.zext(b.load(where, align=1), _INTS))
                part = b.fadd(permute(low_a, low, low_b), permute(high_a, high, high_b))
                b.store(b.fadd(b.load(accumulator), part), accumulator)


def _split_nibbles(b: ir.IRBuilder, byte: ir.Value) -> tuple[ir.Value, ir.Value]:
    # VPERMPS reads only the low nibble of ``byte``: no mask needed
    return byte, b.lshr(byte, _constant(4))


def _split_by(
    b: ir.IRBuilder, byte: ir.Value, size: ir.Value, factor: ir.Value
) -> tuple[ir.Value, ir.Value]:
    high = b.lshr(b.mul(byte, factor), _constant(SHIFT))
    return b.sub(byte, b.mul(high, size)), high


def _constant(value: int) -> ir.Constant:
    return ir.Constant(_INTS, [value] * 16)


def _broadcast(builder: ir.IRBuilder, value: ir.Value) -> ir.Value:
    """An integer ``value`` as an i32 in all 16 lanes."""
    lane = builder.trunc(value, ir.IntType(32))
    single = builder.insert_element(
        ir.Constant(_INTS, ir.Undefined), lane, ir.Constant(ir.IntType(32), 0)
    )
    return builder.shuffle_vector(
        single, ir.Constant(_INTS, ir.Undefined), ir.Constant(_INTS, [0] * 16)
    )


half_sums: Any = intrinsic(_half_sums)
