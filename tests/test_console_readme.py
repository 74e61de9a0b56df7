"""The README's configuration table: one table (a blank line inside a Markdown table ends it,
and the rows after it render as plain text with pipes), listing every variable the settings
read."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def configuration_section() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1]
    section = re.split(r"\n#{2,3} ", section, maxsplit=1)[0]  # up to the next heading
    return section.splitlines()


def test_the_configuration_table_is_one_table():
    lines = configuration_section()
    rows = [i for i, line in enumerate(lines) if line.startswith("|")]
    assert rows, "no table"
    gaps = [lines[i + 1] for i in range(rows[0], rows[-1]) if not lines[i + 1].startswith("|")]
    assert gaps == [], "the table is interrupted, so what follows does not render as a table"
    assert lines[rows[0] + 1].startswith("|---")


def test_every_variable_the_settings_read_is_in_the_table():
    read = set(
        re.findall(r'env\.\w+\("([A-Z_]+)"', (ROOT / "gatewaymgr" / "settings.py").read_text())
    )
    listed = set(re.findall(r"^\| `([A-Z_]+)` \|", "\n".join(configuration_section()), re.M))
    assert read - listed == set()
