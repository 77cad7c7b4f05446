"""``turns: first | all`` of the chat sources (FIDELITY.md row 6)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from pydantic import ValidationError

from hpcgen.data.conversations import FlanMiniSource, NoRobotsSource, ShareGPTSource
from tests.conftest import FIXTURES

DATA = FIXTURES / "data"
MULTI = str(DATA / "multiturn.json")


def load(source, stats=None):
    return list(source.load("data.sources[0]", stats if stats is not None else Counter()))


def test_all_turns_prompt_and_answer():
    stats = Counter()
    by_id = {e.id: e for e in load(ShareGPTSource(path=MULTI, turns="all"), stats)}
    assert set(by_id) == {"MT1", "MT2", "MT3", "MT4", "MT6", "MT7"}
    # system text first, the first user turn without a label, later turns labelled, one a line
    assert by_id["MT1"].prompt == ("You are a patient math tutor.\n\n"
                                   "What is 3 times 4?\n"
                                   "Assistant: 3 times 4 is 12.\n"
                                   "User: And 12 divided by 6?\n"
                                   "Assistant: 12 divided by 6 is 2.\n"
                                   "User: So what is (3*4)/6?")
    assert by_id["MT1"].answer == "(3*4)/6 = 12/6 = 2."
    # a trailing user turn is dropped: the answer is the last assistant turn
    assert by_id["MT2"].prompt == "Name a primary color.\nAssistant: Red.\nUser: Another one?"
    assert by_id["MT2"].answer == "Blue."
    # an assistant turn before the first user turn is left out
    assert (by_id["MT3"].prompt, by_id["MT3"].answer) == ("Spell cat backwards.", "tac")
    # a turn of another speaker is left out and counted
    assert (by_id["MT4"].prompt, by_id["MT4"].answer) == ("What is the weather in Paris?", "It is sunny in Paris.")
    # back-to-back assistant turns: the earlier one stays in the prompt
    assert by_id["MT6"].prompt == "Tell me a fact about owls.\nAssistant: Owls can turn their heads about 270 degrees."
    assert by_id["MT6"].answer == "They also fly almost silently."
    # an empty turn is left out
    assert by_id["MT7"].prompt == "Translate 'hello' to French.\nUser: Please answer."
    assert by_id["MT7"].answer == "Bonjour."
    assert stats == {"sharegpt: records without a user/assistant exchange": 1,  # MT5: a user turn only
                     "sharegpt: turns of other speakers left out": 1}


def test_first_is_the_default_and_unchanged():
    assert ShareGPTSource(path=MULTI).turns == "first"
    stats = Counter()
    by_id = {e.id: e for e in load(ShareGPTSource(path=MULTI), stats)}
    assert (by_id["MT1"].prompt, by_id["MT1"].answer) == ("You are a patient math tutor.\n\nWhat is 3 times 4?",
                                                          "3 times 4 is 12.")
    assert (by_id["MT2"].prompt, by_id["MT2"].answer) == ("Name a primary color.", "Red.")
    assert (by_id["MT3"].prompt, by_id["MT3"].answer) == ("Spell cat backwards.", "tac")
    assert by_id["MT6"].answer == "Owls can turn their heads about 270 degrees."
    # under first, a user turn must be followed at once by the reply
    assert "MT4" not in by_id and "MT5" not in by_id and "MT7" not in by_id
    assert stats == {"sharegpt: records without a user/assistant exchange": 3}


def test_sharegpt_fixture_all_turns_keeps_the_follow_up():
    first = {e.id: e for e in load(ShareGPTSource(path=str(DATA / "sharegpt.json")))}
    whole = {e.id: e for e in load(ShareGPTSource(path=str(DATA / "sharegpt.json"), turns="all"))}
    assert set(first) == set(whole)
    assert whole["QWJ000_0"].prompt == ("How do I reverse a list in Python?\nAssistant: "
                                        + first["QWJ000_0"].answer + "\nUser: Thanks!")
    assert whole["QWJ000_0"].answer == "You're welcome."
    # one exchange: the same record under both settings
    assert (whole["SYS001_0"].prompt, whole["SYS001_0"].answer) == (first["SYS001_0"].prompt,
                                                                     first["SYS001_0"].answer)


def test_one_exchange_sources_are_the_same_under_both():
    for cls, path in ((FlanMiniSource, "flan_mini.json"), (NoRobotsSource, "norobots.jsonl")):
        a, b = Counter(), Counter()
        assert load(cls(path=str(DATA / path)), a) == load(cls(path=str(DATA / path), turns="all"), b)
        assert a == b


def test_norobots_multi_turn_messages(tmp_path):
    path = tmp_path / "nr.jsonl"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi."},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye."},
                {"role": "assistant", "content": "Goodbye."}]
    path.write_text(json.dumps({"prompt": "Hi.", "prompt_id": "p1", "messages": messages, "category": "Chat"}))
    [e] = load(NoRobotsSource(path=str(path), turns="all"))
    assert (e.prompt, e.answer) == ("Be brief.\n\nHi.\nAssistant: Hello.\nUser: Bye.", "Goodbye.")
    [f] = load(NoRobotsSource(path=str(path)))
    assert (f.prompt, f.answer) == ("Be brief.\n\nHi.", "Hello.")


def test_turns_takes_first_or_all_only():
    with pytest.raises(ValidationError, match="'first' or 'all'"):
        ShareGPTSource(path=MULTI, turns="last")
