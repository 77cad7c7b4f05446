"""Train a tiny causal LM with a Hugging Face ``Trainer`` (or TRL's ``SFTTrainer``) and record, per
process, which dataset rows every batch held and at which optimizer step each was trained.

In-process: ``run(spec)``; with several processes:
``python -m torch.distributed.run --nproc_per_node 2 tests/trainer_order_worker.py SPEC.json``.

SPEC: ``{"out": dir, "rows": n, "cases": [case, ...]}``; a case: ``{"name", "trainer": "trainer" |
"sft", "sampling": "sequential" | "in_order" | "random", "order": [rows], "per_device": P,
"accumulation": A, "max_steps": S}``, or instead of ``max_steps`` ``"epochs": E``; ``"drop_last": true``
sets ``dataloader_drop_last``.

- ``sequential``: the dataset reordered by the order (``select``), ``train_sampling_strategy="sequential"``;
- ``in_order``: the dataset in row order, the trainer class ``hpcgen.sampler.in_order(cls, order)``;
- ``random``: the dataset in row order and the trainer's default (random) sampler.

Output per case and rank r, under ``out/NAME/``: ``collated.rank{r}.jsonl`` (the rows of each batch
the data collator built, in call order) and ``trained.rank{r}.jsonl`` (``{"step": k, "rows": [...]}``
per micro batch the loss was computed on, k = optimizer steps completed before it).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

VOCAB = 64
SEQ = 6


def tiny_model() -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         pad_token_id=0, bos_token_id=1, eos_token_id=1)
    return LlamaForCausalLM(config)


def tiny_tokenizer() -> Any:
    """A word-level tokenizer over the model's ids, built in memory (SFTTrainer wants one)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, **{f"t{i}": i for i in range(2, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def dataset(n: int) -> Any:
    """``n`` rows: ``row`` (the row's id), ``input_ids`` and ``labels`` (the same ids)."""
    import numpy as np
    from datasets import Dataset

    rng = np.random.default_rng(1234)
    ids = rng.integers(2, VOCAB, size=(n, SEQ)).tolist()
    return Dataset.from_dict({"row": list(range(n)), "input_ids": ids, "labels": ids})


class Collator:
    """Pads nothing (all rows are SEQ long); keeps ``row`` in the batch and logs it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        rows = [int(f["row"]) for f in features]
        with self.path.open("a") as fh:
            fh.write(json.dumps(rows) + "\n")
        ids = torch.tensor([list(f["input_ids"]) for f in features], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "labels": torch.tensor([list(f["labels"]) for f in features], dtype=torch.long),
                "row": torch.tensor(rows, dtype=torch.long)}


def recording(base: type) -> type:
    """``base`` whose ``compute_loss`` logs the batch's rows with the optimizer step, then drops them."""

    class Recording(base):
        trained_path: Path

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            rows = inputs.pop("row")
            with self.trained_path.open("a") as fh:
                fh.write(json.dumps({"step": int(self.state.global_step), "rows": rows.tolist()}) + "\n")
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    Recording.__name__ = f"Recording{base.__name__}"
    return Recording


def run_case(case: dict[str, Any], out: Path, n_rows: int) -> None:
    from hpcgen.sampler import in_order

    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    where = out / case["name"]
    where.mkdir(parents=True, exist_ok=True)
    collated = where / f"collated.rank{rank}.jsonl"
    trained = where / f"trained.rank{rank}.jsonl"
    for p in (collated, trained):
        p.unlink(missing_ok=True)

    ds = dataset(n_rows)
    sampling = case["sampling"]
    if sampling == "sequential":
        ds = ds.select(case["order"])
    common: dict[str, Any] = dict(
        output_dir=str(where / "trainer"), per_device_train_batch_size=case["per_device"],
        gradient_accumulation_steps=case["accumulation"], max_steps=case.get("max_steps", -1),
        num_train_epochs=case.get("epochs", 1), dataloader_drop_last=case.get("drop_last", False), learning_rate=1e-3,
        report_to=[], use_cpu=True, save_strategy="no", dataloader_num_workers=0, remove_unused_columns=False,
        disable_tqdm=True, logging_strategy="no", seed=0,
        train_sampling_strategy="sequential" if sampling == "sequential" else "random",
    )
    if world > 1:
        common.update(ddp_backend="gloo", ddp_find_unused_parameters=False)

    model = tiny_model()
    kwargs: dict[str, Any] = {}
    if case["trainer"] == "sft":
        from trl import SFTConfig, SFTTrainer

        base: type = SFTTrainer
        args: Any = SFTConfig(**common, max_length=None, dataset_num_proc=None)
        kwargs["processing_class"] = tiny_tokenizer()
    else:
        from transformers import Trainer, TrainingArguments

        base = Trainer
        args = TrainingArguments(**common)
    cls = recording(base)
    if sampling == "in_order":
        cls = in_order(cls, case["order"])
    trainer = cls(model=model, args=args, train_dataset=ds, data_collator=Collator(collated), **kwargs)
    trainer.trained_path = trained
    trainer.train()


def run(spec: dict[str, Any]) -> None:
    out = Path(spec["out"])
    for case in spec["cases"]:
        run_case(case, out, spec["rows"])


def main(argv: list[str]) -> int:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    spec = json.loads(Path(argv[0]).read_text())
    try:
        run(spec)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # every record is written and closed by now: leave without the interpreter's teardown, where
    # a gloo worker thread still being destroyed can abort the process ("terminate called without
    # an active exception", seen once in CI after all cases had finished)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
