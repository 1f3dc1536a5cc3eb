"""The example notebook runs top to bottom and shows what its text says it shows."""

import ast
import json
import math
import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
SCORED = "for i in range(10):\n    print(i)\n"  # the text the last cell scores


def printed(cell) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def result(cell) -> str:
    return "".join(o.data["text/plain"] for o in cell.outputs if o.output_type == "execute_result")


def test_quickstart_notebook_runs(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    trained, loaded, sampled, scored = [c for c in nb.cells if c.cell_type == "code"]
    assert f"run.score({json.dumps(SCORED)})" in scored.source
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    # train() returns the final validation loss (nats per byte) and bits per byte: one figure in
    # two units, better than a uniform guess over 256 bytes.
    loss, bits = ast.literal_eval(result(trained))
    assert 0 < loss < math.log(256) and abs(bits - loss / math.log(2)) < 1e-4 * bits
    # lmjax.load restores the last checkpoint: step 150 of a byte model of width 128, whose
    # metrics table ends at the last logged step.
    assert printed(loaded) == "150 byte 128\n" and result(loaded).splitlines()[-1].split()[1] == "150"
    assert (tmp_path / "runs" / "notebook" / "checkpoints" / "150").is_dir()
    # Two continuations, one line each, printed as string literals.
    assert [type(ast.literal_eval(line)) for line in printed(sampled).splitlines()] == [str, str]
    # The score: the log-likelihood of every byte after the first, per byte near the validation
    # loss (within a factor of 2 below; the first bytes have little context) and better than a
    # uniform guess.
    total, tokens = re.fullmatch(r"(-\d+\.\d) nats over (\d+) tokens\n", printed(scored)).groups()
    assert int(tokens) == len(SCORED.encode()) - 1
    assert loss / 2 < -float(total) / int(tokens) < math.log(256)
