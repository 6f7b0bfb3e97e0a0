"""The documentation is checked against the code: the generated reference (docs/cli.md, docs/config.md)
is current and complete."""
from __future__ import annotations

import pytest

from pangu_pro.cli import build_parser
from pangu_pro.reference import generated, undocumented_arguments, undocumented_keys


@pytest.mark.parametrize("path,text", list(generated().items()), ids=lambda v: getattr(v, "name", ""))
def test_generated_reference_is_current(path, text):
    current = path.read_text(encoding="utf-8") if path.is_file() else ""
    assert current == text, f"{path.name} is stale: run `python tools/gen_docs.py` and commit the result"


def test_every_flag_and_key_has_a_meaning():
    """bench flags belong to each benchmark module and are listed but not required to carry help."""
    missing = [m for m in undocumented_arguments(build_parser()) if not m.startswith("bench ")]
    assert not missing, f"add help= to: {', '.join(missing)}"
    assert not undocumented_keys(), ("add a `  # meaning` comment on the field's line: "
                                     + ", ".join(undocumented_keys()))
