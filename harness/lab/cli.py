"""The `harness lab` commands (up, down, status)."""

from __future__ import annotations

import click


@click.group()
def lab() -> None:
    """An emulated Raspberry Pi 4 and a loopback Android phone, to try `harness run --devices pi4,pixel7`."""
