"""``hpcgen report`` on the bundled experiment with hand-made evaluation outputs in the store: the
same make_report as the aggregate stage, fed by ``Experiment.meta()`` (labels, provenance)."""

from __future__ import annotations

import json

from hpcgen.cli import main
from hpcgen.config import load_experiment
from hpcgen.pipeline.graph import build_graph
from hpcgen.pipeline.store import Store
from hpcgen.stages import default_pipeline
from tests.conftest import ROOT
from tests.report.files import losses_file


def test_report_command_rebuilds_the_report_from_the_store(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HPCGEN_PIPELINE", raising=False)
    out = tmp_path / "outputs"
    pipeline = default_pipeline()
    exp = load_experiment(ROOT / "experiments.yaml", pipeline, [f"output_dir={out}"], check_output=False)
    graph = build_graph(exp, pipeline)
    store = Store(exp.store)
    evaluate = [n for n in graph.nodes.values() if n.stage.name == "evaluate"]
    for i, node in enumerate(evaluate):
        folder = store.node_dir("evaluate", node.key)
        folder.mkdir(parents=True, exist_ok=True)
        losses_file(folder / "losses-00000.h5", [4, 8, 12], [[3.0 - 0.1 * i] * 2, [2.5] * 2, [2.2] * 2], ["t1", "t2"])
    assert main(["report", str(ROOT / "experiments.yaml"), "--set", f"output_dir={out}"]) == 0
    assert "report of" in capsys.readouterr().out
    report = exp.dir / "report"
    summary = json.loads((report / "summary.json").read_text())
    assert len(summary["runs"]) == len(exp.runs)
    assert summary["provenance"]["experiment_file"] == str((ROOT / "experiments.yaml").resolve())
    page = (report / "report.html").read_text()
    assert "experiment file" in page and str(ROOT / "experiments.yaml") in page and f"output_dir={out}" in page
    for run in exp.runs:  # the setting's name is the label where the matrix gives one
        assert run.name in page and (run.label or "") in page
