"""QR images decode, with a real QR decoder (zxing-cpp), back to the exact payload text."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET

import pytest
import zxingcpp
from PIL import Image

from gateway.domain.emv_qr import (
    PAYLOAD_LENGTH_MAX,
    AdditionalData,
    AlternateLanguage,
    Amount,
    GuidTemplate,
    Initiation,
    MerchantPayload,
    SubField,
    encode,
    parse,
)
from gateway.render.qr_image import render_png, render_svg

SVG_NS = "{http://www.w3.org/2000/svg}"
# render_svg draws each horizontal run of dark modules as one closed sub-path.
RUN_RE = re.compile(r"M(\d+) (\d+)h(\d+)v1h-\3z")

DYNAMIC = encode(
    MerchantPayload(
        accounts=(
            GuidTemplate("26", "com.example.gateway", (SubField("01", "https://pay.example.com/q/7Hk2pQ9xZ4"),)),
        ),
        merchant_category_code="5812",
        currency_numeric="156",
        country_code="CN",
        merchant_name="上海浦东小笼包·张记",
        merchant_city="上海",
        initiation=Initiation.DYNAMIC,
        amount=Amount(2372, 2),
        additional_data=AdditionalData(reference_label="pay_01J9Z3Q8X7", terminal_label="T-0042"),
        alternate_language=AlternateLanguage("zh", "张记小笼包", "上海"),
    )
)


def decode(image: Image.Image) -> zxingcpp.Barcode:
    found = zxingcpp.read_barcode(image, formats=zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode))
    assert found is not None, "no QR code found"
    return found


def svg_to_image(svg: bytes) -> Image.Image:
    """Rasterize render_svg's output, one pixel per module, from its runs."""
    root = ET.fromstring(svg)
    side = int(root.attrib["viewBox"].split()[2])
    image = Image.new("L", (side, side), 255)
    path = root.find(f"{SVG_NS}path")
    assert path is not None
    d = path.attrib["d"]
    runs = RUN_RE.findall(d)
    assert "".join(f"M{x} {y}h{w}v1h-{w}z" for x, y, w in runs) == d, "path is not made of module runs"
    for x, y, width in runs:
        image.paste(0, (int(x), int(y), int(x) + int(width), int(y) + 1))
    return image


def test_payload_under_test_is_dynamic_with_chinese_name() -> None:
    payload = parse(DYNAMIC)
    assert payload.initiation is Initiation.DYNAMIC
    assert payload.merchant_name == "上海浦东小笼包·张记"


def test_png_decodes_to_the_payload() -> None:
    png = render_png(DYNAMIC)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    found = decode(Image.open(io.BytesIO(png)))
    assert found.text == DYNAMIC
    # UTF-8 on the wire, not a decoder's guess at some other charset.
    assert found.bytes == DYNAMIC.encode("utf-8")
    assert found.ec_level == "M"


@pytest.mark.parametrize("mask_pattern", range(8))
def test_png_with_each_fixed_mask_decodes(mask_pattern: int) -> None:
    found = decode(Image.open(io.BytesIO(render_png(DYNAMIC, mask_pattern=mask_pattern))))
    assert found.text == DYNAMIC


def test_png_geometry() -> None:
    image = Image.open(io.BytesIO(render_png(DYNAMIC, module_px=3, border_modules=6)))
    assert image.mode == "1"
    width, height = image.size
    assert width == height and width % 3 == 0
    side_modules = width // 3
    # A QR symbol of version v has 4v + 17 modules a side; the quiet zone adds 2 x 6.
    assert (side_modules - 12 - 17) % 4 == 0
    # The quiet zone is white all round.
    assert image.crop((0, 0, width, 18)).getextrema() == (255, 255)
    assert image.crop((0, 0, 18, height)).getextrema() == (255, 255)


def test_svg_is_well_formed_and_decodes_to_the_payload() -> None:
    svg = render_svg(DYNAMIC)
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg"
    _, _, width, height = root.attrib["viewBox"].split()
    assert width == height
    rect = root.find(f"{SVG_NS}rect")
    assert rect is not None and rect.attrib["fill"] == "#ffffff"
    assert len(root.findall(f"{SVG_NS}path")) == 1
    assert decode(svg_to_image(svg).resize((int(width) * 8,) * 2, Image.Resampling.NEAREST)).text == DYNAMIC


def test_png_and_svg_draw_the_same_symbol() -> None:
    png = Image.open(io.BytesIO(render_png(DYNAMIC, module_px=1))).convert("L")
    assert png.tobytes() == svg_to_image(render_svg(DYNAMIC)).tobytes()


def test_rendering_is_deterministic() -> None:
    assert render_png(DYNAMIC) == render_png(DYNAMIC)
    assert render_svg(DYNAMIC, mask_pattern=3) == render_svg(DYNAMIC, mask_pattern=3)


def test_longest_payload_renders_and_decodes() -> None:
    text = "中" * PAYLOAD_LENGTH_MAX
    assert decode(Image.open(io.BytesIO(render_png(text, module_px=2, mask_pattern=0)))).text == text


@pytest.mark.parametrize(
    "arguments",
    [
        {"payload": ""},
        {"payload": "x" * (PAYLOAD_LENGTH_MAX + 1)},
        {"payload": DYNAMIC, "border_modules": 3},
        {"payload": DYNAMIC, "border_modules": 17},
        {"payload": DYNAMIC, "mask_pattern": 8},
        {"payload": DYNAMIC, "mask_pattern": -1},
        {"payload": DYNAMIC, "module_px": 0},
        {"payload": DYNAMIC, "module_px": 41},
    ],
)
def test_out_of_bounds_arguments_refused(arguments: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        render_png(**arguments)  # type: ignore[arg-type]
    if "module_px" not in arguments:
        with pytest.raises(ValueError):
            render_svg(**arguments)  # type: ignore[arg-type]
