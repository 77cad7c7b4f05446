"""Answer-only labels, left truncation of the prompt, dynamic padding, the ordered feed."""

from __future__ import annotations

import numpy as np
import pytest

from hpcgen.errors import ConfigError
from hpcgen.training.data import IGNORE, Feed, batch_sizes, collate, encode, token_weights
from hpcgen.training.tokenizer import char_tokenizer

TEMPLATE = "<{prompt}={answer}>"


@pytest.fixture
def tok():
    return char_tokenizer(["abcdefghij<>=xyz"])


def test_labels_cover_the_answer_only(tok):
    enc = encode(tok, ["abc", "de"], ["xy", "z"], TEMPLATE, 64)
    assert [tok.decode(ids) for ids in enc.ids] == ["<abc=xy>", "<de=z>"]
    batch = collate([0, 1], enc, tok.pad_token_id)
    assert batch["input_ids"].shape == (2, 8)  # padded to the longest record, not to max_length
    labels = batch["labels"].tolist()
    assert labels[0] == [IGNORE] * 5 + tok("xy>", add_special_tokens=False)["input_ids"]
    assert labels[1] == [IGNORE] * 4 + tok("z>", add_special_tokens=False)["input_ids"] + [IGNORE] * 2
    assert batch["attention_mask"].tolist()[1] == [1] * 6 + [0] * 2


def test_truncation_drops_prompt_from_the_left_never_the_answer(tok):
    enc = encode(tok, ["abcdefghij", "a"], ["xyz", "xyzxyzxyz"], TEMPLATE, 8)
    assert tok.decode(enc.ids[0]) == "hij=xyz>"  # 8 tokens: the prompt lost "<abcdefg"
    assert enc.n_prompt[0] == 4 and enc.too_long == [1]  # the second answer alone is 10 tokens
    assert enc.ids[1] is None
    assert enc.truncated == 1  # counted for the report


def test_length_grouping_gives_the_gradient_of_one_batch(tok):
    """Sorted micro batches with token-weighted losses, averaged over the accumulation as
    DeepSpeed does, give the gradient of the mean over every answer token of the step."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    rng = np.random.default_rng(0)
    letters = list("abcdefghij")
    prompts = ["".join(rng.choice(letters, rng.integers(1, 30))) for _ in range(8)]
    answers = ["".join(rng.choice(letters, rng.integers(1, 6))) for _ in range(8)]
    enc = encode(tok, prompts, answers, TEMPLATE, 64)
    lengths = np.asarray([len(x) for x in enc.ids])
    feed = Feed(np.arange(8), micro_batch=2, accumulation=4, world_size=1, lengths=lengths)
    micro = feed.micro_batches(0, 0)
    assert sorted(np.concatenate(micro).tolist()) == list(range(8))  # the same items, only regrouped
    assert all(lengths[a].max() <= lengths[b].min() for a, b in zip(micro, micro[1:]))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         pad_token_id=tok.pad_token_id))

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    whole = grads(model(**collate(list(range(8)), enc, tok.pad_token_id)).loss)
    weights = token_weights(micro, enc)
    assert abs(sum(weights) - len(micro)) < 1e-9
    grouped = grads(sum(model(**collate(list(m), enc, tok.pad_token_id)).loss * w for m, w in zip(micro, weights))
                    / len(micro))
    assert torch.allclose(grouped, whole, rtol=1e-4, atol=1e-6)
    plain = grads(sum(model(**collate(list(m), enc, tok.pad_token_id)).loss for m in micro) / len(micro))
    assert not torch.allclose(plain, whole, rtol=1e-4, atol=1e-6)  # unweighted micro batches differ


def test_feed_gives_every_step_exactly_its_items():
    order = np.arange(100)[::-1].copy()
    one = Feed(order, micro_batch=4, accumulation=4, world_size=1)
    two = Feed(order, micro_batch=4, accumulation=2, world_size=2)
    assert one.global_batch == two.global_batch == 16 and one.steps == 6  # the last 4 items are dropped
    for step in range(one.steps):
        expected = order[step * 16:(step + 1) * 16]
        assert np.array_equal(np.concatenate(one.micro_batches(step, 0)), expected)
        both = np.concatenate(two.micro_batches(step, 0) + two.micro_batches(step, 1))
        assert np.array_equal(both, expected)
        # the same partition into micro batches, whether by rank or by accumulation
        assert [m.tolist() for m in two.micro_batches(step, 0) + two.micro_batches(step, 1)] == \
            [m.tolist() for m in one.micro_batches(step, 0)]


def test_batch_sizes_must_divide():
    assert batch_sizes(16, 4, 2) == 2
    with pytest.raises(ConfigError, match="global batch 16 is not a multiple of micro batch 3 x 2"):
        batch_sizes(16, 3, 2)


def test_a_fixed_number_of_steps_cycles_through_the_order():
    """``train.steps``: the same compute whatever the training set's size; the order is gone
    through again from its start (a partial last batch is still dropped, each time)."""
    order = np.arange(10)
    feed = Feed(order, micro_batch=2, accumulation=2, world_size=1, max_steps=5)  # 2 whole steps per pass
    assert feed.steps == 5
    seen = [feed.step_items(s).tolist() for s in range(feed.steps)]
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]]
    assert Feed(order, micro_batch=2, accumulation=2, world_size=1, max_steps=1).steps == 1
