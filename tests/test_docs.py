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
    from builder import answerfiles

    table = README.split("<!-- answerfile-fields:begin -->\n", 1)[1].split("\n<!-- answerfile-fields:end -->", 1)[0]
    assert table == answerfiles.field_table_markdown()


def test_readme_answerfile_examples_are_valid(tmp_path: Path) -> None:
    from builder import answerfiles

    section = README.split("### Answerfiles", 1)[1]
    for lang in ("yaml", "xml"):
        example = section.split(f"```{lang}\n", 1)[1].split("```", 1)[0]
        path = tmp_path / f"example.{lang}"
        path.write_text(example)
        answer, warnings = answerfiles.validate(path)
        assert answer.hostname == "xen1" and warnings == []
