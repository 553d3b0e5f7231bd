"""fpcore.results: every record carries hardware, versions and commit, and is written atomically."""
from __future__ import annotations

import pytest
import torch

from fpcore import results


def test_save_json_records_metadata(tmp_path):
    path = results.save_json("demo", {"rows": [{"T": 4, "ms": torch.tensor(1.5)}]}, directory=tmp_path)
    record = results.load_json(path)
    assert record["rows"] == [{"T": 4, "ms": 1.5}]
    meta = record["meta"]
    assert meta["torch_version"] == torch.__version__ and meta["profile"] == "quick"
    assert meta["device"] and meta["device_type"] in ("cpu", "cuda")
    assert meta["commit"] is None or len(meta["commit"].split("+")[0]) == 40
    assert results.find("demo*.json", tmp_path) == [path]
    assert [p.name for p in tmp_path.iterdir()] == ["demo.json"]  # no temporary file left


def test_bad_names_and_payloads_are_refused(tmp_path):
    with pytest.raises(ValueError, match="plain file stem"):
        results.save_json("../escape", {}, directory=tmp_path)
    with pytest.raises(TypeError, match="cannot write object"):
        results.save_json("bad", {"x": object()}, directory=tmp_path)
    assert list(tmp_path.iterdir()) == []
