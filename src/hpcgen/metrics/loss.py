"""The evaluation loss: per record, the mean cross-entropy over its answer tokens (the training
masking: labels are -100 on prompt and padding)."""

from __future__ import annotations


def record_losses(model, batch: dict, answer_only: bool = True):
    """(sum of answer-token cross-entropies, number of answer tokens) per row of ``batch``, both
    float64 tensors on the batch's device.

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
        ce = F.cross_entropy(logits, labels[rows, cols], reduction="none").double()
        sums = torch.zeros(labels.shape[0], dtype=torch.float64, device=labels.device).index_add_(0, rows, ce)
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        ce = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        sums = ce.double().sum(1)
    return sums, mask.sum(1).double()
