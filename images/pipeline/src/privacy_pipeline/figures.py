"""Matplotlib figures as the PNG bytes and ``data:`` URIs the reports embed: one way for every page."""

from __future__ import annotations

import base64
import io
from typing import Any


def png_bytes(figure: Any, dpi: int) -> bytes:
    """The figure drawn as PNG, trimmed to what it shows."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def png_data_uri(png: bytes) -> str:
    """An ``<img src>`` that carries the PNG itself, so a report is one self-contained HTML file."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
