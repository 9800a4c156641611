"""The array the back-end passes compile for.

``tile``, ``lower-to-dataflow`` and ``place-route`` subclass ``TargetPass``: its ``arch`` option is a
preset name or a YAML path when the pass comes from a pipeline string, or an ``Arch`` that the driver
(``attnc.pipeline.compile_to_bitstream``) loaded once and hands to every back-end pass. Either way
``target()`` resolves it through ``attnc.arch.resolve_arch``, which parses each name once per process,
and the pass prints back as a spec that names the same array.
"""

from __future__ import annotations

import dataclasses
from abc import ABC
from dataclasses import dataclass

from xdsl.passes import ModulePass
from xdsl.utils.arg_spec import ArgSpec

from attnc.arch import DEFAULT_ARCH, Arch, resolve_arch


@dataclass(frozen=True)
class TargetPass(ModulePass, ABC):
    arch: str | Arch = DEFAULT_ARCH

    def target(self) -> Arch:
        return resolve_arch(self.arch)

    def spec(self, *, include_default: bool = False) -> ArgSpec:
        if isinstance(self.arch, Arch):  # a spec carries the name the array was loaded by
            named = dataclasses.replace(self, arch=self.arch.origin or self.arch.name)
            return named.spec(include_default=include_default)
        return super().spec(include_default=include_default)
