"""benchmarks/results/README.md is generated from the JSON files beside it (benchmarks/results_readme.py)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
SEPARATOR = re.compile(r"^\|(\s*:?-{3,}:?\s*\|)+$")


def _load():
    spec = importlib.util.spec_from_file_location("results_readme", ROOT / "benchmarks" / "results_readme.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


results_readme = _load()


def cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def tables(text: str) -> list[list[str]]:
    """The Markdown tables of ``text`` (each its lines), asserting each is well formed: a blank line (or the
    start) before it, a header, a separator, and rows with the header's column count, all contiguous."""
    lines = text.splitlines()
    found, i = [], 0
    while i < len(lines):
        if not lines[i].startswith("|"):
            i += 1
            continue
        j = i
        while j < len(lines) and lines[j].startswith("|"):
            j += 1
        block = lines[i:j]
        where = f"table at line {i + 1}"
        assert i == 0 or lines[i - 1].strip() == "", f"{where}: no blank line before it"
        assert j == len(lines) or lines[j].strip() == "", f"{where}: no blank line after it"
        assert len(block) >= 3, f"{where}: a header and a separator with no rows (or a stray row): {block}"
        assert SEPARATOR.match(block[1]), f"{where}: line 2 is not a separator: {block[1]!r}"
        width = len(cells(block[0]))
        assert len(cells(block[1])) == width, f"{where}: the separator has another column count"
        for n, row in enumerate(block[2:], start=i + 3):
            assert len(cells(row)) == width, f"line {n}: {len(cells(row))} columns, the header has {width}"
        found.append(block)
        i = j
    return found


def rows_by_file(text: str) -> dict[str, list[str]]:
    out = {}
    for block in tables(text):
        for row in block[2:]:
            first = cells(row)[0]
            if re.fullmatch(r"`[^`]+\.json`", first):
                out[first.strip("`")] = cells(row)
    return out


def test_the_committed_readme_is_what_the_json_files_give():
    assert (RESULTS / "README.md").read_text() == results_readme.render(RESULTS), (
        "benchmarks/results/README.md is stale: run python benchmarks/results_readme.py")


def test_every_json_file_has_a_row():
    rows = rows_by_file((RESULTS / "README.md").read_text())
    missing = sorted(p.name for p in RESULTS.glob("*.json") if p.name not in rows)
    assert not missing, f"no row for {missing}"


def test_the_committed_tables_are_well_formed():
    text = (RESULTS / "README.md").read_text()
    assert text.splitlines()[2] == results_readme.HEADER
    assert len(tables(text)) >= 2  # the results and the crash safety at least


def test_no_unformatted_floats_in_the_committed_readme():
    # a float printed with all its digits (13.70559187500021) means a summarizer missed its formatting
    assert not re.search(r"\d\.\d{5,}", (RESULTS / "README.md").read_text())


def similarity(compute: float, write: float, **extra) -> dict:
    return {"shape": [1000, 10, 8], "chunk_rows": 64, "gemm_gflops": 100.0,
            "similarity_without_matrix_gflops": 100.0 * compute, "similarity_without_matrix_vs_gemm": compute,
            "similarity_with_matrix_s": 1.5, "similarity_with_matrix_vs_gemm": 0.1, "disk_seq_write_MBps": 1000,
            "hdf5_write_MBps": 800, "hdf5_vs_disk": 0.8, "stage_write_MBps": round(1000 * write),
            "stage_write_vs_disk": write, "matrix_MB": 1, "peak_rss_MB": {"without_matrix": 10, "with_matrix": 11},
            "machine": "test box, 3 cores", **extra}


def write(folder: Path, name: str, data) -> None:
    (folder / name).write_text(json.dumps(data))


@pytest.mark.parametrize(("value", "verdict"), [(0.255, "**not met**"), (0.6, "met")])
def test_the_write_target_is_met_or_not_from_the_numbers(tmp_path, value, verdict):
    write(tmp_path, "similarity_1m.json", similarity(compute=0.8, write=value))
    row = rows_by_file(results_readme.render(tmp_path))["similarity_1m.json"]
    script, machine, result = row[1:]
    assert machine == "test box, 3 cores"
    assert f"{value} of the disk's sequential write rate" in result
    assert f"target ≥ 0.50: {verdict})" in result
    assert "target ≥ 0.70: met)" in result  # the compute ratio 0.8 passes
    assert ("not met" in result) == (verdict != "met")


def test_a_target_the_file_records_is_used_instead(tmp_path):
    write(tmp_path, "similarity_1m.json", similarity(compute=0.8, write=0.255, targets={"stage_write_vs_disk": 0.2}))
    result = rows_by_file(results_readme.render(tmp_path))["similarity_1m.json"][3]
    assert "target ≥ 0.20: met)" in result
    assert "not met" not in result


def test_a_missed_time_target_reads_not_met(tmp_path):
    write(tmp_path, "plan_10k_runs.json", {"runs": 10800, "axes": 5, "nodes": 12007, "tasks": 44407,
                                            "load_validate_expand_s": 0.9, "build_graph_s": 1.1, "to_dict_s": 0.3,
                                            "cli_plan_json_s": 2.5, "machine": "slow box"})
    result = rows_by_file(results_readme.render(tmp_path))["plan_10k_runs.json"][3]
    assert "10,800 runs" in result and "2.5 s whole command (target < 2 s: **not met**)" in result


def test_a_file_without_a_summarizer_still_gets_a_row(tmp_path):
    write(tmp_path, "something_new.json", {"seconds": 1.0, "machine": {"cpu": "Some CPU", "cores": 4}})
    write(tmp_path, "no_machine.json", {"seconds": 1.0})
    (tmp_path / "broken.json").write_text("{not json")
    rows = rows_by_file(results_readme.render(tmp_path))
    assert rows["something_new.json"][2] == "Some CPU, 4 cores"
    assert "see the file" in rows["something_new.json"][3]
    assert rows["no_machine.json"][2] == "not recorded"
    assert "unreadable" in rows["broken.json"][3]


def test_a_summary_that_no_longer_fits_its_file_shows_in_its_row(tmp_path):
    write(tmp_path, "rewriting_1m.json", {"examples": 5, "machine": "m"})  # fields gone
    result = rows_by_file(results_readme.render(tmp_path))["rewriting_1m.json"][3]
    assert "summary failed" in result and "KeyError" in result


def test_the_gpu_section_renders_device_check_json_when_there(tmp_path):
    text = results_readme.render(tmp_path)
    assert "`device_check.json` (`bash benchmarks/device_check.sh`) has not been produced" in text
    write(tmp_path, "device_check.json", {
        "device": "NVIDIA H200", "gpus": 1, "torch": "2.6.0", "cuda": "12.4", "host": "n1", "started": "2027-01-01",
        "similarity": {"status": "ok", "rows": 200000, "stage_s": 0.0123, "seconds": 4.2},
        "tma": {"status": "failed", "error": "RuntimeError: no | pipes", "seconds": 0.1}})
    text = results_readme.render(tmp_path)
    assert "has not been produced" not in text
    gpu = text.split("## GPU", 1)[1]
    rows = rows_by_file(gpu)
    assert rows["device_check.json"][2] == "1 x NVIDIA H200, torch 2.6.0, CUDA 12.4 (2027-01-01)"
    sections = {cells(r)[0]: cells(r) for block in tables(gpu) for r in block[2:]}
    assert sections["`similarity`"][1:3] == ["ok", "4.2 s"] and "rows 200,000" in sections["`similarity`"][3]
    assert sections["`tma`"][1] == "failed" and "no \\| pipes" in sections["`tma`"][3]


def test_check_exits_1_when_the_readme_is_stale_and_0_once_written(tmp_path, capsys):
    write(tmp_path, "similarity_1m.json", similarity(compute=0.8, write=0.3))
    (tmp_path / "README.md").write_text("hand-written\n")
    assert results_readme.main(["--check", "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "line 1" in err
    assert results_readme.main(["--results", str(tmp_path)]) == 0
    assert results_readme.main(["--check", "--results", str(tmp_path)]) == 0
    assert (tmp_path / "README.md").read_text() == results_readme.render(tmp_path)


def test_numbers_are_formatted():
    num, pct = results_readme.num, results_readme.pct
    assert [num(1.231), num(4.19), num(13.70559187500021), num(1001000), num(217.7), num(1178.4)] == [
        "1.231", "4.19", "13.7", "1,001,000", "217.7", "1,178"]
    assert pct(0.092) == "9.2 %" and results_readme.minutes(500.3) == "8 min 20 s"
