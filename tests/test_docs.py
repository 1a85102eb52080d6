"""The docs stay true: generated tables are the model's, examples are valid, the module map
names every module, and CI runs the README's test command."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from builder import manifest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"


def between(text: str, begin: str, end: str) -> str:
    return text.split(f"<!-- {begin} -->\n", 1)[1].split(f"\n<!-- {end} -->", 1)[0]


def test_readme_is_a_front_page() -> None:
    assert len(README.splitlines()) < 250


def test_ci_runs_exactly_the_readme_test_command() -> None:
    commands = re.findall(r"^    (python3 -m venv .*)$", README, re.M)
    test_cmd = next(c for c in commands if c.endswith("pytest"))
    ci = (ROOT / ".ci/run").read_text().splitlines()
    assert test_cmd in ci


def test_readme_manifest_example_is_the_real_spin() -> None:
    example = README.split("## A manifest", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    assert example == (ROOT / "spins/vendor-example.yaml").read_text()


def anchors(page: Path) -> set[str]:
    """The anchors GitHub makes for a page's headings."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_links_between_pages_resolve() -> None:
    """Every relative link in README.md, docs/ and bench/ names a file or directory that exists,
    and a #fragment a heading of that page."""
    pages = [ROOT / "README.md", *sorted((ROOT / "bench").glob("*.md")), *sorted(DOCS.glob("*.md"))]
    broken = []
    for page in pages:
        for target, fragment in re.findall(r"\]\(([^)#:]*)(?:#([^)]*))?\)", page.read_text()):
            path = page.parent / target if target else page
            if not path.exists() or (fragment and fragment not in anchors(path)):
                broken.append(f"{page.relative_to(ROOT)}: {target}#{fragment}")
    assert not broken, broken


def test_manifest_field_table_is_generated_from_the_model() -> None:
    table = between((DOCS / "manifest.md").read_text(), "fields:begin", "fields:end")
    assert table == manifest.field_table_markdown()


def test_answerfile_table_is_generated_from_the_model() -> None:
    from builder import answercheck

    table = between((DOCS / "answerfiles.md").read_text(), "answerfile-fields:begin", "answerfile-fields:end")
    assert table == answercheck.field_table_markdown()


def test_answerfile_examples_are_valid(tmp_path: Path) -> None:
    from builder import answercheck

    page = (DOCS / "answerfiles.md").read_text()
    for lang in ("yaml", "xml"):
        example = page.split(f"```{lang}\n", 1)[1].split("```", 1)[0]
        path = tmp_path / f"example.{lang}"
        path.write_text(example)
        answer, warnings = answercheck.validate(path)
        assert answer.hostname == "xen1" and warnings == []


def test_module_map_names_every_module() -> None:
    """docs/architecture.md's module map: every path it names exists, and every module of
    builder/ and builder/sources/ (sources/__init__.py too) has its line."""
    page = (DOCS / "architecture.md").read_text()
    section = page.split("## Module map\n", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"^ {4}(builder/\S+) {2,}\S", section, re.M)
    assert named, "no module lines found in the module map"
    missing_files = sorted(n for n in named if not (ROOT / n).is_file())
    modules = {f"builder/{p.name}" for p in (ROOT / "builder").glob("*.py")} - {
        "builder/__init__.py",
        "builder/__main__.py",
    }
    modules |= {f"builder/sources/{p.name}" for p in (ROOT / "builder/sources").glob("*.py")}
    unnamed = sorted(modules - set(named))
    assert not missing_files and not unnamed, (
        f"docs/architecture.md's module map names what does not exist: {missing_files}; lacks: {unnamed}"
    )


def _record_module():
    spec = importlib.util.spec_from_file_location("bench_record", ROOT / "bench/record.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_results_are_appended_as_dated_entries(tmp_path: Path) -> None:
    record = _record_module()
    run = record.Run("fetch", argv=["--no-wait"])
    path = run.write(
        [("lock (no lock yet)", "12.30 s"), ("fetch --offline", "0.41 s")],
        [("offline re-fetch under 1 s", True), ("something slow", False)],
        directory=tmp_path,
    )
    assert path == tmp_path / "fetch.md"
    first = path.read_text()
    assert first.startswith("# bench/fetch.py results\n")
    entry = first.split("\n## ", 1)[1]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC: bench/fetch.py --no-wait\n", entry)
    assert re.search(r"^- commit: \S+", entry, re.M)
    assert re.search(
        r"^- machine: \d+ cores, [\d.]+ GiB memory, load [\d.]+ at the start, [\d.]+ at the end$", entry, re.M
    )
    assert "| lock (no lock yet) | 12.30 s |" in entry
    assert "- PASS offline re-fetch under 1 s" in entry and "- FAIL something slow" in entry
    run.write([("fetch --offline", "0.39 s")], [], directory=tmp_path)
    second = path.read_text()
    assert second.startswith(first) and second.count("\n## ") == 2  # appended, nothing rewritten
