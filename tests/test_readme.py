"""The README's python blocks run, in order, as a user would paste them (in a scratch directory)."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)  # files a block writes land here
    scope: dict = {"__name__": "__readme__"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"README.md python block {i}", "exec"), scope)
        except Exception as e:  # pragma: no cover - the failure message is the point
            pytest.fail(f"README python block {i} failed: {type(e).__name__}: {e}\n{code}")
