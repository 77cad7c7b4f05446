"""One masked cross-entropy: against a direct torch computation, and as what both the evaluation
stage and the training job's in-loop test loss compute."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import hpcgen.metrics.loss as loss_module
from hpcgen.metrics.loss import masked_cross_entropy


def random_case(seed: int = 0, b: int = 5, t: int = 9, v: int = 13):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g) * 3
    labels = torch.randint(0, v, (b, t), generator=g)
    keep = torch.rand(b, t, generator=g) < 0.6
    keep[1] = False  # a record without labelled positions
    keep[2] = True  # one with every position labelled
    return logits, labels.masked_fill(~keep, -100)


def direct(logits, labels):
    """Per record: -log softmax at the label, averaged over the labelled positions, in float64."""
    logp = torch.log_softmax(logits.double(), -1)
    out = []
    for r in range(labels.shape[0]):
        terms = [-float(logp[r, c, labels[r, c]]) for c in range(labels.shape[1]) if labels[r, c] != -100]
        out.append((sum(terms), len(terms)))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_cross_entropy_equals_a_direct_computation(seed):
    logits, labels = random_case(seed)
    want = direct(logits, labels)
    means = masked_cross_entropy(logits, labels)
    assert means.dtype == torch.float64 and means.shape == (labels.shape[0],)
    for got, (s, n) in zip(means.tolist(), want):
        assert math.isnan(got) if n == 0 else math.isclose(got, s / n, rel_tol=1e-5)
    sums, counts = masked_cross_entropy(logits, labels, per="sum")
    assert counts.tolist() == [n for _, n in want]
    assert np.allclose(sums.numpy(), [s for s, _ in want], rtol=1e-5)
    batch = masked_cross_entropy(logits, labels, per="batch")
    assert math.isclose(float(batch), sum(s for s, _ in want) / sum(n for _, n in want), rel_tol=1e-5)
    # torch's own mean over the labelled positions of the batch (what a model's loss computes)
    ref = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100)
    assert math.isclose(float(batch), float(ref), rel_tol=1e-5)
    # the logits of the labelled positions alone (an answer-only forward) give the same numbers
    packed = logits[labels != -100]
    assert torch.allclose(masked_cross_entropy(packed, labels), means, equal_nan=True, rtol=1e-6)
    with pytest.raises(ValueError):
        masked_cross_entropy(packed[1:], labels)


def tiny_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    from hpcgen.training.data import encode
    from hpcgen.training.tokenizer import char_tokenizer

    tok = char_tokenizer(["abcxyz<>="])
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=32)).eval()
    prompts = ["abc", "a", "cab", "bb", "x", "abcab", "c"]
    answers = ["xy", "zzz", "x", "yz", "zyx", "y", "xx"]
    return model, tok, encode(tok, prompts, answers, "<{prompt}={answer}>", 32)


def test_the_evaluation_and_the_in_loop_test_loss_both_use_it(monkeypatch):
    """per_sample_loss (the evaluate stage) and test_loss (the training loop) go through
    masked_cross_entropy, and agree on the same model: the mean of the first is the second."""
    from hpcgen.stages.evaluate import per_sample_loss
    from hpcgen.training.loop import test_loss

    model, tok, enc = tiny_model()
    calls = []
    real = loss_module.masked_cross_entropy

    def spy(*args, **kwargs):
        calls.append(kwargs.get("per"))
        return real(*args, **kwargs)

    monkeypatch.setattr(loss_module, "masked_cross_entropy", spy)
    per_record = per_sample_loss(model, enc, tok.pad_token_id, batch_size=3)
    assert calls and set(calls) == {"record"}
    calls.clear()
    engine = SimpleNamespace(module=model, device=torch.device("cpu"))
    in_loop = test_loss(engine, enc, tok.pad_token_id, batch=2)
    assert calls and set(calls) == {"record"}
    assert math.isclose(float(np.nanmean(per_record)), in_loop, rel_tol=1e-6)
    # two ranks' halves (reduced by hand here) give the one-process mean
    halves = [test_loss(engine, enc, tok.pad_token_id, batch=2, rank=r, world=2) for r in (0, 1)]
    n = [len(range(r, len(enc.ids), 2)) for r in (0, 1)]
    assert math.isclose((halves[0] * n[0] + halves[1] * n[1]) / sum(n), in_loop, rel_tol=1e-6)
