"""train: a causal LM trained with DeepSpeed on the arranged order, with dense snapshots.

One array task per run. On a cluster it is ONE job of ``resources.nodes`` x
``resources.tasks_per_node`` processes (one per GPU); ranks, world size and master address come
from Slurm through submitit. Reads the records (hpcgen.contracts.records) and the order
(hpcgen.contracts.arrangement). Outputs: ``metrics.jsonl``, ``snapshots.json`` (the evaluation
snapshots in the work directory, with their sizes) and ``summary.json``, documented and written
by hpcgen.contracts.snapshots; see hpcgen.training.loop for the files it keeps while it runs.

``train.lora`` trains LoRA adapters (PEFT) on the pretrained ``train.model`` instead of all its
weights; that run's snapshots are the adapters alone, and hpcgen.training.snapshot.load_snapshot
loads either kind as a plain model.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, model_validator

from hpcgen.config.schema import Model, ModelRef, Resources, SafeStr, StageConfig
from hpcgen.contracts import arrangement as arrangement_contract
from hpcgen.contracts import records as records_contract
from hpcgen.contracts import snapshots as contract
from hpcgen.errors import ConfigError
from hpcgen.pipeline.stage import Estimate, SectionView, Stage, Task

PRESETS: dict[str, dict[str, Any]] = {
    # the data-arrangement paper: LLaMA-2-7B full fine-tuning
    "llama2-7b": {"model": "meta-llama/Llama-2-7b-hf", "max_length": 1024, "epochs": 1, "global_batch": 16,
                  # 2 nodes x 8 GPUs x micro batch 1 = the paper's global batch of 16, no accumulation
                  "micro_batch": 1, "lr": 1e-6, "schedule": "cosine", "save_every": 10, "deepspeed": "zero3",
                  "precision": "bf16"},
    # the instruction-diversity paper: GPT-2, 6 layers, 4 heads, hidden 256, from scratch
    "gpt2-rewriting": {"architecture": "gpt2", "layers": 6, "heads": 4, "hidden": 256, "tokenizer": "char",
                       "max_length": 128},
    # the bundled demo: a ~0.9 M-parameter LLaMA from scratch that shows the effect on a CPU
    "demo": {"architecture": "llama", "layers": 2, "hidden": 128, "heads": 4, "tokenizer": "bpe",
             "vocab_size": 4096, "max_length": 512, "global_batch": 16, "micro_batch": 4, "length_grouping": True,
             "lr": 2e-3,
             "warmup_steps": 5, "schedule": "cosine", "save_every": 10,
             "deepspeed": "zero0"},  # one process: ZeRO's partitioning would only add copies
}
KNOWN_PARAMETERS = {"meta-llama/Llama-2-7b-hf": 6_738_415_616}
#: the shapes of hub models whose config.json plan cannot read offline (for the adapter size)
KNOWN_CONFIGS = {"meta-llama/Llama-2-7b-hf": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
                                              "num_hidden_layers": 32, "num_attention_heads": 32,
                                              "num_key_value_heads": 32, "vocab_size": 32000}}


class LoraSettings(Model):
    """train.lora: LoRA adapters (PEFT) on the pretrained train.model instead of full fine-tuning.
    The base weights stay frozen; the update of each targeted linear layer W is alpha / r x B A
    (A: r x in, B: out x r, B starting at zero), and snapshots hold these adapters only."""

    r: int = Field(8, ge=1, description="the adapters' rank")
    alpha: int = Field(16, ge=1, description="LoRA alpha: updates are scaled by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: list[SafeStr] | None = Field(
        None, min_length=1, description="names of the linear layers to adapt (q_proj, v_proj, ...); None: PEFT's "
        "default for the architecture (q_proj and v_proj for Llama)")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="biases that train too")


class TrainConfig(StageConfig):
    preset: Literal["none", "llama2-7b", "gpt2-rewriting", "demo"] = Field(
        "none", description="the seed papers' settings; keys set here win")
    model: ModelRef | None = Field(
        None, description="a pretrained causal LM (hub name, or a directory relative to the experiment file); "
        "None: from scratch")
    architecture: Literal["llama", "gpt2"] = "llama"
    layers: int = Field(2, ge=1)
    hidden: int = Field(128, ge=8)
    heads: int = Field(4, ge=1)
    intermediate: int | None = Field(None, ge=1, description="llama MLP width (default 4 x hidden)")
    tokenizer: Literal["bpe", "char"] = "bpe"
    vocab_size: int = Field(4096, ge=64)
    max_length: int = Field(512, ge=1)
    epochs: int = Field(1, ge=1)
    steps: int | None = Field(None, ge=1, description="train exactly this many steps, going through the arranged "
                              "order as many times as that takes (overrides epochs): the same compute for "
                              "training sets of different sizes")
    global_batch: int = Field(16, ge=1)
    micro_batch: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    warmup_steps: int = Field(5, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = Field(1.0, ge=0)
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    # a preset name, or a JSON file relative to the experiment file (named like a model directory)
    deepspeed: ModelRef = Field("zero2", description="a preset in jobs/deepspeed/ or a path to a DeepSpeed config")
    deepspeed_overrides: dict[str, Any] = Field(default_factory=dict)
    save_every: int = Field(10, ge=1, description="steps between evaluation snapshots")
    resume_every: int = Field(50, ge=1, description="steps between resumable checkpoints")
    keep_resumable: int = Field(2, ge=1)
    eval_in_loop: bool = Field(False, description="test loss inside the training job at each snapshot")
    length_grouping: bool = Field(False, description="sort each step's items by length into its micro batches, "
                                  "losses weighted by answer tokens: the same gradient, less padding")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon (the authors used 1e-5)")
    partitioned_init: bool = Field(False, description="ZeRO-3: build a from-scratch model inside zero.Init "
                                   "(each rank holds only its shard from the start; other initial weights than "
                                   "the same seed gives under other stages)")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass "
                                         "(less memory, about a third more compute)")
    lora: LoraSettings | None = Field(None, description="LoRA fine-tuning of train.model (None: full fine-tuning)")
    dist_timeout_min: float = Field(60.0, gt=0, description="collective timeout: ranks wait this long at a "
                                    "barrier (a 7B load, rank 0's snapshot write) before failing")
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        # runs before validation, on whatever the file holds: only a known name selects a preset;
        # anything else is left for the field's own check to refuse with its line
        name = data.get("preset") if isinstance(data, dict) else None
        if isinstance(name, str) and name in PRESETS:
            return {**PRESETS[name], **data}
        return data

    @model_validator(mode="after")
    def _batches(self) -> TrainConfig:
        if self.global_batch % self.micro_batch:
            raise ValueError(f"micro_batch {self.micro_batch} does not divide global_batch {self.global_batch}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not a multiple of heads {self.heads}")
        return self


def model_shape(name: str) -> dict[str, Any] | None:
    """The config.json of a local model directory, or the known shape of a hub model; None if
    neither (a hub name plan cannot look up offline)."""
    from pathlib import Path

    path = Path(name).expanduser() / "config.json"
    if path.is_file():
        try:
            shape: dict[str, Any] = json.loads(path.read_text())  # a config.json is a JSON object
            return shape
        except ValueError:
            return None
    return KNOWN_CONFIGS.get(name)


class Train(Stage):
    name = "train"
    section = "train"
    Config = TrainConfig
    upstream = ("prepare", "arrange")
    defaults = Resources(nodes=1, tasks_per_node=1, cpus=2, gpus=0, mem=16384, time=240)

    def check(self, cfg: SectionView) -> None:
        from hpcgen.similarity.model import check_model_dir
        from hpcgen.training.dsconfig import load_deepspeed

        if cfg.train.model:
            check_model_dir(cfg.train.model, "train.model")
        elif cfg.train.lora is not None:
            raise ConfigError("LoRA adapts a pretrained model and train.model is not set", key="train.lora",
                              fix="set train.model to a local model directory")
        load_deepspeed(cfg.train.deepspeed, cfg.train.deepspeed_overrides)

    def check_resources(self, cfg: SectionView, resources: Resources) -> None:
        """global batch = micro batch x accumulation x nodes x tasks per node, with a whole
        accumulation: refused here, not in the job after its queue wait."""
        from hpcgen.training.data import batch_sizes

        t: TrainConfig = cfg.train
        ranks = (resources.nodes or 1) * (resources.tasks_per_node or 1)
        try:
            batch_sizes(t.global_batch, t.micro_batch, ranks)
        except ConfigError as err:
            fits = [m for m in range(1, t.global_batch + 1) if t.global_batch % (m * ranks) == 0]
            hint = (f"with {ranks} rank(s) ({resources.nodes or 1} node(s) x {resources.tasks_per_node or 1}), "
                    + (f"set train.micro_batch to one of {', '.join(map(str, fits))}" if fits else
                       f"set train.global_batch to a multiple of {ranks}"))
            raise ConfigError(err.reason, key="train.micro_batch", fix=hint) from None

    def estimate(self, cfg: SectionView, size: int, upstream: dict[str, list[Any]] | None = None) -> Estimate:
        """Snapshot disk: parameters x bytes per weight x snapshots (steps / save_every, with the
        records estimate as an upper bound of the training items; unknown: one snapshot). A LoRA
        run's snapshots are its adapters: r x (in + out) per adapted layer, from the base model's
        config.json (hpcgen.training.model.lora_parameter_count says how it approximates)."""
        t: TrainConfig = cfg.train
        if t.model and t.lora is not None:
            from hpcgen.training.model import lora_parameter_count

            shape = model_shape(t.model)
            if shape is None:
                return Estimate()
            params = lora_parameter_count(shape, t.lora)
        elif t.model:
            known = KNOWN_PARAMETERS.get(t.model)
            if known is None:
                return Estimate()
            params = known
        else:
            from hpcgen.training.model import parameter_count

            params = parameter_count(t, t.vocab_size)
        records: list[int] = [n.estimate.records for nodes in (upstream or {}).values() for n in nodes
                              if n.estimate.records is not None]
        snapshots = 1
        if records:
            steps = t.steps or t.epochs * (max(records) // t.global_batch)
            snapshots = max(1, -(-steps // t.save_every))
        return Estimate(disk_bytes=params * (2 if t.precision == "bf16" else 4) * snapshots)

    def run(self, task: Task) -> None:
        from hpcgen.training.loop import Stopped, train

        cfg: TrainConfig = task.config.train
        prepared = task.input("prepare")
        table = records_contract.read_records(prepared, ["prompt", "answer", "text"])
        records: dict[str, list[Any]] = {name: table.train(name) for name in ("prompt", "answer", "text")}
        records["test"] = list(zip(table.test("prompt"), table.test("answer"))) if cfg.eval_in_loop else []
        order = arrangement_contract.read_order(task.input("arrange"))
        template = records_contract.read_summary(prepared).template
        result = train(task, cfg, records, order, template,
                       stop=task.meta.stop, resources=task.meta.resources)
        if isinstance(result, Stopped):
            from hpcgen.pipeline.runner import StoppedForRequeue

            raise StoppedForRequeue(f"stopped after step {result.step}, its resumable checkpoint saved")
        if task.rank != 0:
            return
        work = task.work_dir
        snapshots = contract.collect_snapshots(sorted((work / "snapshots").glob("step-*")), task.dir)
        if not snapshots:
            raise ConfigError("training wrote no snapshot", key="train.save_every")
        contract.write_metrics(task.output(contract.METRICS), work / contract.METRICS)
        contract.write_snapshots(task.output(contract.SNAPSHOTS), snapshots)
        contract.write_summary(task.output(contract.SUMMARY), result)
        task.log.info("trained %d steps (global batch %d on %d rank(s)); %d snapshots", result["steps"],
                      result["global_batch"], result["world_size"], len(snapshots))
