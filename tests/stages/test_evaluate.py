"""Evaluation loss against a hand computation on a tiny model, and the stage end to end."""

from __future__ import annotations

import math

import h5py
import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from hpcgen.cli import main
from hpcgen.stages.evaluate import per_sample_loss
from hpcgen.training.data import encode
from hpcgen.training.tokenizer import char_tokenizer
from tests.training.test_train import BASE, run_dir


def test_per_sample_loss_equals_a_hand_computation():
    tok = char_tokenizer(["abcxyz<>="])
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=32))
    enc = encode(tok, ["abc", "a"], ["xy", "zzz"], "<{prompt}={answer}>", 32)
    got = per_sample_loss(model, enc, tok.pad_token_id, batch_size=2)
    for i, (ids, n_prompt) in enumerate(zip(enc.ids, enc.n_prompt)):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        # token t is predicted from position t - 1; only answer tokens (and the closing '>') count
        terms = [-float(logp[t - 1, ids[t]]) for t in range(n_prompt, len(ids))]
        assert len(terms) == {0: 3, 1: 4}[i]
        assert math.isclose(got[i], sum(terms) / len(terms), rel_tol=1e-5)


def test_forced_exact_match_is_greedy_decodings_verdict():
    """The loss forward's Exact-Match (every answer token the argmax, the end-of-sequence token
    included) against greedy generation with a KV cache, record by record. A random model with
    large initial weights and a push towards the end-of-sequence token answers variedly and often
    stops on its own; references are its own answers (a match), their prefixes (generation goes on
    past them: no match) and altered answers (no match)."""
    from hpcgen.stages.evaluate import generate_answers

    tmpl = "{prompt}={answer}</s>"
    tok = char_tokenizer(["abcdef>|="])
    rng = np.random.default_rng(0)
    prompts = ["".join(rng.choice(list("abcdef"), rng.integers(3, 12))) for _ in range(96)]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                       initializer_range=0.3, eos_token_id=tok.eos_token_id,
                                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id))
    with torch.no_grad():
        eos = model.transformer.wte.weight[tok.eos_token_id]
        model.transformer.ln_f.bias += 0.5 * eos / eos.norm()
    answers = generate_answers(model, tok, prompts, tmpl, 64, 8, 16)

    def greedy_tokens(prompt):  # one prompt, no padding: the tokens greedy decoding emits
        ids = tok(prompt + "=", add_special_tokens=False, return_tensors="pt")["input_ids"]
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        return out[0, ids.shape[1]:].tolist()

    specials = {tok.pad_token_id, tok.bos_token_id, tok.unk_token_id}
    emitted = [greedy_tokens(p) for p in prompts]
    # ended by </s>, with no other special token (decoding would drop it from the text, token-level
    # and text-level verdicts then differ: a random model emits them, a trained one does not)
    stopped = [tok.eos_token_id in t and not specials & set(t[:t.index(tok.eos_token_id)]) for t in emitted]
    refs = []
    for i, a in enumerate(answers):
        if i % 3 == 0 or not a:
            refs.append(a)
        elif i % 3 == 1:
            refs.append(a[:-1])
        else:
            refs.append(a[:-1] + ("a" if a[-1] != "a" else "b"))
    keep = [i for i in range(len(prompts)) if stopped[i]]  # an answer cut at max_new_tokens has no verdict
    enc = encode(tok, prompts, refs, tmpl, 64)
    _, forced = per_sample_loss(model, enc, tok.pad_token_id, batch_size=16, exact=True)
    greedy = np.asarray([float(answers[i] == refs[i]) for i in range(len(prompts))])
    assert 8 <= greedy[keep].sum() <= len(keep) - 8  # both verdicts occur
    assert np.sum(forced[keep] != greedy[keep]) <= 1  # equal up to a near tie between the two forwards
    # budgets (the reference's answer and tail tokens) change no generated verdict, only the work
    budgets = [len(x) - n for x, n in zip(enc.ids, enc.n_prompt)]
    capped = generate_answers(model, tok, prompts, tmpl, 64, 8, 16, budgets=budgets)
    plain = [i for i, t in enumerate(emitted) if not specials & set(t[:t.index(tok.eos_token_id)]
                                                              if tok.eos_token_id in t else t)]
    assert [capped[i] == refs[i] for i in plain] == [answers[i] == refs[i] for i in plain]
    # a cut answer: generation's text equals the reference, but the model did not end it
    cut = [i for i in range(len(prompts)) if tok.eos_token_id not in emitted[i] and not specials & set(emitted[i])
           and refs[i] == answers[i]]
    assert cut and np.all(forced[cut] == 0)


def test_evaluate_stage_over_all_snapshots(tmp_path):
    text = BASE.replace("global_batch: 16}", "global_batch: 16, eval_in_loop: true}") + "eval: {tasks: 2}\n"
    (tmp_path / "exp.yaml").write_text(text)
    assert main(["submit", str(tmp_path / "exp.yaml"), "--executor", "debug"]) == 0
    store = tmp_path / "out" / "store"
    files = sorted((store / "evaluate").glob("*/losses-*.h5"))
    assert len(files) == 2
    steps, rows = [], {}
    for path in files:
        with h5py.File(path) as f:
            steps += f["steps"][:].tolist()
            for s, loss in zip(f["steps"][:], f["loss"][:]):
                rows[int(s)] = loss
            assert f["ids"].shape == (20,) and f["generalist"][:].all()
    assert sorted(steps) == [4, 8, 11]  # snapshots spread over the two array tasks
    # the same numbers as the training job's own in-loop evaluation
    import json

    in_loop = {r["step"]: r["test_loss"] for r in map(json.loads, (run_dir(tmp_path) / "work-00000" /
                                                                  "test_loss.jsonl").read_text().splitlines())}
    for step, loss in rows.items():
        assert abs(float(np.nanmean(loss)) - in_loop[step]) < 1e-4


def reward_model(tmp_path):
    """A small sequence-classification model (random weights) standing in for a reward model:
    the stage only needs its interface, which is the real transformers one."""
    from transformers import GPT2ForSequenceClassification

    tok = char_tokenizer(["abcd>|=Human: Assistant\n"])
    torch.manual_seed(1)
    model = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2,
                                                     n_positions=128, num_labels=1, pad_token_id=tok.pad_token_id))
    path = tmp_path / "reward"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_generation_scores_on_rewriting_tasks(tmp_path):
    """A model that learned the rewriting rule answers unseen instructions correctly; the stage
    scores its greedy answers with Exact-Match and ROUGE."""
    (tmp_path / "exp.yaml").write_text("""
name: gen
output_dir: out
cluster: {executor: debug}
data:
  sources:
    - {format: rewriting, alphabet: abcd, x_len: 1, y_len: 1, z_len: [4, 6], instructions: 8, budget: 256,
       test_instructions: 2, test_examples_per_instruction: 4, noop_fraction: 0.5}
  template: "{prompt}={answer}</s>"
arrange: {strategy: random}
train: {preset: gpt2-rewriting, layers: 1, hidden: 32, heads: 2, max_length: 32, global_batch: 16, micro_batch: 16,
        save_every: 8, deepspeed: zero0}
eval: {generate: true, max_new_tokens: 10, reward_model: REWARD}
""".replace("REWARD", str(reward_model(tmp_path))))
    assert main(["submit", str(tmp_path / "exp.yaml")]) == 0
    [path] = list((tmp_path / "out" / "store" / "evaluate").glob("*/losses-00000.h5"))
    with h5py.File(path) as f:
        em, r1, rl, rw = f["exact_match"][:], f["rouge1"][:], f["rougeL"][:], f["reward"][:]
        assert rw.shape == (2, 8) and np.isfinite(rw).all() and rw.std() > 0
        assert em.shape == (2, 8) and set(np.unique(em)) <= {0.0, 1.0}
        assert np.all((r1 >= 0) & (r1 <= 1)) and np.all((rl >= 0) & (rl <= r1 + 1e-6))  # LCS <= unigram overlap
        assert np.all(r1[em == 1] == 1)  # an exact match is a perfect ROUGE-1


def _losses(path):
    with h5py.File(path) as f:
        return {int(s): row for s, row in zip(f["steps"][:], f["loss"][:])}


def test_a_stopped_evaluation_goes_on_from_its_committed_snapshots(tmp_path):
    """Each snapshot's result is committed as it finishes: a rerun of the task (a time limit, a
    requeue) reuses them instead of starting again at snapshot 0."""
    (tmp_path / "exp.yaml").write_text(BASE + "eval: {tasks: 1}\n")
    assert main(["submit", str(tmp_path / "exp.yaml"), "--executor", "debug"]) == 0
    [node] = list((tmp_path / "out" / "store" / "evaluate").iterdir())
    work = node / "work-00000"
    assert sorted(p.name for p in work.glob("step-*.h5")) == ["step-000004.h5", "step-000008.h5", "step-000011.h5"]
    first = _losses(node / "losses-00000.h5")
    # as if stopped after its first two snapshots: no marker, no output, no third result; and a
    # mark in the first result, to tell reuse from recomputation
    (node / "completions" / "00000.json").unlink()
    (node / "losses-00000.h5").unlink()
    (work / "step-000011.h5").unlink()
    with h5py.File(work / "step-000004.h5", "r+") as f:
        f["loss"][0] = 123.0
    assert main(["submit", str(tmp_path / "exp.yaml"), "--executor", "debug"]) == 0
    again = _losses(node / "losses-00000.h5")
    assert again[4][0] == 123.0 and np.allclose(again[4][1:], first[4][1:], equal_nan=True)  # reused
    assert np.allclose(again[8], first[8], equal_nan=True)
    assert np.allclose(again[11], first[11], atol=1e-5, equal_nan=True)  # evaluated again


def test_weights_are_deleted_only_after_their_result_is_committed(tmp_path):
    (tmp_path / "exp.yaml").write_text(BASE + "eval: {tasks: 1, delete_after: true}\n")
    assert main(["submit", str(tmp_path / "exp.yaml"), "--executor", "debug"]) == 0
    [node] = list((tmp_path / "out" / "store" / "evaluate").iterdir())
    assert not list((tmp_path / "out" / "store" / "train").glob("*/work-00000/snapshots/*/*.safetensors"))
    first = _losses(node / "losses-00000.h5")
    # stopped after its last snapshot's result, before its output: every weight is gone, and the
    # rerun needs none of them
    (node / "completions" / "00000.json").unlink()
    (node / "losses-00000.h5").unlink()
    assert main(["submit", str(tmp_path / "exp.yaml"), "--executor", "debug"]) == 0
    again = _losses(node / "losses-00000.h5")
    assert again.keys() == first.keys() and all(np.array_equal(again[k], first[k], equal_nan=True) for k in first)


def test_a_reward_model_whose_head_does_not_load_is_refused(tmp_path):
    """A checkpoint without the sequence-classification head (a causal LM here, as UltraRM's own
    class looks to transformers) would score with a random head: refused, naming the weights."""
    import pytest

    from hpcgen.errors import ConfigError
    from hpcgen.stages.evaluate import RewardModel

    tok = char_tokenizer(["abcd"])
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=32))
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    with pytest.raises(ConfigError, match=r"eval.reward_model: reward model .* has no weights for score.weight"):
        RewardModel(str(tmp_path / "lm"))
    scorer = RewardModel(str(reward_model(tmp_path)))  # a complete checkpoint loads
    assert scorer.scores(["ab"], ["cd"], "{prompt}>{answer}", 4).shape == (1,)


def test_a_diversity_run_end_to_end_reports_unseen_and_seen_exact_match(tmp_path):
    """prepare -> train -> evaluate -> aggregate on a rewriting source with held-out examples of
    seen instructions: the evaluation marks each test record seen or not and scores it by greedy
    generation and by the loss forward's verdict, and summary.json gives each run's final exact
    match on unseen and on seen instructions from those records."""
    import json

    (tmp_path / "exp.yaml").write_text("""
name: div
output_dir: out
cluster: {executor: debug}
data:
  sources:
    - {format: rewriting, alphabet: abcd, x_len: 1, y_len: 1, z_len: [1, 2], instructions: 8, budget: 3072,
       test_instructions: 2, test_examples_per_instruction: 4, seen_test_instructions: 3, noop_fraction: 0.25}
  template: "{prompt}={answer}</s>"
arrange: {strategy: random}
train: {preset: gpt2-rewriting, layers: 2, hidden: 64, heads: 2, max_length: 32, global_batch: 16, micro_batch: 16,
        lr: 5.0e-3, warmup_steps: 10, save_every: 96, deepspeed: zero0}
eval: {generate: true, rouge: false, forced_exact_match: true, max_new_tokens: 10}
report: {baseline: null, figures: [accuracy_curves]}
""")
    assert main(["submit", str(tmp_path / "exp.yaml")]) == 0
    [path] = list((tmp_path / "out" / "store" / "evaluate").glob("*/losses-00000.h5"))
    with h5py.File(path) as f:
        seen, em, forced = f["seen"][:], f["exact_match"][:], f["exact_match_forced"][:]
        assert "rouge1" not in f and [s.decode() for s in f["source"][:]] == ["rewriting"] * 20
    assert seen.tolist() == [False] * 8 + [True] * 12  # 2 unseen x 4, then 3 seen x 4
    assert em.shape == forced.shape == (2, 20)
    assert np.mean(em != forced) <= 0.1  # the two verdicts agree (a trained model emits no stray specials)
    assert em[-1][seen].mean() >= 0.25  # the seen rules are learned: the summary's means are not trivially 0
    [summary] = list((tmp_path / "out" / "store" / "aggregate").glob("*/report/summary.json"))
    [run] = json.loads(summary.read_text())["runs"]
    assert math.isclose(run["final_exact_match_unseen"], float(em[-1][~seen].mean()), rel_tol=1e-6, abs_tol=1e-9)
    assert math.isclose(run["final_exact_match_seen"], float(em[-1][seen].mean()), rel_tol=1e-6)
    assert (run["unseen_test_instructions"], run["seen_test_instructions"]) == (2, 3)
