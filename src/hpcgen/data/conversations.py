"""Chat-format datasets: user turns make the prompt, an assistant turn the answer.

- Flan-mini: ``{id, source, conversations: [{from, value}, ...]}``; the task is ``source``;
  train/test by a seeded random split of tasks (``test_tasks``, ``train_tasks``), or by the fixed
  lists of ``split_file`` (the authors' ``train_eval_key_list.json``; see ``hpcgen.data.splitfile``).
- ShareGPT: ``{id, conversations: [{from: human|gpt|system, value}, ...]}``; no tasks.
- NoRobots: ``{prompt, prompt_id, messages: [{role, content}, ...], category}``; no tasks.

``turns`` chooses what of a conversation becomes the record (FIDELITY.md row 6):

- ``first`` (default): the first user turn is the prompt and the assistant turn right after it the
  answer; system text, when present before it, is put first (``system + "\n\n" + user``). The
  rest of the conversation is left out. C.3 of the data-arrangement paper (He et al.,
  arXiv:2406.11721; "the paper" below) trims conversations this way.
- ``all``: one record per conversation, as the paper embeds and trains on whole conversations
  (sec. 3.2; the authors' ``split_data_job.py`` 119, ``dataset_wrapper.py`` 219-250). The answer
  is the conversation's last assistant turn; the prompt is every turn before it, from the first
  user turn on, rendered as::

      {system}\n\n{user 1}\nAssistant: {assistant 1}\nUser: {user 2}

  i.e. system text (every system turn, joined by a blank line) first, then the first user turn
  *without* a label, then each later turn on its own line as ``User: ...`` or ``Assistant: ...``.
  The first label is left out because the prompt template adds it: the default template
  ``<s>User: {prompt} Assistant: {answer}</s>`` then reads ``User: u1\nAssistant: a1\nUser: u2
  Assistant: a2``, and a one-exchange conversation gives the same record under both settings.
  Turns after the last assistant turn (a trailing user turn) are dropped, and so are assistant
  turns before the first user turn, turns with empty text, and turns of other speakers (counted).
  ``embed_text`` is then the whole conversation through ``data.embed_template``.

Records without a user turn followed (at some point, under ``all``; at once, under ``first``) by
an assistant turn are skipped and counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field

from hpcgen.data.records import Example, field, safe_id
from hpcgen.data.sourcebase import RecordSource, TaskSplitSource

USER = {"human", "user"}
ASSISTANT = {"gpt", "assistant", "bot", "chatgpt"}


def first_exchange(turns: list[Any], speaker: str, text: str) -> tuple[str, str] | None:
    """The first user turn and the assistant turn right after it, with any system text before."""
    system = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return None
        who = str(turn.get(speaker, "")).lower()
        if who == "system":
            system.append(str(turn.get(text, "")).strip())
        elif who in USER:
            nxt = turns[i + 1] if i + 1 < len(turns) else None
            if isinstance(nxt, dict) and str(nxt.get(speaker, "")).lower() in ASSISTANT:
                prompt = "\n\n".join([*filter(None, system), str(turn.get(text, "")).strip()])
                return prompt, str(nxt.get(text, "")).strip()
            return None
    return None


def whole_conversation(turns: list[Any], speaker: str, text: str) -> tuple[tuple[str, str] | None, int]:
    """(prompt, answer) of the whole conversation, rendered as the module docstring says, or
    None without a user turn before an assistant turn; and the number of turns of other speakers
    left out."""
    system: list[str] = []
    dialog: list[tuple[bool, str]] = []  # (is the user, text)
    other = 0
    for turn in turns:
        if not isinstance(turn, dict):
            return None, 0
        who = str(turn.get(speaker, "")).lower()
        value = str(turn.get(text, "")).strip()
        if who == "system":
            system.append(value)
        elif who in USER or who in ASSISTANT:
            if value:
                dialog.append((who in USER, value))
        else:
            other += 1
    first_user = next((i for i, (is_user, _) in enumerate(dialog) if is_user), None)
    last_reply = next((i for i in range(len(dialog) - 1, -1, -1) if not dialog[i][0]), None)
    if first_user is None or last_reply is None or last_reply < first_user:
        return None, other
    body = dialog[first_user:last_reply]
    lines = [body[0][1]] + [f"{'User' if is_user else 'Assistant'}: {value}" for is_user, value in body[1:]]
    prompt = "\n\n".join([*filter(None, system), "\n".join(lines)])
    return (prompt, dialog[last_reply][1]), other


class ChatSource(RecordSource):
    speaker_key: str = "from"
    text_key: str = "value"
    turns_field: str = "conversations"
    turns: Literal["first", "all"] = Field(
        "first", description="first: the first user turn and the reply to it (C.3); all: one record per "
                             "conversation, prompt = every turn before the last assistant turn "
                             "('{system}\\n\\n{user 1}\\nAssistant: {assistant 1}\\nUser: {user 2}'), "
                             "answer = the last assistant turn (sec. 3.2; FIDELITY.md row 6)")

    def examples(self, key: str, stats: Counter, task_of=None, id_field: str = "id") -> Iterator[Example]:
        for index, rec in self.records(key):
            rid = field(rec, id_field, self.path, index, f"{key}.path")
            task = task_of(rec, index) if task_of else None
            turns = field(rec, self.turns_field, self.path, index, f"{key}.path", list)
            if self.turns == "all":
                pair, other = whole_conversation(turns, self.speaker_key, self.text_key)
                if other:
                    stats[f"{self.label()}: turns of other speakers left out"] += other
            else:
                pair = first_exchange(turns, self.speaker_key, self.text_key)
            if pair is None or not pair[0] or not pair[1]:
                stats[f"{self.label()}: records without a user/assistant exchange"] += 1
                continue
            yield Example(id=safe_id(rid), task=task, split=None, prompt=pair[0], answer=pair[1],
                          source=self.label())


class FlanMiniSource(TaskSplitSource, ChatSource):
    format: Literal["flan_mini"] = "flan_mini"
    test_tasks: int = Field(225, ge=1, description="tasks held out for testing (seeded random; not with split_file)")
    train_tasks: int | None = Field(1600, ge=1, description="tasks kept for training (None: all the rest; "
                                                            "not with split_file)")

    def load(self, key: str, stats: Counter) -> Iterator[Example]:
        examples = self.examples(key, stats, task_of=lambda rec, i: field(rec, "source", self.path, i, f"{key}.path"))
        return self.split_by_file(examples, key, stats)


class ShareGPTSource(ChatSource):
    format: Literal["sharegpt"] = "sharegpt"

    def load(self, key: str, stats: Counter) -> Iterator[Example]:
        return self.examples(key, stats)


class NoRobotsSource(ChatSource):
    format: Literal["norobots"] = "norobots"
    speaker_key: str = "role"
    text_key: str = "content"
    turns_field: str = "messages"

    def load(self, key: str, stats: Counter) -> Iterator[Example]:
        return self.examples(key, stats, id_field="prompt_id")
