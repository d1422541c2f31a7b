"""Rewrite the configuration table in README.md from the settings in cartlytics.common.config."""

from __future__ import annotations

import re
from pathlib import Path

from cartlytics.common.config import settings_table

README = Path(__file__).resolve().parent.parent / "README.md"


def main() -> None:
    text = README.read_text()
    updated = re.sub(
        r"(<!-- config-table:start -->\n).*?(\n<!-- config-table:end -->)",
        lambda m: m.group(1) + settings_table() + m.group(2),
        text,
        flags=re.S,
    )
    README.write_text(updated)


if __name__ == "__main__":
    main()
