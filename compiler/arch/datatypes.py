"""Element types as the array stores them: the one table of bytes per element.

The compiler's cost rules, the bitstream format and the simulator all size buffers, DMA transfers and
constant payloads from this table. ``i1`` takes a byte, as the bitstream stores it; ``i4`` is listed as
a byte per element for buffers and transfers (the bitstream packs i4 constants two to a byte).
"""

from __future__ import annotations

ELEMENT_BYTES: dict[str, int] = {
    "f64": 8, "f32": 4, "f16": 2, "bf16": 2, "i64": 8, "i32": 4, "i16": 2, "i8": 1, "i4": 1, "i1": 1,
    "si64": 8, "si32": 4, "si16": 2, "si8": 1, "ui64": 8, "ui32": 4, "ui16": 2, "ui8": 1, "index": 8,
}  # fmt: skip

#: element types stored two to a byte in constant payloads
PACKED_NIBBLE_TYPES = frozenset({"i4", "ui4", "si4"})


def element_bytes(name: str, default: int = 4) -> int:
    """Bytes one element of type ``name`` takes in SRAM, DRAM and on the NoC (``default`` if unknown)."""
    return ELEMENT_BYTES.get(name, default)
