"""Every ``python`` code block in README.md and docs/ runs, so the docs cannot drift from the code.

Blocks of one file run in order in one namespace (a page reads as one
session). A block whose fence line is ```` ```{.python .skip-test} ```` is shown (the
fence syntax pymdownx.superfences renders) but not run (for commands needing
several processes, for example).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(?:python|\{\.python)([^\n]*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])


def code_blocks(page: Path) -> list[str]:
    return [
        body
        for options, body in FENCE.findall(page.read_text(encoding="utf-8"))
        if "skip-test" not in options
    ]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_code_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for index, block in enumerate(code_blocks(page)):
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            try:
                exec(compile(block, f"{page.name}[block {index}]", "exec"), namespace)
            except Exception as error:  # pragma: no cover - the failure message is the point
                pytest.fail(f"{page.name}, code block {index} raised {error!r}:\n{block}")


def test_every_page_has_been_found() -> None:
    assert ROOT / "README.md" in PAGES
