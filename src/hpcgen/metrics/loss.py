"""The evaluation loss: per record, the mean cross-entropy over its answer tokens (the training
masking: labels are -100 on prompt and padding)."""

from __future__ import annotations


def record_losses(model, batch: dict, answer_only: bool = True, exact: bool = False):
    """(sum of answer-token cross-entropies, number of answer tokens) per row of ``batch``, both
    float64 tensors on the batch's device; with ``exact``, a third: per row, whether every answer
    token is the argmax of the model's prediction at its position (bool).

    That third value is greedy decoding's Exact-Match, computed without generating: greedy
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
    import torch.nn.functional as F

    labels = batch["labels"][:, 1:]
    mask = labels != -100
    if answer_only:
        hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
        rows, cols = torch.nonzero(mask, as_tuple=True)
        logits = model.get_output_embeddings()(hidden[rows, cols]).float()
        target = labels[rows, cols]
        ce = F.cross_entropy(logits, target, reduction="none").double()
        sums = torch.zeros(labels.shape[0], dtype=torch.float64, device=labels.device).index_add_(0, rows, ce)
        if exact:
            wrong = (logits.argmax(-1) != target).double()
            misses = torch.zeros(labels.shape[0], dtype=torch.float64, device=labels.device).index_add_(0, rows, wrong)
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        ce = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        sums = ce.double().sum(1)
        if exact:
            misses = ((logits.argmax(-1) != labels) & mask).double().sum(1)
    n = mask.sum(1).double()
    if exact:
        return sums, n, (misses == 0) & (n > 0)
    return sums, n
