"""Conversations for fine-tuning: the row shapes, the checks, the loss mask on real
conversations, packing (padding, the long-conversation rule) and the epoch sampler."""

import json

import numpy as np
import pytest
import torch

from banglaslm.chat_template import encode_chat
from banglaslm.data.conversations import (
    ConversationData,
    as_conversation,
    encode,
    pack,
    read_conversations,
    split_conversations,
)
from banglaslm.data.folder import DataFolder
from banglaslm.data.instructions import instruction_files
from banglaslm.data.loader import IGNORE, BlockSampler
from banglaslm.errors import UserError
from banglaslm.text import normalize


@pytest.fixture(scope="module")
def tokenizer(data_dir):
    return DataFolder(data_dir).tokenizer()


@pytest.fixture(scope="module")
def embedded():
    return read_conversations([str(p) for p in instruction_files()])


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_an_empty_tool_calls_list_is_an_ordinary_message():
    want = [{"role": "user", "content": "প্রশ্ন"}, {"role": "assistant", "content": "উত্তর"}]
    assert as_conversation({"messages": [want[0], {**want[1], "tool_calls": []}]}, "r") == want


def test_the_three_shapes_give_the_same_messages():
    want = [{"role": "user", "content": "প্রশ্ন"}, {"role": "assistant", "content": "উত্তর"}]
    assert as_conversation({"messages": want}, "r") == want
    assert as_conversation({"prompt": "প্রশ্ন", "completion": "উত্তর"}, "r") == want
    assert as_conversation({"prompt": want[:1], "completion": want[1:]}, "r") == want
    assert as_conversation({"instruction": "প্রশ্ন", "input": "", "output": "উত্তর"}, "r") == want
    with_input = as_conversation({"instruction": "অনুবাদ করো", "input": "good", "output": "ভালো"}, "r")
    assert with_input[0]["content"] == "অনুবাদ করো\n\ngood"
    # ShareGPT rows, OpenAI's content parts and its developer role (as the server takes them)
    sharegpt = {"conversations": [{"from": "system", "value": "নিয়ম"}, {"from": "human", "value": "প্রশ্ন"},
                                  {"from": "gpt", "value": "উত্তর"}]}
    assert as_conversation(sharegpt, "r") == [{"role": "system", "content": "নিয়ম"}, *want]
    parts = {"messages": [{"role": "developer", "content": [{"type": "text", "text": "নি"}, {"type": "text", "text": "য়ম"}]},
                          {"role": "user", "content": [{"type": "text", "text": "প্রশ্ন"}]}, want[1]]}
    assert as_conversation(parts, "r") == [{"role": "system", "content": "নিয়ম"}, *want]
    # ShareGPT rows with OpenAI's keys inside (common on the hub)
    assert as_conversation({"conversations": want}, "r") == want
    # an empty system message says nothing and is dropped; extra keys (name) are ignored
    assert as_conversation({"messages": [{"role": "system", "content": " "}, {**want[0], "name": "x"}, want[1]]},
                           "r") == want


def test_a_system_field_beside_the_turns_and_an_alpaca_history_are_kept():
    """ShareGPT and Alpaca files give the system prompt as a field of the row, and Alpaca the
    earlier turns as "history": both were dropped without a word."""
    want = [{"role": "user", "content": "প্রশ্ন"}, {"role": "assistant", "content": "উত্তর"}]
    system = {"role": "system", "content": "তুমি কবি।"}
    sharegpt = {"system": "তুমি কবি।", "conversations": [{"from": "human", "value": "প্রশ্ন"}, {"from": "gpt", "value": "উত্তর"}]}
    assert as_conversation(sharegpt, "r") == [system, *want]
    assert as_conversation({"system": "তুমি কবি।", "messages": want}, "r") == [system, *want]
    alpaca = {"system": "তুমি কবি।", "instruction": "প্রশ্ন", "input": "", "output": "উত্তর",
              "history": [["আগের প্রশ্ন", "আগের উত্তর"]]}
    assert as_conversation(alpaca, "r") == [system, {"role": "user", "content": "আগের প্রশ্ন"},
                                            {"role": "assistant", "content": "আগের উত্তর"}, *want]
    assert as_conversation({"system": "", "messages": want}, "r") == want  # an empty one says nothing
    with pytest.raises(UserError, match="two system prompts"):
        as_conversation({"system": "ক", "messages": [{"role": "system", "content": "খ"}, *want]}, "r")
    with pytest.raises(UserError, match="history"):
        as_conversation({**alpaca, "history": ["আগের প্রশ্ন"]}, "r")


@pytest.mark.parametrize("row, problem", [
    ({"messages": []}, "has no messages"),
    ({"messages": "হ্যালো"}, "has no messages"),
    ({"text": "শুধু লেখা"}, "is not a conversation: it has none of"),
    ({"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}, "unknown role 'bot'"),
    ({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]}, "got int"),
    ({"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "y"}]}, "got NoneType"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                   {"role": "assistant", "content": "y"}]}, r"message 1 \(user\): only text content parts"),
    ({"conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]}, "unknown role 'robot'"),
    ({"messages": [{"role": "user", "content": "x"}]}, "has no assistant turn"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}]}, "is empty"),
    ({"messages": ["user: x"]}, "message 1 is str"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "\u200b\u200c"}]},
     r"message 2 \(assistant\) is empty \(only invisible characters\)"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 0.5}]},
     "weight must be 0 or 1, got 0.5"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": "0"}]},
     "weight must be 0 or 1, got '0'"),
    ({"messages": [{"role": "user", "content": "x", "weight": 0}, {"role": "assistant", "content": "y"}]},
     "weight 0 is for assistant messages"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 0}]},
     "every assistant turn has weight 0"),
    ({"instruction": 3, "output": "y"}, "`instruction` must be text"),
    ({"instruction": "২+৩ কত?", "input": "", "output": 5}, "`output` must be text, got int"),
    ({"instruction": "কী \ud800", "output": "y"}, r"message 1 \(user\): the text holds a lone surrogate \(U\+D800"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "\udc00"}]},
     r"message 2 \(assistant\): the text holds a lone surrogate \(U\+DC00"),
    # said "it has none of ... instruction/output" of a row that has `output`
    ({"instruction": "প্রশ্ন", "input": "", "output": None}, r"`output` is empty \(null\); give it text, or drop the row"),
    ({"instruction": "প্রশ্ন", "input": None, "output": None}, r"`output` is empty \(null\)"),  # not the optional input
    ({"text": "x", "system": None}, "is not a conversation: it has none of"),
    # said "content must be text ..., got NoneType" and "unknown role 'tool'"
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [{}]}]},
     r"message 2 is a tool call or a tool's result; tool use is not supported in fine-tuning data"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "{}"}]}, "message 2 is a tool call"),
])
def test_a_bad_row_is_named_with_its_problem(tmp_path, row, problem):
    good = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
    path = write_jsonl(tmp_path / "c.jsonl", [good, row])
    with pytest.raises(UserError, match=problem) as err:
        read_conversations([str(path)])
    assert f"{path}:2" in str(err.value)


def test_spreadsheet_headers_and_rows_that_are_lists(tmp_path):
    """A CSV header "Instruction,Input,Output" was "not a conversation"; a JSONL row that is a bare
    list of messages was told to look like {"text": ...}, which fine-tuning refuses."""
    (tmp_path / "sheet.csv").write_text("Instruction,Input,Output\nনমস্কার বলো,,নমস্কার\n", encoding="utf-8")
    assert read_conversations([str(tmp_path / "sheet.csv")]) == [
        [{"role": "user", "content": "নমস্কার বলো"}, {"role": "assistant", "content": "নমস্কার"}]]
    listed = [{"role": "user", "content": "হাই"}, {"role": "assistant", "content": "নমস্কার"}]
    (tmp_path / "rows.jsonl").write_text(json.dumps(listed, ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r'rows.jsonl:1 is not a JSON object; each line must be one, such as .*'
                                        r'\{"messages": \[\{"role": "user"'):
        read_conversations([str(tmp_path / "rows.jsonl")])


def test_inputs_that_hold_no_conversations(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(UserError, match="holds no conversations"):
        read_conversations([str(tmp_path / "empty.jsonl")])
    (tmp_path / "notes.txt").write_text("লেখা", encoding="utf-8")
    with pytest.raises(UserError, match="is a text file"):
        read_conversations([str(tmp_path / "notes.txt")])
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "README.txt").write_text("লেখা", encoding="utf-8")
    with pytest.raises(UserError, match=r"the inputs hold text files only \(.*README.txt\); conversations come as"):
        read_conversations([str(tmp_path / "only_text")])


def test_a_readme_beside_the_conversations_in_a_folder_is_passed_over(tmp_path, capsys):
    """A folder of conversations with a README.txt was refused ("is a text file") without a fix."""
    good = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
    (tmp_path / "chats").mkdir()
    write_jsonl(tmp_path / "chats" / "c.jsonl", [good, good])
    (tmp_path / "chats" / "README.txt").write_text("এই ফোল্ডারে কথোপকথন", encoding="utf-8")
    assert len(read_conversations([str(tmp_path / "chats")])) == 2
    assert "note: 1 text file(s) in the input folder(s) are not read (" in capsys.readouterr().err


def test_parquet_and_csv_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["প্রশ্ন"], "completion": ["উত্তর"]}), tmp_path / "c.parquet")
    (tmp_path / "c.csv").write_text("instruction,input,output\nপ্রশ্ন,,উত্তর\n", encoding="utf-8")
    messages = [{"role": "user", "content": "প্রশ্ন"}, {"role": "assistant", "content": "উত্তর"}]
    import csv
    with open(tmp_path / "m.csv", "w", encoding="utf-8", newline="") as fh:  # a messages list as JSON text in a cell
        csv.writer(fh).writerows([["messages"], [json.dumps(messages, ensure_ascii=False)]])
    for name in ("c.parquet", "c.csv", "m.csv"):
        assert read_conversations([str(tmp_path / name)]) == [messages], name


def test_columns_and_keys_that_parquet_fills_with_none_are_absent(tmp_path):
    """Parquet gives every row every column and every message every key any message has, as
    None: a `weight` on one answer made the others "weight must be 0 or 1, got None", and a file
    mixing shapes (or ShareGPT's from/value beside role/content) read none of them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": [{"role": "user", "content": "নমস্কার"}, {"role": "assistant", "content": "হ্যালো", "weight": 0},
                          {"role": "user", "content": "আবার"}, {"role": "assistant", "content": "হ্যাঁ"}]},
            {"instruction": "অনুবাদ করো", "output": "ঠিক আছে"},
            {"conversations": [{"from": "human", "value": "প্রশ্ন"}, {"role": "assistant", "content": "উত্তর"}]}]
    table = pa.Table.from_batches([pa.RecordBatch.from_struct_array(pa.array(rows))])  # the union of the columns
    pq.write_table(table, tmp_path / "mixed.parquet")
    assert pq.read_table(tmp_path / "mixed.parquet").to_pylist()[1]["messages"] is None  # what a reader gets
    assert read_conversations([str(tmp_path / "mixed.parquet")]) == [
        rows[0]["messages"][:1] + [{"role": "assistant", "content": "হ্যালো", "weight": 0}] + rows[0]["messages"][2:],
        [{"role": "user", "content": "অনুবাদ করো"}, {"role": "assistant", "content": "ঠিক আছে"}],
        [{"role": "user", "content": "প্রশ্ন"}, {"role": "assistant", "content": "উত্তর"}]]


def test_the_embedded_set_reads_whole(embedded):
    assert len(embedded) == 391
    assert sum(len(c) > 2 for c in embedded) >= 60  # multi-turn and system messages


def test_loss_is_on_the_answers_and_their_end_exactly(tokenizer, embedded):
    """On every real conversation: the ids with loss decode to the answers (each with its
    leading space) and one end-of-document token per answer, and nothing else carries loss."""
    for conversation in embedded:
        ids, loss = encode(tokenizer, conversation)
        assert ids.tolist() == encode_chat(tokenizer, conversation, add_generation_prompt=False)[0]
        answers = [m["content"] for m in conversation if m["role"] == "assistant"]
        trained = ids[loss].tolist()
        assert trained.count(tokenizer.eod_id) == len(answers)
        pieces, current = [], []
        for i in trained:
            if i == tokenizer.eod_id:
                pieces.append(tokenizer.decode(current))
                current = []
            else:
                current.append(i)
        assert pieces == [" " + normalize(a) for a in answers]
        # every position without loss is context: the opening token, labels, system and user text
        assert not loss[0] and ids[0] == tokenizer.eod_id
    ids, loss = encode(tokenizer, embedded[0], loss_on="all")
    assert loss[1:].all() and not loss[0]


def test_packing_keeps_every_trained_token_and_pads_little(tokenizer, embedded):
    encoded = [encode(tokenizer, c) for c in embedded]
    for block_size in (128, 256):
        rows, targets, stats = pack(encoded, block_size, tokenizer.eod_id)
        assert rows.shape == targets.shape == (stats.blocks, block_size + 1)
        assert stats.padding_share < 0.10, (block_size, stats)
        assert stats.tokens + stats.padding == rows.size
        # whole conversations are found whole in some block, and targets are the ids where trained
        kept = targets != IGNORE
        assert np.array_equal(targets[kept], rows[kept])
        whole = [e for e in encoded if len(e[0]) <= block_size + 1]
        assert stats.split == len(encoded) - len(whole)
        flat = rows.reshape(-1).tolist()
        assert all(_contains(flat, e[0].tolist()) for e in whole[:40])
    # with room for everything, the trained tokens are exactly those of the conversations
    rows, targets, stats = pack(encoded, 4096, tokenizer.eod_id)
    assert stats.split == stats.dropped == 0
    assert stats.trained == sum(int(loss.sum()) for _, loss in encoded)


def _contains(flat: list[int], part: list[int]) -> bool:
    n = len(part)
    return any(flat[i:i + n] == part for i in range(len(flat) - n + 1))


def test_a_conversation_longer_than_a_block_is_cut_with_every_token_predicted_once(tokenizer):
    answer = " ".join(["একটি লম্বা উত্তর"] * 60)
    conversation = [{"role": "user", "content": "প্রশ্ন"}, {"role": "assistant", "content": answer}]
    ids, loss = encode(tokenizer, conversation)
    rows, targets, stats = pack([(ids, loss)], 32, tokenizer.eod_id)
    assert len(ids) > 33 and stats.split == 1 and stats.dropped == 0
    # each trained token of the conversation is a target exactly once
    assert stats.trained == int(loss.sum())
    pieces = sorted(rows.tolist(), key=lambda r: _index_of(ids.tolist(), r))
    assert pieces[0][:5] == ids[:5].tolist()  # the first piece starts the conversation


def _index_of(ids: list[int], row: list[int]) -> int:
    for i in range(len(ids)):
        if ids[i:i + 8] == row[:8]:
            return i
    return len(ids)


def test_pieces_with_no_answer_are_dropped_and_counted(tokenizer):
    question = " ".join(["খুব লম্বা একটি প্রশ্ন"] * 60)
    conversation = [{"role": "user", "content": question}, {"role": "assistant", "content": "হ্যাঁ"}]
    rows, targets, stats = pack([encode(tokenizer, conversation)], 32, tokenizer.eod_id)
    assert stats.split == 1 and stats.dropped >= 1
    assert (targets != IGNORE).any(axis=1).all()  # every block placed trains on something


def test_validation_is_by_conversation_and_seeded(embedded):
    a = split_conversations(embedded, 0.1, seed=3)
    b = split_conversations(embedded, 0.1, seed=3)
    c = split_conversations(embedded, 0.1, seed=4)
    assert a == b and a["val"] != c["val"]
    assert len(a["val"]) == 39 and len(a["train"]) == 352
    assert not {json.dumps(x) for x in a["val"]} & {json.dumps(x) for x in a["train"]}
    with pytest.raises(UserError, match="at least 2 different conversations"):
        split_conversations(embedded[:1], 0.1, 0)
    with pytest.raises(UserError, match="at least 2 different conversations .* got 1 among 5 rows"):
        split_conversations(embedded[:1] * 5, 0.1, 0)


def test_copies_of_a_conversation_never_straddle_train_and_validation(embedded):
    """Merged instruction sets repeat rows: all copies of one conversation go to one side (a copy
    in validation would score an answer the model trained on), for every seed; without copies
    the split is the one the distinct conversations alone give."""
    rows = [c for c in embedded[:6] for _ in range(12)]  # 6 conversations, each 12 times
    for seed in range(20):
        split = split_conversations(rows, 0.1, seed)
        assert not {json.dumps(x) for x in split["val"]} & {json.dumps(x) for x in split["train"]}
        assert split["val"] and split["train"] and len(split["val"]) + len(split["train"]) == 72
    assert split_conversations(embedded, 0.1, 3)["val"] == [embedded[i] for i in sorted(
        np.random.default_rng([3, 2]).permutation(len(embedded))[:39].tolist())]


def test_conversation_data_identity_changes_with_the_data(tokenizer, tmp_path):
    files = [str(p) for p in instruction_files()]
    a = ConversationData(files, tokenizer, 64)
    b = ConversationData(files[:-1], tokenizer, 64)
    assert a.meta["splits"]["train"]["sha256"] != b.meta["splits"]["train"]["sha256"]
    assert ConversationData(files, tokenizer, 64).meta["splits"] == a.meta["splits"]
    assert "conversations to train on" in a.summary()


def test_the_block_sampler_visits_every_row_once_per_epoch():
    rows = np.arange(10 * 5).reshape(10, 5)
    targets = rows.copy()
    sampler = BlockSampler(rows, targets, batch_size=2, seed=1, grad_accum=1)
    seen = [sampler.get(step)[0][:, 0].tolist() for step in range(5)]
    first = sorted(x // 5 for batch in seen for x in batch)
    assert first == list(range(10))  # one epoch: every row once
    again = BlockSampler(rows, targets, batch_size=2, seed=1, grad_accum=1)
    assert all(torch.equal(sampler.get(s)[0], again.get(s)[0]) for s in range(12))  # a pure function
    x, y = sampler.get(0)
    assert x.shape == y.shape == (2, 4)
    # two ranks with half the batch see exactly what one process sees
    whole = BlockSampler(rows, targets, batch_size=4, seed=1)
    halves = [BlockSampler(rows, targets, batch_size=2, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for step in range(6):
        assert torch.equal(whole.get(step)[0], torch.cat([h.get(step)[0] for h in halves]))
    # validation: every row exactly once, whatever eval_iters says
    val = BlockSampler(rows, targets, batch_size=3, seed=1, split="val")
    assert sorted(int(v) for x, _ in val.eval_batches(1) for v in x[:, 0] // 5) == list(range(10))


def test_alpaca_json_and_compressed_jsonl(tmp_path):
    # Alpaca's own file is one JSON list (alpaca_data.json); hub dumps come as .jsonl.gz.
    import gzip

    rows = [{"instruction": "প্রশ্ন", "input": "", "output": "উত্তর"}]
    (tmp_path / "alpaca_data.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "chats.jsonl.gz").write_bytes(gzip.compress(write_jsonl(tmp_path / "c.jsonl", rows).read_bytes()))
    expected = [[{"role": "user", "content": "প্রশ্ন"}, {"role": "assistant", "content": "উত্তর"}]]
    for name in ("alpaca_data.json", "chats.jsonl.gz"):
        assert read_conversations([str(tmp_path / name)]) == expected


def test_an_answer_with_weight_0_is_context_not_trained(tokenizer):
    """OpenAI's fine-tuning rows mark an answer not to learn with "weight": 0 (a wrong answer the
    user then corrects): it was trained on like the others."""
    wrong, right = "ভুল উত্তর", "ঠিক উত্তর"
    row = {"messages": [{"role": "user", "content": "প্রশ্ন"}, {"role": "assistant", "content": wrong, "weight": 0},
                        {"role": "user", "content": "আবার"}, {"role": "assistant", "content": right, "weight": 1}]}
    conversation = as_conversation(row, "r")
    ids, loss = encode(tokenizer, conversation)
    assert tokenizer.decode(ids[loss].tolist()) == " " + right
    assert tokenizer.decode(ids.tolist()).count(wrong) == 1  # still the context of the next turn
    unweighted = as_conversation({"messages": [{**m} for m in row["messages"][:2]] + row["messages"][2:]}, "r")
    assert [m.get("weight") for m in unweighted] == [None, 0, None, None]  # weight 1 is the default, not kept


def test_a_tokenizer_that_cannot_write_the_conversations_is_refused(tmp_path):
    """A character-level model of English text fine-tuned on Bangla conversations trained on
    <unk> tokens, and on English ones lost the chat labels, with no word said."""
    from banglaslm.data.conversations import ConversationData
    from banglaslm.tokenizer import Tokenizer

    english = Tokenizer.build_char(set("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ?.:\n"))
    rows = [{"messages": [{"role": "user", "content": f"who art thou {i}?"}, {"role": "assistant", "content": "I am."}]}
            for i in range(4)]
    path = write_jsonl(tmp_path / "en.jsonl", rows)
    with pytest.raises(UserError, match=r"cannot write the chat template's role labels .*ব্যবহারকারী.*unknown tokens"):
        ConversationData([str(path)], english, block_size=64)
    bangla_labels = Tokenizer.build_char(set("abcdefghijklmnopqrstuvwxyz ?.:\n" + "".join(
        normalize(label) for label in ("ব্যবহারকারী", "সহকারী", "নির্দেশ"))))
    bn_rows = [{"messages": [{"role": "user", "content": "কেমন আছ?"}, {"role": "assistant", "content": f"ভালো {i}"}]}
               for i in range(4)]
    with pytest.raises(UserError, match="cannot represent these conversations: .*unknown tokens"):
        ConversationData([str(write_jsonl(tmp_path / "bn.jsonl", bn_rows))], bangla_labels, block_size=64)


def test_the_val_loss_is_over_the_answers_whatever_the_training_loss_is_on(tokenizer):
    """With loss_on=all the validation split was scored on every token too, so the ablation's
    validation loss (BENCHMARKS.md) could not be compared with the answers-only run's."""
    files = [str(f) for f in instruction_files()]
    answers = ConversationData(files, tokenizer, 64)
    every = ConversationData(files, tokenizer, 64, loss_on="all")
    assert every.meta["splits"]["val"] == answers.meta["splits"]["val"]
    assert every.meta["splits"]["train"]["trained"] > 1.5 * answers.meta["splits"]["train"]["trained"]
