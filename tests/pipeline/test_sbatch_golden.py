"""The sbatch script of one stage, pinned: a change to what reaches Slurm must be deliberate.

Regenerate with HPCGEN_UPDATE_GOLDEN=1 after checking the difference by eye.
"""

from __future__ import annotations

import os
import shutil
import sys

from tests.conftest import FIXTURES

GOLDEN = FIXTURES / "golden" / "train_array.sbatch"
GOLDEN_CONTAINER = FIXTURES / "golden" / "train_array_container.sbatch"


def test_train_array_sbatch_script_is_pinned(cli, tmp_path):
    shutil.copy(FIXTURES / "config_with_resources.yaml", tmp_path / "exp.yaml")
    code, out, err = cli("plan", tmp_path / "exp.yaml", "--set", "train.seed=3", "--sbatch", "train")
    assert code == 0, err
    script = out.replace(str(tmp_path), "<TMP>").replace(sys.executable, "<PYTHON>")
    if os.environ.get("HPCGEN_UPDATE_GOLDEN"):
        GOLDEN.write_text(script)
    assert script == GOLDEN.read_text()
    # what the golden file says, in words: resources, the dependency guard, the requeue signal
    for line in ("#SBATCH --partition=gpu", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --gpus-per-node=4", "#SBATCH --time=1440", "#SBATCH --constraint=a100",
                 "#SBATCH --kill-on-invalid-dep=yes", "#SBATCH --signal=USR2@120", "#SBATCH --mem=8192M"):
        assert line in script


def test_array_sbatch_has_throttle_and_container_python(cli, tmp_path):
    image = tmp_path / "hpcgen.sif"
    image.write_bytes(b"not a real image")
    (tmp_path / "exp.yaml").write_text(f"""
name: arr
output_dir: out
cluster:
  array_parallelism: 3
  container: {{image: {image}, bind: [/data], gpu: true}}
embed: {{tasks: 10}}
arrange: {{strategy: tma}}
""")
    code, out, err = cli("plan", tmp_path / "exp.yaml", "--sbatch", "embed")
    assert code == 0, err
    assert "#SBATCH --array=0-9%3" in out
    assert f"apptainer exec --nv --bind /data {image} python3 -u -m submitit.core._submit" in out


def test_container_sbatch_script_is_pinned(cli, tmp_path):
    shutil.copy(FIXTURES / "config_with_container.yaml", tmp_path / "exp.yaml")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "hpcgen.sif").write_bytes(b"image")
    code, out, err = cli("plan", tmp_path / "exp.yaml", "--sbatch", "train")
    assert code == 0, err
    script = out.replace(str(tmp_path), "<TMP>")
    if os.environ.get("HPCGEN_UPDATE_GOLDEN"):
        GOLDEN_CONTAINER.write_text(script)
    assert script == GOLDEN_CONTAINER.read_text()
    # in words: every rank (2 nodes x 8) starts its own container through srun, with the GPUs,
    # binds and environment of the experiment file; resources from the a800x8 profile; srun is told
    # the CPUs of each rank (Slurm 22.05-23.02 does not pass sbatch's --cpus-per-task on to srun)
    assert ("srun --unbuffered --output <TMP>/out/experiments/boxed/logs/train/%j_%t_log.out "
            "--error <TMP>/out/experiments/boxed/logs/train/%j_%t_log.err --cpus-per-task=12 "
            "apptainer exec --nv --bind /data "
            "--bind /scratch --env DS_ACCELERATOR=cuda --env HF_HUB_OFFLINE=1 <TMP>/images/hpcgen.sif python3 -u "
            "-m submitit.core._submit <TMP>/out/experiments/boxed/logs/train") in script
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=gpu", "#SBATCH --account=lab42", "#SBATCH --exclusive",
                 "#SBATCH --time=2880"):
        assert line in script
    assert sys.executable not in script, "the host's Python is not used inside the image"
