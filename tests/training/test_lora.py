"""LoRA fine-tuning (train.lora) through real PEFT and real DeepSpeed on CPU (gloo, one process):
only the adapters train, snapshots are PEFT adapters, load_snapshot merges them back into a plain
model. The base model is a small randomly initialised Llama saved in tmp, with its own tokenizer."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from hpcgen.cli import main
from tests.conftest import ROOT
from tests.training.test_train import curve

DATA = ROOT / "examples" / "data" / "niv2-sample"

EXP = f"""
name: lora
output_dir: out
data:
  sources: [{{format: niv2, path: {DATA}}}]
  max_per_train_task: 1
  max_per_test_task: 1
arrange: {{strategy: random, seed: 7}}
train: {{model: BASE, lora: {{r: 4, alpha: 8, dropout: 0.0}}, max_length: 96, lr: 2.0e-2, warmup_steps: 2,
        save_every: 2, resume_every: 2, global_batch: 16, micro_batch: 8, deepspeed: zero0, eval_in_loop: true}}
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 32) with random weights and a BPE tokenizer trained on the sample
    data, saved as a pretrained model directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hpcgen.training.tokenizer import train_bpe

    texts = [p.read_text(errors="ignore")[:20000] for p in sorted((DATA / "tasks").rglob("*"))[:40] if p.is_file()]
    tok = train_bpe(texts, 512)
    torch.manual_seed(3)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                                         max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                         tie_word_embeddings=False))
    path = tmp_path_factory.mktemp("base") / "tiny-llama"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """One output directory for the module's runs: they share the prepared data and the order."""
    return tmp_path_factory.mktemp("lora")


def trained(root: Path, base: Path, extra: str = "") -> Path:
    """The train node of EXP with ``extra`` (``key: value, ...``) in its train section, trained."""
    text = EXP.replace("BASE", str(base))
    for change in filter(None, extra.split(", ")):  # a key of EXP's train section gets the new value
        key = change.split(":")[0]
        text = (re.sub(rf"{key}: [^,}}]+", change, text) if f" {key}:" in text
                else text.replace("eval_in_loop: true}", f"eval_in_loop: true, {change}}}"))
    nodes = root / "out" / "store" / "train"
    before = set(nodes.iterdir()) if nodes.is_dir() else set()
    (root / "exp.yaml").write_text(text)
    assert main(["submit", str(root / "exp.yaml"), "--executor", "debug", "--until", "train"]) == 0
    [node] = set(nodes.iterdir()) - before
    (root / f"exp-{node.name}.yaml").write_text(text)  # for a rerun of this one
    return node


@pytest.fixture(scope="module")
def zero0(root, base) -> Path:
    return trained(root, base)


def last_snapshot(node: Path) -> Path:
    return node / json.loads((node / "snapshots.json").read_text())[-1]["path"]


def lora_config():
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0)


def test_snapshots_are_small_adapters_and_only_the_adapters_trained(zero0, base):
    """The snapshot holds PEFT's adapter files (a few KB), no full weights. Merged, its q/v
    projections are the base's plus scale x B A, and every other weight is the base's bit for bit.
    That the frozen base did not move in training shows in the test loss: the training job's own
    (on the live model) equals the loss of the loaded snapshot (base from disk + adapter)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hpcgen.training.snapshot import load_snapshot

    snaps = json.loads((zero0 / "snapshots.json").read_text())
    assert [s["step"] for s in snaps] == [2, 4, 5]
    path = last_snapshot(zero0)
    files = {p.name for p in path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "snapshot.json", "tokenizer.json"} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin", "config.json"}, files
    weights = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    assert weights < 32 * 1024 < (base / "model.safetensors").stat().st_size / 4, weights
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base.resolve())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    adapter = load_file(path / "adapter_model.safetensors")
    assert len(adapter) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    assert all(re.fullmatch(r"base_model\.model\.model\.layers\.\d\.self_attn\.[qv]_proj\.lora_[AB]\.weight", k)
               for k in adapter), sorted(adapter)

    reference = AutoModelForCausalLM.from_pretrained(base).state_dict()
    merged = load_snapshot(path, torch.float32, "cpu").state_dict()
    assert merged.keys() == reference.keys()
    for key, w in merged.items():
        m = re.fullmatch(r"model\.layers\.(\d)\.self_attn\.([qv])_proj\.weight", key)
        if m is None:
            assert torch.equal(w, reference[key]), key  # frozen: the base's own weights
            continue
        prefix = f"base_model.model.model.layers.{m[1]}.self_attn.{m[2]}_proj"
        delta = (8 / 4) * adapter[f"{prefix}.lora_B.weight"] @ adapter[f"{prefix}.lora_A.weight"]
        assert delta.abs().max() > 1e-4, key  # B starts at zero: the adapter has trained
        assert torch.allclose(w, reference[key] + delta, atol=1e-6), key

    # the test loss of the training job, step by step, from the snapshots alone
    from hpcgen.metrics.loss import record_losses
    from hpcgen.training.data import collate, encode

    prepared = next((zero0.parent.parent / "prepare").glob("*/records.parquet"))
    table = pq.read_table(prepared).to_pylist()
    test = [r for r in table if r["split"] == "test"]
    template = json.loads((prepared.parent / "summary.json").read_text())["template"]
    tok = AutoTokenizer.from_pretrained(path)
    enc = encode(tok, [r["prompt"] for r in test], [r["answer"] for r in test], template, 96)
    rows = [i for i, ids in enumerate(enc.ids) if ids is not None]
    in_loop = {r["step"]: r["test_loss"] for r in map(json.loads, (zero0 / "work-00000" /
                                                                  "test_loss.jsonl").read_text().splitlines())}
    for snap in snaps:
        model = load_snapshot(zero0 / snap["path"], torch.float32, "cpu")
        with torch.no_grad():
            sums, n = record_losses(model, collate(rows, enc, tok.pad_token_id), answer_only=False)
        assert abs(float((sums / n.clamp(min=1)).mean()) - in_loop[snap["step"]]) < 1e-4, snap["step"]
    assert in_loop[5] < in_loop[2]  # and it learns


def test_load_snapshot_gives_the_logits_of_the_unmerged_peft_model(zero0, base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from hpcgen.training.snapshot import load_snapshot

    path = last_snapshot(zero0)
    merged = load_snapshot(path, torch.float32, "cpu")
    assert type(merged) is LlamaForCausalLM and not merged.training
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(path)).eval()
    ids = torch.randint(4, merged.config.vocab_size, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = merged(input_ids=ids).logits, unmerged(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(base)(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()
    assert not torch.allclose(a, plain, atol=1e-3)  # the adapter does change the model


def test_a_missing_base_model_is_one_line_naming_snapshot_and_base(zero0, tmp_path):
    import shutil

    from hpcgen.errors import ConfigError
    from hpcgen.training.snapshot import load_snapshot

    copy = tmp_path / "snap"
    shutil.copytree(last_snapshot(zero0), copy)
    config = json.loads((copy / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (copy / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError) as err:
        load_snapshot(copy, torch.float32, "cpu")
    message = str(err.value)
    assert "\n" not in message and str(copy) in message and str(tmp_path / "gone") in message, message


def test_the_trainable_count_is_peft_own(zero0, base):
    """Trainable parameters, as the job counts them (summary.json, the job log), equal PEFT's
    print_trainable_parameters for the same base and LoRA config; the optimizer holds only them."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from hpcgen.training.loop import make_optimizer

    summary = json.loads((zero0 / "summary.json").read_text())
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora_config())
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        peft_model.print_trainable_parameters()
    trainable, total = (int(x.replace(",", "")) for x in re.findall(r"params: ([\d,]+)", out.getvalue()))
    assert summary["trainable_parameters"] == trainable == 2 * 2 * 4 * (32 + 32)  # layers x (q, v) x r x (in + out)
    assert summary["parameters"] == total
    from types import SimpleNamespace

    cfg = SimpleNamespace(lr=1e-3, beta1=0.9, beta2=0.95, weight_decay=0.1)
    optimizer = make_optimizer(peft_model, cfg, {}, "cpu")
    held = [p for group in optimizer.param_groups for p in group["params"]]
    assert sum(p.numel() for p in held) == trainable and all(p.requires_grad for p in held)


@pytest.fixture(scope="module")
def zero3(root, base, zero0) -> Path:
    """The zero0 run under ZeRO-3 (world size 1) with gradient checkpointing, gathering its
    snapshots under a tiny group budget."""
    import hpcgen.training.loop as loop

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "GATHER_ELEMENTS", 200)  # the debug executor trains in this process
        return trained(root, base, "deepspeed: zero3, gradient_checkpointing: true")


def test_zero3_gathers_and_writes_the_same_adapter(zero3, zero0):
    """The pretrained base is loaded partitioned, the adapters alone are gathered (one group
    each under the tiny budget) and written; curve and adapter are those of ZeRO-0 (recomputing
    activations in the backward pass or not), and a resumable checkpoint leaves the frozen base
    out (ZeRO-3 would otherwise save its fragments)."""
    assert np.allclose(curve(zero3), curve(zero0), atol=1e-5, rtol=0)
    a = load_file(last_snapshot(zero3) / "adapter_model.safetensors")
    b = load_file(last_snapshot(zero0) / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    record = json.loads((last_snapshot(zero3) / "snapshot.json").read_text())
    assert record["gather_groups"] == 8  # 8 adapter matrices of 128 elements, and nothing else
    counts = [{k: json.loads((n / "summary.json").read_text())[k] for k in ("parameters", "trainable_parameters")}
              for n in (zero0, zero3)]
    assert counts[0] == counts[1]  # partitioned parameters counted by their full size
    base_bytes = (Path(json.loads((last_snapshot(zero0) / "adapter_config.json").read_text())
                       ["base_model_name_or_path"]) / "model.safetensors").stat().st_size
    for node in (zero0, zero3):
        work = node / "work-00000"
        assert (work / "resume" / "latest").read_text().strip() == "step-000004"
        states = sum(p.stat().st_size for p in (work / "resume" / "step-000004").glob("*model_states.pt"))
        assert 0 < states < base_bytes / 4, (states, base_bytes)  # adapters (and Adam's state) only


def test_lora_resumes_to_the_same_adapter(zero3, zero0, root, caplog):
    """A LoRA run stopped after a resumable checkpoint (without the frozen base) goes on from there
    to the adapter of an uninterrupted run: ZeRO-3, whose checkpoint loads non-strictly."""
    import shutil

    node, work = zero3, zero3 / "work-00000"
    # as if stopped in the last step: no completion, no output, no snapshot of step 5
    (node / "completions" / "00000.json").unlink()
    (node / "summary.json").unlink()
    shutil.rmtree(work / "snapshots" / "step-000005")
    with caplog.at_level(logging.INFO, logger="hpcgen.stage.train"):
        assert main(["submit", str(root / f"exp-{node.name}.yaml"), "--executor", "debug", "--until", "train"]) == 0
    assert "resumed at step 4" in caplog.text
    assert np.allclose(curve(node), curve(zero0), atol=1e-5, rtol=0)
    a = load_file(last_snapshot(node) / "adapter_model.safetensors")
    b = load_file(last_snapshot(zero0) / "adapter_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in b)


def test_lora_without_a_base_model_is_refused_at_plan(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HPCGEN_PIPELINE", raising=False)
    text = EXP.replace("model: BASE, ", "")
    (tmp_path / "exp.yaml").write_text(text)
    code = main(["plan", str(tmp_path / "exp.yaml")])
    [message] = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert re.match(r"error: \S*exp.yaml:9: train.lora: LoRA adapts a pretrained model and train.model is not set; "
                    r"set train.model to a local model directory$", message), message
    assert not (tmp_path / "out").exists()


def test_plan_estimates_adapter_snapshots(base):
    """plan's disk estimate of a LoRA run is its adapters' size, not the model's."""
    from hpcgen.stages.train import Train, TrainConfig
    from hpcgen.training.model import _DEFAULT_TARGETS, lora_parameter_count

    cfg = TrainConfig(model=str(base), lora={"r": 4}, save_every=1000)
    est = Train().estimate(type("C", (), {"train": cfg})(), 1)
    assert est.disk_bytes == 4 * 2 * 2 * 4 * (32 + 32)  # fp32 x layers x (q, v) x r x (in + out)
    llama = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000}
    assert lora_parameter_count(llama, cfg.lora.model_copy(update={"r": 8})) == 4_194_304  # PEFT's count for 7B
    every = cfg.lora.model_copy(update={"r": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                   "gate_proj", "up_proj", "down_proj"]})
    assert lora_parameter_count(llama, every) == 19_988_480
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_defaults

    assert all(peft_defaults[kind] == targets for kind, targets in _DEFAULT_TARGETS.items())  # plan's copy is PEFT's


def test_build_model_wraps_with_lora_and_refuses_what_does_not_fit(base):
    """Without DeepSpeed: the wrapped model trains its adapters only; with gradient checkpointing
    the embeddings' output requires grad (one hook, not one per wrapper); a target module the
    model lacks, or no base model, is a one-line ConfigError, not PEFT's traceback in the job."""
    from hpcgen.errors import ConfigError
    from hpcgen.stages.train import TrainConfig
    from hpcgen.training.model import build_model, parameter_counts

    cfg = TrainConfig(model=str(base), lora={"r": 2, "target_modules": ["down_proj"]}, gradient_checkpointing=True)
    model = build_model(cfg, 0, 0, 1, 2)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 4 and all("down_proj.lora_" in n for n in trainable), trainable
    assert parameter_counts(model)[0] == 2 * 2 * (64 + 32)
    assert len(model.get_base_model()._require_grads_hooks) == 1
    embeddings = model.get_input_embeddings()(torch.tensor([[5, 6]]))
    assert embeddings.requires_grad
    with pytest.raises(ConfigError, match=r"^train.lora: LoRA does not fit model .*target_modules") as err:
        build_model(cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"target_modules": ["nope"]})}),
                    0, 0, 1, 2)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"^train.lora: LoRA adapts a pretrained model"):
        build_model(cfg.model_copy(update={"model": None}), 64, 0, 1, 2)
