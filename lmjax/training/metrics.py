"""Where training metrics go: the workdir's metrics.jsonl (the record) and TensorBoard events.
Reading them back is `lmjax.workdir`'s job."""

from __future__ import annotations

import json
import math
import sys

from lmjax.workdir import TENSORBOARD, Workdir, cannot_write


class MetricsWriter:
    """Appends one JSON object per logged step to <workdir>/metrics.jsonl and to TensorBoard."""

    def __init__(self, workdir: Workdir, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        self.file = workdir.open_metrics()
        self.tb = _summary_writer()(str(workdir.file(TENSORBOARD)))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        try:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        except OSError as e:
            raise cannot_write(self.file.name, e) from e
        for k, v in row.items():
            # A list (one value per replica) becomes one curve per replica: loss_replicas/0, ...
            for name, x in ([(f"{k}/{i}", x) for i, x in enumerate(v)] if isinstance(v, list) else [(k, v)]):
                if k != "step" and isinstance(x, (int, float)) and math.isfinite(x):
                    self.tb.add_scalar(name, x, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.tb.close()


def _summary_writer():
    """tensorboardX's SummaryWriter, imported without PyTorch: tensorboardX imports torch whenever
    it is installed (1.2 s and ~300 MB per training process, measured with the hf extra) for
    tensors lmjax never passes it. A torch the process already imported is left alone."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def _jsonable(v):
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep them readable
    return v
