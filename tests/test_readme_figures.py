"""The documentation's figures against the records they come from: README.md's record tables
(every cell rendered from the record its row names, `benchmarks/readme_figures.py`), and every
record that README.md, benchmarks/README.md or benchmarks/RESULTS.md cites exists."""

import re
from pathlib import Path

from benchmarks import readme_figures

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "benchmarks/README.md", "benchmarks/RESULTS.md")
RECORD_NAME = re.compile(r"\b\d{8}T\d{6}Z-[\w.-]+?\.json\b")


def test_readme_tables_match_their_records():
    text = (REPO / "README.md").read_text()
    tables = readme_figures.record_tables(text)
    assert len(tables) >= 2, "README.md's results table and n-gram table each end in a `record` column"
    assert all(len(rows) >= 2 for rows in tables), "a record table without rows"
    assert readme_figures.mismatches(text, REPO) == []


def test_a_figure_that_differs_from_its_record_is_listed():
    rec = next(iter((REPO / readme_figures.RESULTS).glob("*-readme-*.json")))
    path = f"{readme_figures.RESULTS}/{rec.name}"
    table = f"| val bits/byte | record |\n|---|---|\n| 9.99 | [`{rec.name}`]({path}) |\n"
    assert [m.split(": ")[1] for m in readme_figures.mismatches(table, REPO)] == ["val bits/byte"]


def test_cited_records_exist():
    cited = {name for doc in DOCS for name in RECORD_NAME.findall((REPO / doc).read_text())}
    assert cited, "the documentation cites no record"
    missing = sorted(n for n in cited if not (REPO / "benchmarks/results" / n).is_file())
    assert missing == []
