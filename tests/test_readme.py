"""The README's test command is what CI runs."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Test", 1)[1]
    command = section.split("```bash\n", 1)[1].split("\n```", 1)[0].strip()
    assert command.splitlines()[-1] in (ROOT / ".ci" / "run").read_text().splitlines()
