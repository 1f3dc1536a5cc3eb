"""The documentation's figures against the records they come from: README.md's record tables
(every cell rendered from the record its row names, `benchmarks/readme_figures.py`); every dated
row and per-run table of benchmarks/RESULTS.md (each as its benchmark renders it from a committed
record, `benchmarks/records.py`); and every record that README.md, benchmarks/README.md or
benchmarks/RESULTS.md cites exists."""

import json
import re
from pathlib import Path

from benchmarks import kernel_classes, readme_figures, records

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / readme_figures.RESULTS
DOCS = ("README.md", "benchmarks/README.md", "benchmarks/RESULTS.md")
RECORD_NAME = re.compile(r"\b\d{8}T\d{6}Z-[\w.-]+?\.json\b")
# A record's kind (its file name after the date) -> the RESULTS.md table its benchmark adds it to
# (harness records, named after their config, are told by their `figures`).
TABLES = {"speedrun": records.SPEEDRUN, "second-start": records.SECOND_START,
          "attention_dots": records.ATTENTION_DOTS, "vs_nanogpt": records.VS_NANOGPT,
          "nanogpt_trainpy": records.NANOGPT_TRAINPY, "hf_import": records.HF_IMPORT,
          "data-store": records.DATA_STORE,
          "kernel_classes": kernel_classes.KERNEL_CLASSES}


def rendered(path: Path) -> str | None:
    """What the record at `path` puts into RESULTS.md (None: nothing)."""
    rec, kind = json.loads(path.read_text()), path.stem.split("-", 1)[1]
    if "figures" in rec:
        return records.HARNESS.row(rec)
    table = next((t for k, t in TABLES.items() if kind == k or kind.startswith(k + "-")), None)
    return table.row(rec) if table else None


def test_readme_tables_match_their_records():
    text = (REPO / "README.md").read_text()
    tables = readme_figures.record_tables(text)
    assert len(tables) >= 2, "README.md's results table and n-gram table each end in a `record` column"
    assert all(len(rows) >= 2 for rows in tables), "a record table without rows"
    assert readme_figures.mismatches(text, REPO) == []


def test_a_figure_that_differs_from_its_record_is_listed():
    rec = next(RESULTS.glob("*-readme-*.json"))
    path = f"{readme_figures.RESULTS}/{rec.name}"
    table = f"| val bits/byte | record |\n|---|---|\n| 9.99 | [`{rec.name}`]({path}) |\n"
    assert [m.split(": ")[1] for m in readme_figures.mismatches(table, REPO)] == ["val bits/byte"]


def test_readme_figures_writes_a_record_its_cells_render_from(tmp_path):
    """One `lmjax train` run (an n-gram: no compile) into a record; a config that evaluates fewer
    batches is evaluated on the whole split, and its command says so."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"line {i}: the quick brown fox\n" for i in range(400)))
    args = [f"--config.data.corpus={corpus}", "--config.train.eval_batches=1"]
    rec = readme_figures.main(["--config", "configs/ngram.py:2", "--out", str(tmp_path), *args])
    assert rec["command"] == " ".join(["lmjax train --config configs/ngram.py:2", *args,
                                       "--config.train.eval_batches=0"])
    assert rec["run_config"]["train"]["eval_batches"] == 0 and rec["steps"] == 1
    assert rec["val_tokens"] > 0 and 0 < rec["val_bits_per_byte"] < 8 and rec["params"] > 0
    name = Path(rec["json_path"]).name
    header = ["command", "n-grams", "val bits/byte", "record"]
    row = [readme_figures.CELLS[h](rec, name) for h in header]
    table = "\n".join("| " + " | ".join(r) + " |" for r in (header, ["---"] * 4, row))
    assert readme_figures.mismatches(table, tmp_path) == []


def test_results_md_rows_and_tables_are_rendered_from_records():
    text = (REPO / "benchmarks/RESULTS.md").read_text()
    blocks = [b for b in map(rendered, sorted(RESULTS.glob("*.json"))) if b]
    rows = {line for b in blocks if b.startswith("| ") for line in b.splitlines()}  # a record's rows
    dated = [line for line in text.splitlines() if re.match(r"\| 20\d\d-", line)]
    assert len(dated) > 50
    assert [line for line in dated if line not in rows] == []
    runs = [b for b in blocks if not b.startswith("| ")]  # per-run tables under a heading
    headings = [line for line in text.splitlines() if re.match(r"### 20\d\d-.*profiled steps$", line)]
    assert headings and sorted(headings) == sorted(b.splitlines()[0] for b in runs if b.splitlines()[0] in text)
    assert all(b in text for b in runs if b.splitlines()[0] in headings)


def test_cited_records_exist():
    cited = {name for doc in DOCS for name in RECORD_NAME.findall((REPO / doc).read_text())}
    assert cited, "the documentation cites no record"
    assert sorted(n for n in cited if not (RESULTS / n).is_file()) == []
