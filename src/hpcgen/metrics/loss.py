"""The evaluation loss: per record, the mean cross-entropy over its answer tokens (the training
masking: labels are -100 on prompt and padding). ``masked_cross_entropy`` is the one definition;
the evaluation stage (``per_sample_loss``) and the training job's in-loop test loss
(``hpcgen.training.loop.test_loss``) both reach it through ``record_losses``."""

from __future__ import annotations

from typing import Literal

IGNORE = -100  # the label of a position the loss leaves out (hpcgen.training.data.IGNORE)


def masked_cross_entropy(logits, labels, per: Literal["record", "batch", "sum"] = "record"):
    """Cross-entropy of ``logits`` against ``labels`` over the positions whose label is not -100.

    ``labels``: (B, T), aligned with the logits (position t's logits score ``labels[:, t]``: the
    caller has shifted them). ``logits``: (B, T, V) at every position, or (N, V) at the N labelled
    positions alone, in row-major order (``torch.nonzero(labels != -100)``'s: what a forward that
    runs the output layer on the answer positions only computes).

    ``per="record"``: (B,) float64, each record's mean over its labelled positions (NaN for a
    record with none); ``"batch"``: a float64 scalar, the mean over every labelled position of the
    batch; ``"sum"``: (sums, counts), both (B,) float64, for callers that reduce further (over
    batches or ranks). Computed in float32 from the logits, summed in float64."""
    import torch
    import torch.nn.functional as F

    mask = labels != IGNORE
    rows, cols = torch.nonzero(mask, as_tuple=True)
    if logits.dim() == labels.dim() + 1:
        logits = logits[rows, cols]
    elif logits.dim() != 2 or logits.shape[0] != rows.numel():
        raise ValueError(f"logits of shape {tuple(logits.shape)} fit neither every position of labels "
                         f"{tuple(labels.shape)} nor their {rows.numel()} labelled positions")
    ce = F.cross_entropy(logits.float(), labels[rows, cols], reduction="none")
    per_position = torch.zeros(labels.shape, dtype=torch.float64, device=labels.device)
    per_position[rows, cols] = ce.double()
    sums, counts = per_position.sum(1), mask.sum(1).double()
    if per == "sum":
        return sums, counts
    if per == "batch":
        return sums.sum() / counts.sum()
    if per == "record":
        return torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))
    raise ValueError(f"per must be 'record', 'batch' or 'sum', not {per!r}")


def record_losses(model, batch: dict, answer_only: bool = True, exact: bool = False,
                  per: Literal["record", "sum"] = "sum"):
    """The answer-token losses of each row of ``batch`` (``masked_cross_entropy``): with
    ``per="sum"`` (sum of answer-token cross-entropies, number of answer tokens), with
    ``per="record"`` each row's mean (NaN for a row without answer tokens), float64 tensors on the
    batch's device; with ``exact``, one more value: per row, whether every answer token is the
    argmax of the model's prediction at its position (bool).

    That last value is greedy decoding's Exact-Match, computed without generating: greedy
    decoding emits the argmax token at each position, given the tokens before it. If the argmax at
    every answer position (teacher-forced on the reference) is the reference token, including the
    template's tail (the end-of-sequence token), greedy decoding follows the reference token by
    token and stops where it ends; if one position's argmax differs, greedy decoding emits that
    other token there, since it saw the same prefix. The verdicts are equal up to float rounding
    between the two forwards (a near tie decided differently) and, for tokenizers where one string
    has several tokenizations, a greedy answer spelt with other tokens (never with ``char``).

    ``answer_only``: run the decoder, then the output layer on the answer positions only, instead
    of the vocabulary logits at every position (on a small model most of the work and memory of an
    evaluation forward; answers are a few tokens of records of hundreds). The same numbers up to
    float rounding. ``False`` takes the model's own full forward (what ZeRO-3-partitioned models in
    the training loop use, whose hooks expect the whole module to run)."""
    import torch

    labels = batch["labels"][:, 1:]  # position t predicts token t + 1
    mask = labels != IGNORE
    rows, cols = torch.nonzero(mask, as_tuple=True)
    if answer_only:
        hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
        logits = model.get_output_embeddings()(hidden[rows, cols])
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][rows, cols]
    losses = masked_cross_entropy(logits, labels, per=per)
    if not exact:
        return losses
    wrong = (logits.argmax(-1) != labels[rows, cols]).double()
    misses = torch.zeros(labels.shape[0], dtype=torch.float64, device=labels.device).index_add_(0, rows, wrong)
    hit = (misses == 0) & mask.any(1)
    return (*losses, hit) if per == "sum" else (losses, hit)
