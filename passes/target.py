"""The array the back-end passes compile for.

``tile``, ``lower-to-dataflow`` and ``place-route`` subclass ``TargetPass``: its ``arch`` option is a
preset name or a YAML path when the pass comes from a pipeline string, or an ``Arch`` that the driver
(``attnc.pipeline.compile_to_bitstream``) loaded once and hands to every back-end pass. Either way
``target()`` resolves it through ``attnc.arch.resolve_arch``, which parses each name once per process,
and the pass prints back as a spec that names the same array.
"""

from __future__ import annotations

import copy
import os
from abc import ABC
from dataclasses import dataclass

from xdsl.dialects import func
from xdsl.dialects.builtin import TensorType
from xdsl.passes import ModulePass
from xdsl.utils.arg_spec import ArgSpec

from attnc.arch import DEFAULT_ARCH, PRESETS, Arch, resolve_arch
from attnc.errors import AttncError
from attnc.limits import shown


@dataclass(frozen=True)
class TargetPass(ModulePass, ABC):
    arch: str | Arch = DEFAULT_ARCH

    def __post_init__(self) -> None:
        # a pipeline naming no array fails when it is parsed, before any model is read (the file itself is
        # read and validated when the pass runs, or up front by the driver)
        if isinstance(self.arch, str) and self.arch not in PRESETS and not os.path.isfile(self.arch):
            raise AttncError(f"{self.name}: arch {shown(self.arch)} is neither an architecture preset "
                             f"({', '.join(PRESETS)}) nor an existing file")

    def target(self) -> Arch:
        return resolve_arch(self.arch)

    def refuse_empty(self, fn: func.FuncOp) -> None:
        """An AttncError if an attention or a matrix product of ``fn`` has an empty (zero-size) operand or
        result: its kernels' trip counts and the cost model divide by those dimensions (empty values that
        are only moved or returned compile as before)."""
        from attnc.dialects import sparse as sp

        for op in fn.walk():
            if not isinstance(op, sp.AttentionOp | sp.MatmulOp | sp.ContractOp):
                continue
            for v in (*op.operands, *op.results):
                t = v.type
                if isinstance(t, TensorType) and 0 in tuple(t.get_shape()):
                    raise AttncError(f"{self.name}: {op.name} has an empty (zero-size) operand or result ({t}), "
                                     "which the array cannot compute (the reference interpreter runs it)")

    def spec(self, *, include_default: bool = False) -> ArgSpec:
        if isinstance(self.arch, Arch):  # a spec carries the name the array was loaded by
            # (a copy, not dataclasses.replace: an array parsed from text has a name that is no file)
            named = copy.copy(self)
            object.__setattr__(named, "arch", self.arch.origin or self.arch.name)
            return named.spec(include_default=include_default)
        return super().spec(include_default=include_default)
