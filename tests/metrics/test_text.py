"""Exact-Match and ROUGE against known values."""

from __future__ import annotations

import pytest

from hpcgen.metrics.text import exact_match, normalize_answer, rouge


def test_normalization_and_exact_match():
    assert normalize_answer("  The Cat, sat on a MAT! ") == "cat sat on mat"
    assert exact_match("The answer is: Paris.", "answer is paris") == 1.0
    assert exact_match("Paris", "Lyon") == 0.0
    assert exact_match("an apple", "Apple") == 1.0


def test_rouge_known_values():
    # unigrams: prediction {the, cat, sat}, reference {the, cat, sat, down}: P=1, R=3/4, F=6/7
    r = rouge("the cat sat", "the cat sat down")
    assert r["rouge1"] == pytest.approx(6 / 7) and r["rougeL"] == pytest.approx(6 / 7)
    # stemming: "running" and "runs" share the stem "run"
    assert rouge("running fast", "runs fast")["rouge1"] == pytest.approx(1.0)
    # longest common subsequence "a c" of "a b c" and "a c d": P=R=2/3
    assert rouge("a b c", "a c d")["rougeL"] == pytest.approx(2 / 3)
    assert rouge("xyz", "abc") == {"rouge1": 0.0, "rougeL": 0.0}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_answer_only_losses_equal_the_full_forward(arch):
    """The evaluation's output layer on answer positions only gives the full forward's losses."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from hpcgen.metrics.loss import record_losses

    torch.manual_seed(0)
    model = (LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=2))
             if arch == "llama" else GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=32, n_layer=1, n_head=2,
                                                                bos_token_id=0, eos_token_id=0))).eval()
    ids = torch.randint(0, 300, (6, 40))
    att = torch.ones_like(ids)
    att[3:, 30:] = 0  # right padding
    labels = ids.clone()
    labels[:, :25] = -100
    labels[att == 0] = -100
    labels[0] = -100  # a record without answer tokens
    batch = {"input_ids": ids, "attention_mask": att, "labels": labels}
    with torch.no_grad():
        full_sum, full_n = record_losses(model, batch, answer_only=False)
        part_sum, part_n = record_losses(model, batch)
    assert torch.equal(full_n, part_n) and full_n.tolist()[:4] == [0, 15, 15, 5]
    assert torch.allclose(full_sum, part_sum, rtol=1e-5, atol=1e-5) and full_sum[0] == 0
