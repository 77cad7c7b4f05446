"""``hpcgen verify``: outputs changed or deleted after completion are found, and ``--repair``
makes the next submit recompute exactly them and what depends on them."""

from __future__ import annotations

from collections import Counter

from tests.pipeline.test_executors import SMALL, expected_total, final_total


def test_verify_finds_changed_and_deleted_outputs_and_repair_recomputes_them(cli, write_exp, events, tmp_path):
    path = write_exp(SMALL.replace("sleep: 1.0", "sleep: 0"))
    assert cli("submit", path, "--executor", "debug")[0] == 0
    first = len(events("start"))
    code, out, _ = cli("verify", path)
    assert code == 0 and "13 complete task(s)" in out and "every output matches its marker" in out
    store = tmp_path / "out" / "store"
    [shard] = [p for p in (store / "embed").glob("*/out-00001.json")]
    text = shard.read_text()
    digit = next(c for c in text if c.isdigit())
    shard.write_text(text.replace(digit, str((int(digit) + 1) % 10), 1))  # same size, other content
    [arrange_dir] = [p.parent for p in (store / "arrange").glob("*/out-00000.json")
                     if (p.parent / "node.json").read_text().count('"tma"')]
    (arrange_dir / "out-00000.json").unlink()
    code, out, _ = cli("verify", path)
    assert code == 1
    lines = [line for line in out.splitlines() if ": out-" in line]
    assert len(lines) == 2, out
    assert any(line.startswith(f"embed/{shard.parent.name}/00001: out-00001.json: content changed") for line in lines)
    assert any(line.startswith(f"arrange/{arrange_dir.name}/00000: out-00000.json: missing") for line in lines)
    assert "2 output(s) of 2 task(s) no longer match" in out and "--repair" in out
    code, out, _ = cli("verify", path, "--repair")
    assert code == 0 and "dropped" in out
    # the damaged embed shard and everything below it (similarity, the tma branch, both trains ...)
    code, out, _ = cli("submit", path, "--executor", "debug")
    assert code == 0
    rerun = Counter(e["task"].split("/")[0] + "/" + e["task"].split("/")[2] for e in events("start")[first:])
    assert rerun["embed/00001"] == 1 and rerun["embed/00000"] == 0  # only the damaged shard
    assert Counter(e["stage"] for e in events("start")[first:]) == {
        "embed": 1, "similarity": 1, "arrange": 1, "train": 1, "evaluate": 2, "aggregate": 1}
    assert final_total(tmp_path) == expected_total()
    code, out, _ = cli("verify", path)
    assert code == 0 and "every output matches its marker" in out


def test_verify_checks_every_file_of_a_directory_output(tmp_path):
    from hpcgen.pipeline.store import checksums
    from hpcgen.pipeline.verify import _check_file

    folder = tmp_path / "snap"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"x" * 10)
    info = checksums(folder)["files"]["a.bin"]
    seen = []
    assert _check_file(folder / "a.bin", info, seen.append) is None and seen == [10]
    (folder / "a.bin").write_bytes(b"x" * 9)
    assert _check_file(folder / "a.bin", info, seen.append) == "size 9 bytes, 10 recorded"
