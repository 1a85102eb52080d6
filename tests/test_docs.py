"""README stays true: its field table is the model's, and CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

from builder import manifest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_field_table_is_generated_from_the_model() -> None:
    table = README.split("<!-- fields:begin -->\n", 1)[1].split("\n<!-- fields:end -->", 1)[0]
    assert table == manifest.field_table_markdown()


def test_ci_runs_exactly_the_readme_test_command() -> None:
    commands = re.findall(r"^    (python3 -m venv .*)$", README, re.M)
    test_cmd = next(c for c in commands if c.endswith("pytest"))
    ci = (ROOT / ".ci/run").read_text().splitlines()
    assert test_cmd in ci


def test_readme_answerfile_table_is_generated_from_the_model() -> None:
    from builder import answercheck

    table = README.split("<!-- answerfile-fields:begin -->\n", 1)[1].split("\n<!-- answerfile-fields:end -->", 1)[0]
    assert table == answercheck.field_table_markdown()


def test_readme_answerfile_examples_are_valid(tmp_path: Path) -> None:
    from builder import answercheck

    section = README.split("### Answerfiles", 1)[1]
    for lang in ("yaml", "xml"):
        example = section.split(f"```{lang}\n", 1)[1].split("```", 1)[0]
        path = tmp_path / f"example.{lang}"
        path.write_text(example)
        answer, warnings = answercheck.validate(path)
        assert answer.hostname == "xen1" and warnings == []


def test_readme_layout_names_every_module() -> None:
    """The Layout section matches the package: each module of builder/ (and sources/) has its line."""
    layout = README.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^ +(\w+)\.py\b", layout, re.M)) | set(re.findall(r"\b(\w+)\.py\b", layout))
    modules = {p.stem for p in (ROOT / "builder").glob("*.py")} - {"__init__", "__main__"}
    missing = sorted(modules - listed)
    assert not missing, f"README.md's Layout section lacks: {', '.join(m + '.py' for m in missing)}"
    sources = {p.stem for p in (ROOT / "builder/sources").glob("*.py")} - {"__init__"}
    line = next(line for line in layout.splitlines() if line.strip().startswith("sources/"))
    assert all(s in line for s in sources), line
