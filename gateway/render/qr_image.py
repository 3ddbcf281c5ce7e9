"""QR code images of payload strings, as PNG (Pillow) or SVG bytes.

Invariants:
- Pure and CPU-bound: no I/O, no shared state; async callers run these in an executor.
- The symbol comes from ``qrcode`` with error correction M, the smallest version that fits, and
  the text in UTF-8 (byte mode for non-ASCII runs, no ECI header, as wallets expect).
- PNG and SVG of the same arguments draw the same symbol: both are drawn from one module
  matrix, dark modules black on an opaque white background, with a quiet zone of at least
  the 4 modules ISO/IEC 18004 asks for.
- Every input is bounded: the payload by ``PAYLOAD_LENGTH_MAX``, the module size and the quiet
  zone by the limits below, so an image is at most a few megapixels.
- ``mask_pattern=None`` lets ``qrcode`` score all 8 masks (the standard's choice, about 5x the
  symbol-building time of a fixed mask); a fixed mask 0-7 is always decodable and is faster.
"""

from __future__ import annotations

import io
from typing import Final

import qrcode
from PIL import Image

from gateway.domain.emv_qr import PAYLOAD_LENGTH_MAX

MODULE_PX_MAX: Final = 40
BORDER_MODULES_MIN: Final = 4
BORDER_MODULES_MAX: Final = 16

_DARK_L: Final = 0
_LIGHT_L: Final = 255

Matrix = tuple[tuple[bool, ...], ...]


def render_png(
    payload: str, *, module_px: int = 10, border_modules: int = BORDER_MODULES_MIN, mask_pattern: int | None = None
) -> bytes:
    """A 1-bit PNG of ``payload``, ``module_px`` pixels per module."""
    if not 1 <= module_px <= MODULE_PX_MAX:
        raise ValueError(f"module_px must be 1..{MODULE_PX_MAX}")
    matrix = _matrix(payload, border_modules, mask_pattern)
    side = len(matrix)
    pixels = bytes(_DARK_L if dark else _LIGHT_L for row in matrix for dark in row)
    # One pixel per module, then a nearest-neighbour blow-up: exact square modules, no blur.
    # Going to 1-bit before the blow-up is 10x faster than resizing the 8-bit image.
    image = Image.frombytes("L", (side, side), pixels).convert("1", dither=Image.Dither.NONE)
    image = image.resize((side * module_px, side * module_px), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def render_svg(payload: str, *, border_modules: int = BORDER_MODULES_MIN, mask_pattern: int | None = None) -> bytes:
    """A standalone UTF-8 SVG of ``payload``: one module is one user unit, the size follows its container."""
    matrix = _matrix(payload, border_modules, mask_pattern)
    side = len(matrix)
    # One sub-path per horizontal run of dark modules: a third of one square per module.
    runs: list[str] = []
    for y, row in enumerate(matrix):
        x = 0
        while x < side:
            if not row[x]:
                x += 1
                continue
            start = x
            while x < side and row[x]:
                x += 1
            runs.append(f"M{start} {y}h{x - start}v1h-{x - start}z")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {side} {side}" shape-rendering="crispEdges">'
        f'<rect width="{side}" height="{side}" fill="#ffffff"/>'
        f'<path fill="#000000" d="{"".join(runs)}"/>'
        "</svg>\n"
    ).encode()


def _matrix(payload: str, border_modules: int, mask_pattern: int | None) -> Matrix:
    """Dark (True) and light modules of the symbol, quiet zone included."""
    if not 0 < len(payload) <= PAYLOAD_LENGTH_MAX:
        raise ValueError(f"payload must be 1..{PAYLOAD_LENGTH_MAX} characters")
    if not BORDER_MODULES_MIN <= border_modules <= BORDER_MODULES_MAX:
        raise ValueError(f"border_modules must be {BORDER_MODULES_MIN}..{BORDER_MODULES_MAX}")
    if mask_pattern is not None and not 0 <= mask_pattern <= 7:
        raise ValueError("mask_pattern must be 0..7 or None")
    code = qrcode.QRCode(
        error_correction=qrcode.constants.ERROR_CORRECT_M, border=border_modules, mask_pattern=mask_pattern
    )
    code.add_data(payload)
    code.make(fit=True)
    return tuple(tuple(bool(module) for module in row) for row in code.get_matrix())
