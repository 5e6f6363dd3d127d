"""run.json / stage records keep numpy facts as numbers, not strings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medpipe.pipeline.artifacts import json_default_lenient
from medpipe.pipeline.provenance import write_run_record


def test_numpy_facts_stay_numbers_in_run_json(tmp_path: Path) -> None:
    write_run_record(tmp_path, {"facts": {"voxels": np.int64(7), "ml": np.float32(0.25), "path": Path("/a")}})
    back = json.loads((tmp_path / "run.json").read_text())
    assert back["facts"] == {"voxels": 7, "ml": 0.25, "path": "/a"}
    assert json.loads(json.dumps({"x": complex(1, 2)}, default=json_default_lenient)) == {"x": "(1+2j)"}
