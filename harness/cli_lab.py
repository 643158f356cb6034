"""`harness lab`: an emulated Pi board and a loopback phone to try multi-device runs without hardware."""

from __future__ import annotations

import click


def register(main: click.Group) -> None:
    from harness.lab.cli import lab

    main.add_command(lab)
