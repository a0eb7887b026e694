"""The README's usage example is examples/quickstart.py, and it runs on both backends."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support import Backend

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "quickstart.py"


def test_readme_usage_block_is_the_quickstart_code() -> None:
    readme = (REPO / "README.md").read_text()
    usage = readme.split("## Usage", 1)[1]
    block = re.search(r"```python\n(.*?)```", usage, re.DOTALL)
    assert block is not None
    assert block.group(1) in EXAMPLE.read_text()


def test_quickstart_runs_end_to_end(backend: Backend, tmp_path: Path) -> None:
    args = [sys.executable, str(EXAMPLE)]
    if backend.name == "postgres":
        args.append(backend.url)  # a migrated scratch database: upgrade() is a no-op there
    result = subprocess.run(
        args, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "listed User(id=" in result.stdout
    assert "age=31" in result.stdout
