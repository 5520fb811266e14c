"""The README's set-up commands and .ci/run agree (the CI runs exactly the README test command)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, re.S)]


def test_ci_runs_the_readme_test_command():
    blocks = _bash_blocks((REPO / "README.md").read_text())
    test_cmd = next(b for b in blocks if "pytest" in b)
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1].strip() == test_cmd
    quick = next(b for b in blocks if "vidsift curate" in b)
    assert "vidsift curate quickstart " in quick and "../shared/videos/quality" in quick
    assert (REPO / "recipes" / "curate" / "quickstart.toml").exists()  # what the name resolves to
    assert "torch==" in (REPO / "pyproject.toml").read_text()  # never an unpinned torch
