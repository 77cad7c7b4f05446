"""benchmarks/device_check.sh: on a machine without a GPU it stops at once, in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT


def test_without_a_gpu_the_device_check_stops_at_once_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: run the check itself")
    out = tmp_path / "device.json"
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), str(out)], capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert done.returncode == 2
    assert done.stderr.strip() == ("device check: no usable CUDA GPU here (torch.cuda.is_available() is false); "
                                   "run it on a GPU node")
    assert not out.exists()
