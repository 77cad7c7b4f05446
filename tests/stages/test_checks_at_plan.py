"""Every value and every file the config names is checked by ``plan`` and ``submit --dry-run``,
before anything is queued: a misspelt DeepSpeed preset must not wait for the upstream stages (and
the queue) to fail when training starts."""

from __future__ import annotations

import re

import pytest

from hpcgen.cli import main
from tests.conftest import ROOT

BASE = f"""name: checks
output_dir: out
cluster: {{executor: local}}
data:
  sources: [{{format: niv2, path: {ROOT / "examples" / "data" / "niv2-sample"}}}]
train:
  preset: demo
"""

CASES = {
    "preset": ("  deepspeed: zero5\n", 8, "train.deepspeed: no DeepSpeed preset 'zero5'",
               "use one of zero0, zero1, zero2"),
    "stage": ("  deepspeed_overrides: {zero_optimization: {stage: 7}}\n", 8,
              "train.deepspeed_overrides: ZeRO stage 7 does not exist", "use stage 0, 1, 2 or 3"),
    "missing file": ("  deepspeed: ./mine.json\n", 8, "train.deepspeed: DeepSpeed config", "does not exist"),
    # a DeepSpeed file is relative to the experiment file; the error names where it was found
    "broken file": ("  deepspeed: ./broken.json\n", 8, "train.deepspeed: ", "broken.json:2: not valid JSON"),
    "image": ("", 3, "cluster.container.image: container image", "not found"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", [["plan"], ["submit", "--dry-run"], ["submit"]])
def test_bad_values_and_files_are_refused_before_anything_runs(case, command, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HPCGEN_PIPELINE", raising=False)
    monkeypatch.chdir(tmp_path)
    extra, line, expect, fix = CASES[case]
    text = BASE + extra
    if case == "image":
        text = text.replace("cluster: {executor: local}", "cluster: {executor: local, container: {image: no.sif}}")
    (tmp_path / "broken.json").write_text('{"zero_optimization":\n  {"stage": 2,}\n}\n')
    (tmp_path / "exp.yaml").write_text(text)
    code = main([command[0], str(tmp_path / "exp.yaml"), *command[1:]])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    [message] = err.splitlines()
    assert re.match(rf"error: (\S*/)?exp.yaml:{line}: {re.escape(expect)}", message) and fix in message, message
    assert not (tmp_path / "out").exists()


def test_a_good_deepspeed_file_and_overrides_pass_plan(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HPCGEN_PIPELINE", raising=False)
    (tmp_path / "mine.json").write_text('{"zero_optimization": {"stage": 1}}')
    (tmp_path / "exp.yaml").write_text(BASE + f"  deepspeed: {tmp_path / 'mine.json'}\n"
                                       "  deepspeed_overrides: {zero_optimization: {stage: 3}}\n")
    assert main(["plan", str(tmp_path / "exp.yaml")]) == 0, capsys.readouterr().err
    from hpcgen.training.dsconfig import load_deepspeed

    assert load_deepspeed(str(tmp_path / "mine.json"), {"zero_optimization": {"stage": 3}}) == {
        "zero_optimization": {"stage": 3}}


@pytest.mark.parametrize("command", [["plan"], ["submit", "--dry-run"]])
def test_batch_sizes_are_checked_against_the_ranks_a_profile_gives(command, tmp_path, capsys, monkeypatch):
    """The a800x8 profile gives train a node of 8 GPUs: a micro batch of 16 cannot make a
    global batch of 16 there, which must be said before the job waits in the queue."""
    monkeypatch.delenv("HPCGEN_PIPELINE", raising=False)
    (tmp_path / "exp.yaml").write_text(BASE.replace("cluster: {executor: local}",
                                                    "cluster: {executor: local, profile: a800x8}"))
    code = main([command[0], str(tmp_path / "exp.yaml"), *command[1:]])
    [message] = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert re.match(r"error: \S*exp.yaml:6: train.micro_batch: global batch 16 is not a multiple of micro batch 4 "
                    r"x 8 data-parallel ranks; with 8 rank\(s\) \(1 node\(s\) x 8\), set train.micro_batch to one "
                    r"of 1, 2$", message), message
    (tmp_path / "exp.yaml").write_text((tmp_path / "exp.yaml").read_text() + "  micro_batch: 1\n")
    assert main(["plan", str(tmp_path / "exp.yaml")]) == 0


def test_the_7b_preset_fits_two_nodes_of_eight_gpus():
    from hpcgen.stages.train import PRESETS
    from hpcgen.training.data import batch_sizes

    p = PRESETS["llama2-7b"]
    assert batch_sizes(p["global_batch"], p["micro_batch"], 16) == 1  # the paper: 16 = 2 x 8 x 1
    assert (p["lr"], p["deepspeed"], p["precision"], p["save_every"]) == (1e-6, "zero3", "bf16", 10)
