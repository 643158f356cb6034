"""The user-facing documentation keeps up with the code: every devices.yaml field is documented."""

from __future__ import annotations

import re
from pathlib import Path

from harness import registry
from harness.devices import COMMON_FIELDS, ENERGY_FIELDS, THERMAL_FIELDS

ROOT = Path(__file__).resolve().parent.parent


def schema_fields() -> dict[str, set[str]]:
    """Every field devices.yaml accepts, with the transports accepting it."""
    fields: dict[str, set[str]] = {name: set(registry.TRANSPORT_MODULES) for name in COMMON_FIELDS}
    # Every transport parses `delegates`, but only those with delegates accept a value.
    fields["delegates"] = {t for t in registry.TRANSPORT_MODULES if registry.transport(t).delegates}
    for transport in registry.TRANSPORT_MODULES:
        for name in registry.transport(transport).fields:
            fields.setdefault(name, set()).add(transport)
    return fields


def readme_field_table() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Every devices.yaml field", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|(.+)\|$", section, re.M)
    return {name: (transports.strip(), meaning) for name, transports, meaning in rows}


def test_every_field_is_in_the_readme_table_with_its_transports():
    table = readme_field_table()
    fields = schema_fields()
    assert set(table) == set(fields), (set(fields) - set(table), set(table) - set(fields))
    for name, transports in fields.items():
        listed = table[name][0]
        expected = "all" if transports == set(registry.TRANSPORT_MODULES) else None
        if expected:
            assert listed == "all", name
        else:
            assert {t.strip() for t in listed.split(",")} == transports, (name, listed)
    for nested in (*ENERGY_FIELDS, *THERMAL_FIELDS):
        assert f"`{nested}`" in table["energy"][1] + table["thermal"][1], nested


def test_every_field_appears_in_the_commented_devices_yaml():
    text = (ROOT / "devices.yaml").read_text()
    keys = set(re.findall(r"^\s*(?:#\s*)?(?:-\s+)?(\w+):", text, re.M))
    keys |= set(re.findall(r"[{,]\s*(\w+):", text))  # flow mappings: energy: {sensor: .., path: ..}
    missing = [f for f in (*schema_fields(), *ENERGY_FIELDS, *THERMAL_FIELDS) if f not in keys]
    assert not missing, f"devices.yaml shows no example of {missing}"


def test_readme_first_screen_names_the_two_commands_and_the_lab():
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:30])
    assert "make demo" in first_screen and "make test" in first_screen
    assert "make lab" in first_screen and "pi4,pixel7" in first_screen
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^lab:", makefile, re.M) and "harness lab up" in makefile
