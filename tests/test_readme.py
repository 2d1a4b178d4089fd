"""The README's two commands are the project's contract with a new user: keep them and CI in step."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [line for block in blocks[:2] for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_demo_and_test_commands():
    demo, tests = _readme_commands()[:2]
    assert demo.endswith("neuronet demo")
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command():
    test_cmd = _readme_commands()[1].split("&&")[-1].strip()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in [line.strip() for line in ci], f"{test_cmd!r} is not a line of .ci/run"
