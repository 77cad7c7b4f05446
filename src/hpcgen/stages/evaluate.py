"""evaluate: per-sample test loss of every training snapshot (an array stage over snapshots).

Array task i evaluates the snapshots whose position in ``snapshots.json`` is i, i + tasks,
i + 2·tasks, ... (so the array size need not equal the number of snapshots, which is only known
once training ran). Each snapshot's result is committed on its own as it finishes
(``work-IIIII/step-SSSSSS.h5``, renamed into place), and only then, with ``delete_after``, are its
weights deleted: a task stopped by its time limit or requeued goes on with the next snapshot.
Per snapshot and test record: the mean cross-entropy over the answer tokens, with the training
stage's template, tokenizer and masking; batches are grouped by length.

Reads the records (hpcgen.contracts.records) and the snapshots (hpcgen.contracts.snapshots);
writes ``losses-IIIII.h5``, whose layout hpcgen.contracts.losses documents (with its writer, the
reader the report uses, and the work files of committed snapshots).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
from pydantic import Field

from hpcgen.config.schema import ModelRef, Resources, StageConfig
from hpcgen.contracts import losses as contract
from hpcgen.contracts import records as records_contract
from hpcgen.contracts import snapshots as snapshots_contract
from hpcgen.pipeline.stage import SectionView, Stage, Task

if TYPE_CHECKING:  # transformers loads only inside the functions that use it
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from hpcgen.training.data import Encoded


class EvalConfig(StageConfig):
    tasks: int = Field(1, ge=1, description="array tasks; snapshots are spread over them")
    batch_size: int = Field(32, ge=1)
    delete_after: bool = Field(False, description="delete a snapshot's weights once evaluated")
    generate: bool = Field(False, description="greedy answers, scored by Exact-Match and ROUGE-1/L")
    rouge: bool = Field(True, description="score generated answers by ROUGE-1/L too (costs more than generating "
                        "for short answers)")
    forced_exact_match: bool = Field(False, description="greedy decoding's Exact-Match from the loss forward, "
                                     "without generating (every answer token the argmax: see record_losses); "
                                     "stored as exact_match, or as exact_match_forced beside a generated one")
    max_new_tokens: int = Field(64, ge=1)
    reward_model: ModelRef | None = Field(None, description="a sequence-classification model scoring the answers "
                                     "(e.g. UltraRM-13B on a cluster); needs generate")
    reward_template: str = "Human: {prompt}\n\nAssistant: {answer}"


def delete_weights(snapshot: Path) -> None:
    for weights in list(snapshot.glob("*.safetensors")) + list(snapshot.glob("*.bin")):
        weights.unlink(missing_ok=True)


class RewardModel:
    """A sequence-classification model scoring prompt + answer (its first logit), loaded once per
    task (bf16 on a GPU). A checkpoint whose head does not load into the class transformers picks
    (UltraRM-13B's ``regression_head`` in its own class, say) would score with a randomly
    initialised head: refused, naming the missing weights."""

    def __init__(self, path: str, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from hpcgen.errors import ConfigError

        self.device = device
        self.tok = AutoTokenizer.from_pretrained(path)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model, info = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype,
                                                                         output_loading_info=True)
        missing = sorted(info.get("missing_keys") or [])
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise ConfigError(f"reward model {path!r} has no weights for {shown}: transformers would score with "
                              "a randomly initialised head", key="eval.reward_model",
                              fix="use a checkpoint saved as a sequence-classification model (convert a custom "
                                  "head such as UltraRM's regression_head to the class's score layer)")
        self.model = model.to(device).eval()
        self.model.config.pad_token_id = self.tok.pad_token_id

    def scores(self, prompts: list[str], answers: list[str], template: str, batch_size: int) -> np.ndarray:
        import torch

        texts = [template.format(prompt=p, answer=a) for p, a in zip(prompts, answers)]
        out = []
        with torch.no_grad():
            for lo in range(0, len(texts), batch_size):
                batch = self.tok(texts[lo:lo + batch_size], return_tensors="pt", padding=True,
                                 truncation=True).to(self.device)
                out += self.model(**batch).logits[:, 0].float().cpu().tolist()
        return np.asarray(out, dtype=np.float32)


def generate_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], template: str,
                     max_length: int, max_new_tokens: int, batch_size: int, device: str = "cpu",
                     budgets: list[int] | None = None) -> list[str]:
    """Greedy answers, batched, with the model's KV cache (``generate``): the template's text
    before {answer} is the prompt; generation stops at the end-of-sequence token, and the
    template's text after {answer} is cut off.

    Prompts are batched by length (less left padding) and answered in their own order.
    ``budgets``: new tokens each prompt needs at most (for Exact-Match alone, its reference's
    answer and tail tokens: a longer greedy answer is wrong whether it is cut or not); a batch
    generates the largest budget among its rows, at most ``max_new_tokens``."""
    import torch
    from transformers import GenerationMixin

    from hpcgen.training.data import split_template

    assert isinstance(model, GenerationMixin)  # a causal LM: every *ForCausalLM generates
    head, tail = split_template(template)
    stop = tail.format(prompt="").strip() if "{prompt}" not in tail else ""
    ids = tokenizer([head.format(prompt=p) for p in prompts], add_special_tokens=False)["input_ids"]
    keep = max(1, max_length - max_new_tokens)
    ids = [x[len(x) - keep:] if len(x) > keep else x for x in ids]  # prompts lose tokens from the left
    need = [max_new_tokens if budgets is None else max(1, min(max_new_tokens, b)) for b in (budgets or ids)]
    order = sorted(range(len(ids)), key=lambda i: (need[i], len(ids[i])))
    pad = tokenizer.pad_token_id
    answers: list[str] = [""] * len(ids)
    model.eval()
    for lo in range(0, len(order), batch_size):
        rows = order[lo:lo + batch_size]
        chunk = [ids[i] for i in rows]
        width = max(len(x) for x in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, x in enumerate(chunk):  # left padding, so every row continues from its last token
            input_ids[b, width - len(x):] = torch.tensor(x)
            mask[b, width - len(x):] = 1
        with torch.no_grad():
            out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max(need[i] for i in rows), pad_token_id=pad,
                                 eos_token_id=tokenizer.eos_token_id)
        assert isinstance(out, torch.Tensor)  # the token ids: no return_dict_in_generate
        for i, row in zip(rows, out[:, width:]):
            text = tokenizer.decode(row, skip_special_tokens=True)
            assert isinstance(text, str)  # one sequence decodes to one string
            answers[i] = text.split(stop)[0].strip() if stop else text.strip()
    return answers


@overload
def per_sample_loss(model: PreTrainedModel, enc: Encoded, pad_id: int, batch_size: int, device: str = ...,
                    exact: Literal[False] = ...) -> np.ndarray: ...


@overload
def per_sample_loss(model: PreTrainedModel, enc: Encoded, pad_id: int, batch_size: int, device: str = ..., *,
                    exact: Literal[True]) -> tuple[np.ndarray, np.ndarray]: ...


@overload
def per_sample_loss(model: PreTrainedModel, enc: Encoded, pad_id: int, batch_size: int, device: str = ...,
                    exact: bool = ...) -> np.ndarray | tuple[np.ndarray, np.ndarray]: ...


def per_sample_loss(model: PreTrainedModel, enc: Encoded, pad_id: int, batch_size: int, device: str = "cpu",
                    exact: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Mean answer-token cross-entropy of every encoded record (NaN for records left out); with
    ``exact``, also greedy decoding's Exact-Match of each (1/0, NaN where left out), from the same
    forward (see ``record_losses``)."""
    import torch

    from hpcgen.metrics.loss import IGNORE, record_losses
    from hpcgen.training.data import collate

    out = np.full(len(enc.ids), np.nan, dtype=np.float64)
    hits = np.full(len(enc.ids), np.nan, dtype=np.float64)
    lengths = {i: len(x) for i, x in enumerate(enc.ids) if x is not None}
    rows = sorted(lengths, key=lengths.__getitem__)
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(rows), batch_size):
            chunk = rows[lo:lo + batch_size]
            b = {k: v.to(device) for k, v in collate(chunk, enc, pad_id).items()}
            got = record_losses(model, b, exact=exact, per="record")
            means, ok = got if exact else (got, None)
            out[chunk] = means.cpu().numpy()  # NaN for a record without answer tokens
            if exact:
                assert ok is not None  # record_losses' Exact-Match, asked for with exact
                answered = (b["labels"][:, 1:] != IGNORE).any(1).cpu().numpy()
                hits[chunk] = np.where(answered, ok.cpu().numpy(), np.nan)
    return (out, hits) if exact else out


class Evaluate(Stage):
    name = "evaluate"
    section = "eval"
    Config = EvalConfig
    reads = ("train",)
    upstream = ("prepare", "train")
    defaults = Resources(nodes=1, tasks_per_node=1, cpus=2, gpus=0, mem=8192, time=120)

    def plan(self, cfg: SectionView, upstream: dict[str, list[Any]] | None = None) -> int:
        return cfg.eval.tasks

    def check(self, cfg: SectionView) -> None:
        from hpcgen.errors import ConfigError
        from hpcgen.similarity.model import check_model_dir

        e = cfg.eval
        if e.reward_model and not e.generate:
            raise ConfigError("a reward model scores generated answers", key="eval.reward_model",
                              fix="set eval.generate: true")
        if e.reward_model:
            check_model_dir(e.reward_model, "eval.reward_model", "reward model")

    def run(self, task: Task) -> None:
        import torch
        from transformers import AutoTokenizer

        from hpcgen.training.data import encode
        from hpcgen.training.snapshot import load_snapshot

        cfg: EvalConfig = task.config.eval
        train_cfg = task.config.train
        prepared = task.input("prepare")
        table = records_contract.read_records(prepared)
        test = table.test_records()
        template = records_contract.read_summary(prepared).template
        trained = task.input("train")
        snapshots = snapshots_contract.read_snapshots(trained)
        mine = snapshots[task.index::task.size]
        device = "cuda" if torch.cuda.is_available() else "cpu"
        names = ("exact_match",) + (("rouge1", "rougeL") if cfg.rouge else ()) + (("reward",) if cfg.reward_model
                                                                                 else ())
        metrics = ("loss",) + (names if cfg.generate else ())
        forced = "exact_match_forced" if cfg.generate else "exact_match"
        if cfg.forced_exact_match:
            metrics += (forced,)
        train_tasks = set(table.train("task"))
        rewarder = None  # loaded once, at the first snapshot that needs it
        prompts, answers_ref = [r["prompt"] for r in test], [r["answer"] for r in test]
        results = {m: np.full((len(mine), len(test)), np.nan, dtype=np.float32) for m in metrics}
        for k, snap in enumerate(mine):
            done = contract.step_file(task.work_dir, snap["step"])  # this snapshot's result, committed
            path = snapshots_contract.snapshot_dir(trained, snap)
            if done.is_file():  # by an earlier attempt of this task (a time limit, a requeue)
                for m, values in contract.read_step(done, metrics).items():
                    results[m][k] = values
                task.log.info("snapshot step %d: evaluated by an earlier attempt", snap["step"])
                if cfg.delete_after:  # that attempt may have stopped between its commit and the delete
                    delete_weights(path)
                continue
            t0 = time.perf_counter()
            tokenizer = AutoTokenizer.from_pretrained(path)
            dtype = torch.bfloat16 if device == "cuda" else torch.float32
            model = load_snapshot(path, dtype, device)  # a LoRA run's adapter: its base + the adapter, merged
            enc = encode(tokenizer, prompts, answers_ref, template, train_cfg.max_length)
            if cfg.forced_exact_match:
                results["loss"][k], results[forced][k] = per_sample_loss(model, enc, tokenizer.pad_token_id,
                                                                         cfg.batch_size, device, exact=True)
            else:
                results["loss"][k] = per_sample_loss(model, enc, tokenizer.pad_token_id, cfg.batch_size, device)
            if cfg.generate:
                from hpcgen.metrics.text import exact_match, rouge

                em_only = not cfg.rouge and not cfg.reward_model  # then no answer needs more than its reference
                budgets = [len(x) - n if x is not None else cfg.max_new_tokens
                           for x, n in zip(enc.ids, enc.n_prompt)] if em_only else None
                answers = generate_answers(model, tokenizer, prompts, template, train_cfg.max_length,
                                           cfg.max_new_tokens, cfg.batch_size, device, budgets)
                for j, (pred, rec) in enumerate(zip(answers, test)):
                    results["exact_match"][k, j] = exact_match(pred, rec["answer"])
                    if cfg.rouge:
                        r = rouge(pred, rec["answer"])
                        results["rouge1"][k, j], results["rougeL"][k, j] = r["rouge1"], r["rougeL"]
                if cfg.reward_model:
                    rewarder = rewarder or RewardModel(cfg.reward_model, device)
                    results["reward"][k] = rewarder.scores(prompts, answers, cfg.reward_template, cfg.batch_size)
            del model
            contract.write_step(done, {m: results[m][k] for m in metrics})  # committed: a later attempt skips it
            em = results["exact_match"][k] if "exact_match" in results else None
            task.log.info("snapshot step %d: mean test loss %.4f%s (%.1f s)", snap["step"],
                          float(np.nanmean(results["loss"][k])),
                          "" if em is None else f", exact match {np.nanmean(em):.3f}", time.perf_counter() - t0)
            if cfg.delete_after:  # only now that its result is committed
                delete_weights(path)
        contract.write_losses(
            task.output(contract.losses_name(task.index)), [s["step"] for s in mine], [s["items_seen"] for s in mine],
            results, ids=[r["id"] for r in test], tasks=[r["task"] for r in test],
            generalist=[r["generalist"] for r in test], seen=[r["task"] in train_tasks for r in test],
            source=[r["source"] or "" for r in test], block=task.index, blocks=task.size)
