"""Conversations for fine-tuning: rows in the shapes people publish them in, checked, encoded
with the one chat template, split by conversation and packed into blocks with a loss mask.

Row shapes: {"messages": [{"role", "content"}, ...]} (OpenAI's), {"instruction", "input",
"output"} (Alpaca's) and {"prompt", "completion"} (text, or message lists). Packing: each
conversation starts with the end-of-document token; longest first, each goes whole into the
fullest block with room for it (best fit decreasing), and the rest of a block is padding,
which carries no loss. Conversations in one block see the earlier ones, as documents do in
pretraining. A conversation longer than a block is cut into block-long pieces that overlap
by one token, so each of its tokens is still predicted once, the later pieces starting
mid-conversation as a window of a long document does (counted as `split`).
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..chat_template import (
    CHAT_ROLES,
    CHAT_TEMPLATE_VERSION,
    ROLE_ALIASES,
    chat_labels,
    content_text,
    encode_chat,
)
from ..errors import UserError
from ..text import normalize
from ..tokenizer import Coverage, Tokenizer
from .loader import IGNORE, BlockSampler
from .sources import (
    Source,
    input_list,
    iter_rows,
    note_not_read,
    resolve_inputs,
    whole_characters,
)

Conversation = list[dict[str, str]]
LossOn = Literal["assistant", "all"]
CONVERSATIONS_FORMAT = "banglaslm-conversations"  # the "format" of a fine-tuning run's data_meta.json
SHAPES = "`messages`, ShareGPT's `conversations`, `instruction`/`output` (`input` optional) or `prompt`/`completion`"


# ---- rows → conversations ---------------------------------------------------------------------
def as_conversation(row: dict[str, Any], where: str) -> Conversation:
    """The messages of one row in any of the accepted shapes, checked; UserError naming the
    row and the problem otherwise."""
    given = row
    row = {_field_name(key, row): _list_from_json(value) if _field_name(key, row) in ("messages", "conversations")
           else value for key, value in _present(row).items()}
    if "messages" in row:
        messages = row["messages"]
    elif "conversations" in row:  # ShareGPT: {"from": "human" | "gpt" | "system", "value": ...}, or role/content
        turns = row["conversations"]
        messages = [_sharegpt_turn(_present(t)) if isinstance(t, dict) else t
                    for t in turns] if isinstance(turns, list) else turns
    elif "instruction" in row and "output" in row:
        extra = row.get("input") or ""
        user = f"{_text(row['instruction'], where, 'instruction')}\n\n{_text(extra, where, 'input')}" if extra \
            else _text(row["instruction"], where, "instruction")
        messages = _alpaca_history(row.get("history"), where) + \
            [{"role": "user", "content": user}, {"role": "assistant", "content": _text(row["output"], where, "output")}]
    elif "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        messages = (prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]) + \
            (completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}])
    elif empty := [name for name in REQUIRED_FIELDS if any(v is None and _field_name(k, given) == name
                                                          for k, v in given.items())]:
        raise UserError(f"{where}: `{empty[0]}` is empty (null); give it text, or drop the row")
    else:
        raise UserError(f"{where} is not a conversation: it has none of {SHAPES} (it has: "
                        f"{', '.join(map(str, row)) or 'nothing'})")
    return _checked(_with_system(messages, row.get("system"), where), where)


# The fields a shape cannot do without, the answer's first: the one a null is named in.
REQUIRED_FIELDS = ("output", "completion", "messages", "conversations", "instruction", "prompt")
ROW_FIELDS = ("messages", "conversations", "instruction", "input", "output", "history", "prompt", "completion", "system")


def _field_name(key: Any, row: dict) -> Any:
    """A row's key as the shapes name it: a spreadsheet's "Instruction" is `instruction`, unless
    the row also has that name itself."""
    lower = key.lower() if isinstance(key, str) else key
    return lower if lower in ROW_FIELDS and lower not in row else key


def _with_system(messages: Any, system: Any, where: str) -> Any:
    """`messages` after the row's own "system" field (ShareGPT and Alpaca files put the system
    prompt there, beside the turns; it was dropped without a word)."""
    if system is None or (isinstance(system, str) and not system.strip()) or not isinstance(messages, list):
        return messages
    if messages and isinstance(messages[0], dict) and messages[0].get("role", messages[0].get("from")) in ("system", "developer"):
        raise UserError(f"{where} has two system prompts, its \"system\" field and its first message; keep one")
    return [{"role": "system", "content": system}, *messages]


def _alpaca_history(history: Any, where: str) -> list[dict[str, Any]]:
    """The earlier turns of an Alpaca row's "history", [[question, answer], ...], as messages."""
    if history is None:
        return []
    if not isinstance(history, list) or not all(isinstance(t, list) and len(t) == 2 for t in history):
        raise UserError(f"{where}: \"history\" must be a list of [question, answer] pairs, "
                        f"got {json.dumps(history, ensure_ascii=False)[:60]}")
    return [message for question, answer in history
            for message in ({"role": "user", "content": question}, {"role": "assistant", "content": answer})]


def _present(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields that hold a value: Parquet and Arrow (hf: datasets) give every row every column,
    and every message every key any message has, filling the missing ones with None."""
    return {key: value for key, value in fields.items() if value is not None}


def _sharegpt_turn(turn: dict[str, Any]) -> dict[str, Any]:
    return {"role": turn.get("from", turn.get("role")), "content": turn.get("value", turn.get("content")),
            **({"weight": turn["weight"]} if "weight" in turn else {})}


def _list_from_json(value: Any) -> Any:
    """A CSV/TSV cell holding a list of messages as JSON text (the only way a table of text can
    carry one) as that list; anything else as it is."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _text(value: Any, where: str, name: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where}: `{name}` must be text, got {type(value).__name__}")
    return value


def _checked(messages: Any, where: str) -> Conversation:
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where} has no messages: `messages` must be a non-empty list of {{role, content}}")
    out: Conversation = []
    for i, message in enumerate(messages, start=1):  # counted as people count, like line numbers
        if not isinstance(message, dict):
            raise UserError(f"{where}: message {i} is {type(message).__name__}, not {{role, content}}")
        message = _present(message)
        if message.get("role") in ("tool", "function") or message.get("tool_calls") or message.get("function_call"):
            raise UserError(f"{where}: message {i} is a tool call or a tool's result; tool use is not supported in "
                            "fine-tuning data: drop those messages, or the conversation")
        role = ROLE_ALIASES.get(message.get("role"), message.get("role"))
        if role not in CHAT_ROLES:
            raise UserError(f"{where}: message {i} has the unknown role {message.get('role')!r}; roles are "
                            f"{', '.join(CHAT_ROLES)} (or {', '.join(ROLE_ALIASES)})")
        try:
            content = content_text(message.get("content"))
        except UserError as exc:
            raise UserError(f"{where}: message {i} ({role}): {exc}") from None
        whole_characters(content, f"{where}: message {i} ({role})")
        if not normalize(content).strip():  # zero-width characters alone are nothing once normalized
            if role == "system":
                continue  # an empty system message says nothing
            raise UserError(f"{where}: message {i} ({role}) is empty" + (" (only invisible characters)"
                                                                         if content.strip() else ""))
        out.append({"role": role, "content": content, **_weight(message, role, f"{where}: message {i} ({role})")})
    if not any(m["role"] == "assistant" for m in out):
        raise UserError(f"{where} has no assistant turn: there is nothing to learn from it")
    if not any(m["role"] == "assistant" and m.get("weight", 1) for m in out):
        raise UserError(f"{where}: every assistant turn has weight 0: there is nothing to learn from it")
    return out


def _weight(message: dict, role: str, where: str) -> dict[str, int]:
    """OpenAI's `weight` of an assistant message: 0 leaves its answer untrained (it stays the
    context of later turns); {} for 1 or none, so conversations without it compare equal."""
    if "weight" not in message:
        return {}
    weight = message["weight"]
    if isinstance(weight, str) or weight not in (0, 1):
        raise UserError(f"{where}: weight must be 0 or 1, got {weight!r}")
    if role != "assistant" and weight == 0:
        raise UserError(f"{where}: weight 0 is for assistant messages (only answers carry loss)")
    return {"weight": 0} if weight == 0 else {}


def read_conversations(inputs: list[str]) -> list[Conversation]:
    """Every conversation of the inputs (.jsonl/.json/.csv/.tsv/.parquet files, compressed or
    not, folders, globs, hf:NAME), in order; UserError for the first bad row or an input that
    holds none."""
    conversations: list[Conversation] = []
    for source in _table_sources(inputs):
        before = len(conversations)
        conversations += [as_conversation(row, where) for where, row in iter_rows([source])]
        if len(conversations) == before:
            raise UserError(f"{source.location} holds no conversations; each row needs {SHAPES}")
    return conversations


def _table_sources(inputs: list[str]) -> list[Source]:
    """The inputs' sources, but the text files found in input folders (a README.txt beside the
    conversations), which are passed over with a note; a text file named itself is refused by
    `iter_rows`."""
    sources = resolve_inputs(inputs)
    folders = [Path(item).resolve() for item in input_list(inputs) if Path(item).is_dir()]
    passed = [s for s in sources if s.kind == "text" and any(f in Path(s.location).resolve().parents for f in folders)]
    note_not_read([Path(s.location) for s in passed], "text file(s) in the input folder(s) are not read",
                  "conversations come as .jsonl, .json, .csv, .tsv or .parquet rows")
    kept = [s for s in sources if s not in passed]
    if not kept:
        named = ", ".join(s.location for s in passed[:3]) + (", ..." if len(passed) > 3 else "")
        raise UserError(f"the inputs hold text files only ({named}); conversations come as .jsonl, .json, .csv, .tsv "
                        "or .parquet rows: see README's fine-tuning section for their shapes")
    return kept


# ---- conversations → blocks -------------------------------------------------------------------
def encode(tokenizer: Tokenizer, conversation: Conversation, loss_on: LossOn = "assistant",
           coverage: Coverage | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, loss) of one conversation: `loss[i]` says whether predicting ids[i] is trained;
    `coverage` counts its unknown tokens."""
    ids, trained = encode_chat(tokenizer, conversation, add_generation_prompt=False, coverage=coverage)
    loss = np.array(trained, dtype=bool) if loss_on == "assistant" else np.ones(len(ids), dtype=bool)
    loss[0] = False  # the opening end-of-document token has no context to be predicted from
    return np.array(ids, dtype=np.int64), loss


@dataclass
class PackStats:
    conversations: int
    blocks: int
    tokens: int        # conversation tokens placed in blocks
    padding: int       # padding positions
    trained: int       # positions that carry loss
    split: int         # conversations longer than a block, cut into pieces
    dropped: int       # pieces left with no trained token (not placed)

    @property
    def padding_share(self) -> float:
        return self.padding / max(self.padding + self.tokens, 1)


def pieces(ids: np.ndarray, loss: np.ndarray, length: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """A conversation of up to `length` tokens whole; a longer one cut into pieces of `length`
    that overlap by one token (the first token of a piece is only context: no loss)."""
    if len(ids) <= length:
        return [(ids, loss)]
    out = []
    for start in range(0, len(ids) - 1, length - 1):
        piece_loss = loss[start:start + length].copy()
        piece_loss[0] = False
        out.append((ids[start:start + length], piece_loss))
    return out


def pack(encoded: Iterable[tuple[np.ndarray, np.ndarray]], block_size: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, PackStats]:
    """Rows of block_size + 1 tokens (ids, targets) by best fit decreasing; targets hold the next
    token where it carries loss and IGNORE elsewhere, so row r trains as x = ids[r, :-1],
    y = targets[r, 1:]."""
    length = block_size + 1
    items, split, dropped, count = [], 0, 0, 0
    for ids, loss in encoded:
        count += 1
        cut = pieces(ids, loss, length)
        split += len(cut) > 1
        kept = [p for p in cut if p[1].any()]
        dropped += len(cut) - len(kept)
        items += kept
    items.sort(key=lambda p: -len(p[0]))
    blocks: list[list[tuple[np.ndarray, np.ndarray]]] = []
    room: list[tuple[int, int]] = []  # (free positions, block index), sorted
    for ids, loss in items:
        at = bisect.bisect_left(room, (len(ids), -1))
        if at == len(room):
            blocks.append([])
            free, index = length, len(blocks) - 1
        else:
            free, index = room.pop(at)
        blocks[index].append((ids, loss))
        if free - len(ids) > 0:
            bisect.insort(room, (free - len(ids), index))
    rows = np.full((len(blocks), length), pad_id, dtype=np.int64)
    targets = np.full((len(blocks), length), IGNORE, dtype=np.int64)
    for r, block in enumerate(blocks):
        at = 0
        for ids, loss in block:
            rows[r, at:at + len(ids)] = ids
            targets[r, at:at + len(ids)] = np.where(loss, ids, IGNORE)
            at += len(ids)
    tokens = sum(len(ids) for ids, _ in items)
    stats = PackStats(count, len(blocks), tokens, rows.size - tokens, int((targets != IGNORE).sum()), split, dropped)
    return rows, targets, stats


def split_conversations(conversations: list[Conversation], val_fraction: float, seed: int) -> dict[str, list[Conversation]]:
    """Held-out conversations for validation (at least one), chosen by a seeded shuffle of the
    distinct conversations: the copies of one (merged sets repeat rows) all go to one side, so
    the validation loss is over answers the model never trained on."""
    groups: dict[str, list[int]] = {}
    for i, conversation in enumerate(conversations):
        groups.setdefault(json.dumps(conversation, sort_keys=True, ensure_ascii=False), []).append(i)
    if len(groups) < 2:
        raise UserError(f"fine-tuning needs at least 2 different conversations (one to train on, one to validate), "
                        f"got {len(groups)} among {len(conversations)} rows")
    members = list(groups.values())
    order = np.random.default_rng([seed, 2]).permutation(len(members))
    n_val = min(max(1, round(len(conversations) * val_fraction)), len(conversations) - 1)
    val: set[int] = set()
    for g in order[:-1]:  # the last group always trains
        if len(val) >= n_val:
            break
        val.update(members[g])
    return {"train": [c for i, c in enumerate(conversations) if i not in val],
            "val": [c for i, c in enumerate(conversations) if i in val]}


def _check_labels(tokenizer: Tokenizer) -> None:
    """The chat template's role labels must survive the tokenizer: a model whose tokenizer
    cannot write "ব্যবহারকারী" (a character-level run on English text) would learn turns with
    no labels, and chat could never tell them apart."""
    lost = Coverage()
    for label in chat_labels("bn").values():
        tokenizer.encode(label, coverage=lost)
    if lost.unknown:
        raise UserError(f"the model's tokenizer cannot write the chat template's role labels "
                        f"({', '.join(chat_labels('bn').values())}): {lost.describe()}; fine-tune a model whose "
                        "tokenizer covers Bangla")


class ConversationData:
    """Conversations ready to train on: the training data of `finetune`, with what the trainer
    asks of a data folder (tokenizer, its hash and size, `meta` with per-split identities,
    `samplers`)."""

    def __init__(self, inputs: list[str], tokenizer: Tokenizer, block_size: int, loss_on: LossOn = "assistant",
                 val_fraction: float = 0.1, seed: int = 1337):
        inputs = input_list(inputs)
        self._tokenizer, self.block_size = tokenizer, block_size
        self.tokenizer_sha256, self.vocab_size = tokenizer.sha256, tokenizer.vocab_size
        self.path = ", ".join(inputs)
        self.rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.stats: dict[str, PackStats] = {}
        splits, coverage = {}, Coverage()
        _check_labels(tokenizer)
        for split, convs in split_conversations(read_conversations(inputs), val_fraction, seed).items():
            scored = loss_on if split == "train" else "assistant"  # the val loss is the answers', whatever is trained
            rows, targets, stats = pack((encode(tokenizer, c, scored, coverage) for c in convs), block_size,
                                        tokenizer.eod_id)
            self.rows[split], self.stats[split] = (rows, targets), stats
            digest = hashlib.sha256(rows.tobytes() + targets.tobytes()).hexdigest()
            splits[split] = {"documents": stats.conversations, "tokens": stats.tokens, "sha256": digest,
                             **asdict(stats), "padding_share": round(stats.padding_share, 4)}
        if coverage.loses_text():
            raise UserError(f"the model's tokenizer cannot represent these conversations: {coverage.describe()}; "
                            "fine-tune a model whose tokenizer covers their text")
        self.meta = {"format": CONVERSATIONS_FORMAT, "chat_template": CHAT_TEMPLATE_VERSION,
                     "sources": [str(Path(i).absolute()) if not i.startswith("hf:") else i for i in inputs],
                     "block_size": block_size, "loss_on": loss_on, "val_fraction": val_fraction,
                     "seed": seed, "splits": splits}

    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    def samplers(self, block_size: int, batch_size: int, grad_accum: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> tuple[BlockSampler, BlockSampler]:
        """(train, val) samplers; `block_size` is the model's context, at least this data's."""
        if self.block_size > block_size:
            raise UserError(f"blocks of {self.block_size} tokens do not fit the model's context of {block_size}; "
                            "set finetune.block_size to at most model.block_size")
        return tuple(BlockSampler(*self.rows[split], batch_size, seed, rank, world_size, grad_accum, split)
                     for split in ("train", "val"))

    def summary(self) -> str:
        t, v = self.stats["train"], self.stats["val"]
        return (f"{t.conversations:,} conversations to train on, {v.conversations:,} held out; {t.blocks:,} blocks of "
                f"{self.block_size} tokens, {t.padding_share:.1%} padding, {t.trained:,} trained tokens"
                + (f"; {t.split} of them longer than a block were split" if t.split else "")
                + (f", {t.dropped} pieces without an answer dropped" if t.dropped else ""))
