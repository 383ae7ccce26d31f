"""The chat template and the interactive chat loop, driven by scripted input."""

from __future__ import annotations

import pytest

from banglaslm.chat import chat_loop
from banglaslm.chat_template import chat_stops, clean_answer, encode_chat, render_chat
from banglaslm.config import SamplingParams
from banglaslm.errors import UserError
from banglaslm.generation.engine import Engine
from banglaslm.runfolder import load_model
from banglaslm.text import normalize


@pytest.fixture(scope="module")
def loaded(trained_run):
    return load_model(trained_run)


class Script:
    """read_line that returns scripted lines (then EOF), remembering the prompts it showed."""

    def __init__(self, lines):
        self.lines = list(lines)
        self.prompts = []

    def __call__(self, prompt=""):
        self.prompts.append(prompt)
        if not self.lines:
            raise EOFError
        line = self.lines.pop(0)
        if isinstance(line, BaseException):
            raise line
        return line


class Recorder:
    def __init__(self):
        self.parts = []

    def __call__(self, text):
        self.parts.append(text)

    @property
    def text(self):
        return "".join(self.parts)


class SpyEngine(Engine):
    """An engine that records each streamed prompt and its params."""

    def __init__(self, loaded):
        super().__init__(loaded.model, loaded.tokenizer)
        self.calls = []

    def stream(self, prompt, params=None, strip_leading=False):
        assert strip_leading  # the answer's leading whitespace is dropped: no stop string is looked for in it
        self.calls.append((prompt, params))
        return super().stream(prompt, params, strip_leading)


def test_render_chat_template():
    messages = [{"role": "system", "content": " ভদ্র হও। "}, {"role": "user", "content": "নমস্কার"},
                {"role": "assistant", "content": "নমস্কার!"}, {"role": "user", "content": "কেমন আছ?\nবলো"}]
    # bn-chat-2: an assistant turn ends with the end-of-document token (shown here as "|")
    assert render_chat(messages, end="|") == ("|নির্দেশ: ভদ্র হও।\nব্যবহারকারী: নমস্কার\nসহকারী: নমস্কার!|"
                                              "ব্যবহারকারী: কেমন আছ?\nবলো\nসহকারী:")
    assert render_chat([{"role": "user", "content": "hi"}], language="en") == "User: hi\nAssistant:"
    assert "\nব্যবহারকারী:" in chat_stops() and "\nUser:" in chat_stops("en")
    assert clean_answer("  উত্তর ") == "উত্তর "
    # the names clients and datasets use for the same roles, as the server and fine-tuning take them
    aliased = [{"role": "developer", "content": " ভদ্র হও। "}, {"role": "human", "content": "নমস্কার"},
               {"role": "gpt", "content": "নমস্কার!"}, {"role": "user", "content": "কেমন আছ?\nবলো"}]
    assert render_chat(aliased, end="|") == render_chat(messages, end="|")
    with pytest.raises(UserError):
        render_chat([{"role": "robot", "content": "x"}])
    with pytest.raises(UserError):
        render_chat([], language="xx")


def test_a_bad_setting_names_the_chat_commands_not_the_parameters():
    from banglaslm.chat import _apply_command
    from banglaslm.config import SamplingParams

    with pytest.raises(UserError) as caught:
        _apply_command(SamplingParams(), "temp", "-1")
    assert str(caught.value).startswith("/temp: ") and "/greedy on" in str(caught.value), caught.value
    assert "`" not in str(caught.value)
    # With greedy on, -1 was taken, and `/greedy off` was then refused for a temperature set earlier
    greedy = _apply_command(SamplingParams(), "greedy", "on")
    for name, value in (("temp", "-1"), ("topp", "2"), ("rep", "0")):
        with pytest.raises(UserError, match=f"^/{name}: "):
            _apply_command(greedy, name, value)
    assert _apply_command(_apply_command(greedy, "temp", "0.5"), "greedy", "off").temperature == 0.5
    with pytest.raises(UserError, match=r"^/topk takes a whole number of at least 1, or off \(no top-k\); got -5$"):
        _apply_command(SamplingParams(), "topk", "-5")  # it said "leave it out, None", the library's words


def test_settings_commands_answer_and_reset(loaded):
    engine = SpyEngine(loaded)
    out = Recorder()
    script = Script(["/temp 0.5", "/topk 20", "/topp 0.9", "/minp 0.05", "/rep 1.2", "/max 15", "/seed 3",
                     "/greedy on", "/greedy maybe", "/temp hot", "/topk -1", "/nope", "/help", "/settings",
                     "আমি বাংলায়\\", "গান গাই", "", "আবার বলো", "/reset", "নতুন কথা", "/quit", "never read"])
    history = chat_loop(loaded, read_line=script, write=out, engine=engine)
    assert script.lines == ["never read"]
    assert len(engine.calls) == 3
    prompts = [encode_chat(engine.tokenizer, m)[0] for m in (
        [{"role": "user", "content": "আমি বাংলায়\nগান গাই"}],
        [{"role": "user", "content": "নতুন কথা"}])]
    prompt, params = engine.calls[0]
    assert prompt == prompts[0]
    assert (params.temperature, params.top_k, params.top_p, params.min_p, params.repetition_penalty,
            params.max_new_tokens, params.seed, params.greedy) == (0.5, 20, 0.9, 0.05, 1.2, 15, 3, True)
    assert all(s in params.stop for s in chat_stops())
    assert "... " in script.prompts  # the continuation line
    # the second turn sees the first question and answer
    second = engine.tokenizer.decode(engine.calls[1][0])
    assert second.startswith(engine.tokenizer.decode(prompts[0]))
    assert second.endswith(normalize("ব্যবহারকারী: আবার বলো") + "\nসহকারী:")
    assert engine.calls[1][0].count(engine.tokenizer.eod_id) == 2  # the start, and the end of the first answer
    # /reset forgot both
    assert engine.calls[2][0] == prompts[1]
    assert [m["role"] for m in history] == ["user", "assistant"] and history[0]["content"] == "নতুন কথা"
    # greedy with a fixed seed: the answer is what the engine gives for that prompt
    expected = engine.generate_ids([engine.calls[2][0]], engine.calls[2][1])[0][0].text
    assert history[1]["content"] == clean_answer(expected)
    text = out.text
    assert "/greedy takes on or off" in text and "unknown command /nope" in text and "Commands:" in text
    assert text.count("error:") == 4  # bad values leave the settings as they were


def test_ctrl_c_stops_only_the_answer(loaded):
    engine = SpyEngine(loaded)
    state = {"raised": False, "pieces": 0}
    parts = []

    def write(text):
        parts.append(text)
        # The first piece of the first answer: Ctrl-C (after it was shown).
        if engine.calls and not state["raised"] and text and not text.endswith(": ") and "\n" not in text:
            state["pieces"] += 1
            state["raised"] = True
            raise KeyboardInterrupt

    params = SamplingParams(max_new_tokens=40, temperature=1.0, seed=4)
    script = Script(["একদিন সকালে", "তারপর কী হলো?"])
    history = chat_loop(loaded, read_line=script, write=write, params=params, engine=engine)
    assert state["raised"]
    assert "".join(parts).count("[stopped]") == 1
    assert len(engine.calls) == 2  # the chat went on to the next message
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert not loaded.model.training  # the interrupted generation restored the model's mode


def test_ctrl_c_twice_and_eof_at_the_prompt_end_the_chat(loaded):
    """One Ctrl-C at the prompt ended the chat and its history: one meant for an answer that had
    just ended (2 of 35 in a trial) lost the conversation."""
    engine, out = SpyEngine(loaded), Recorder()
    script = Script([KeyboardInterrupt(), "একদিন", KeyboardInterrupt(), KeyboardInterrupt(), "never read"])
    history = chat_loop(loaded, read_line=script, write=out, engine=engine, params=SamplingParams(max_new_tokens=2))
    assert len(engine.calls) == 1 and [m["role"] for m in history] == ["user", "assistant"]
    assert out.text.count("(Ctrl-C again, Ctrl-D or /quit ends the chat)") == 2 and script.lines == ["never read"]
    assert chat_loop(loaded, read_line=Script([]), write=out) == []
    history = chat_loop(loaded, read_line=Script([]), write=out, system="ভদ্র হও")
    assert history == [{"role": "system", "content": "ভদ্র হও"}]


def test_ctrl_c_before_the_answer_begins_stops_only_that_turn(loaded, monkeypatch):
    """Ctrl-C while the conversation is being encoded (the first turn's takes a moment) ended
    the whole chat; it stops that turn, as during the answer."""
    import banglaslm.chat as chat_module

    real, calls = chat_module.encode_chat, []

    def interrupted_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(chat_module, "encode_chat", interrupted_once)
    stops_made = []
    monkeypatch.setattr(chat_module, "chat_stops", lambda *a: stops_made.append(1) or ["\nব্যবহারকারী:"])
    out = Recorder()
    history = chat_loop(loaded, read_line=Script(["একদিন সকালে", "তারপর?"]), write=out,
                        params=SamplingParams(max_new_tokens=4, seed=1))
    assert out.text.count("[stopped]") == 1 and len(calls) == 2
    assert stops_made == [1]  # made once, before the first turn (they were made in it, outside its Ctrl-C guard)
    assert [m["content"] for m in history if m["role"] == "user"] == ["তারপর?"]


def test_a_byte_order_mark_before_the_first_command_keeps_it_a_command(loaded):
    """Piped from a file a Windows editor saved, the first line begins with U+FEFF: "/max 5" was
    sent to the model as a message, and the setting never changed."""
    engine = SpyEngine(loaded)
    script = Script(["\ufeff/max 5", "হ্যালো", "/quit"])
    chat_loop(loaded, read_line=script, write=Recorder(), engine=engine)
    [(prompt, params)] = engine.calls
    assert params.max_new_tokens == 5
    assert prompt == encode_chat(engine.tokenizer, [{"role": "user", "content": "হ্যালো"}])[0]


def test_what_a_trial_found_missing_in_the_terminal_chat(loaded):
    """/settings left out the penalties and said greedy=off at temperature 0; an answer the model
    ended at once printed a bare label; a message whose last line ended in \\ at the end of the
    input was dropped."""
    class Silent(SpyEngine):
        def stream(self, prompt, params=None, strip_leading=False):
            self.calls.append((prompt, params))
            yield from ()

    engine, out = Silent(loaded), Recorder()
    script = Script(["/temp 0", "/settings", "প্রথম কথা", "শেষ কথা\\"])
    history = chat_loop(loaded, read_line=script, write=out, engine=engine)
    settings = out.text.split("\n")[2]
    assert "presence_penalty=0.0 frequency_penalty=0.0" in settings and "greedy=on" in settings
    assert out.text.count("(no answer: the model ended it at once") == 2
    assert [m["content"] for m in history if m["role"] == "user"] == ["প্রথম কথা", "শেষ কথা"]


def test_a_system_prompt_from_the_command_line_and_from_slash_system(loaded, trained_run):
    """Fine-tuning trains on system messages, but chat had no way to give one."""
    engine = SpyEngine(loaded)
    script = Script(["প্রথম", "/system সংক্ষেপে উত্তর দাও", "দ্বিতীয়", "/reset", "তৃতীয়", "/system off", "চতুর্থ", "/quit"])
    out = Recorder()
    chat_loop(loaded, read_line=script, write=out, engine=engine, system="তুমি একজন সহকারী")
    wanted = [[{"role": "system", "content": "তুমি একজন সহকারী"}, {"role": "user", "content": "প্রথম"}],
              [{"role": "system", "content": "সংক্ষেপে উত্তর দাও"}, {"role": "user", "content": "দ্বিতীয়"}],
              [{"role": "system", "content": "সংক্ষেপে উত্তর দাও"}, {"role": "user", "content": "তৃতীয়"}],
              [{"role": "user", "content": "চতুর্থ"}]]
    assert [prompt for prompt, _ in engine.calls] == [encode_chat(engine.tokenizer, m)[0] for m in wanted]
    assert "(system prompt set; conversation cleared)" in out.text and "(system prompt off;" in out.text
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "banglaslm", "chat", str(trained_run), "--system", "তুমি একজন সহকারী",
                           "--greedy", "--max-new-tokens", "3"], input="নমস্কার\n/quit\n", capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "Type a message" in done.stdout and "সহকারী:" in done.stdout, done.stderr


def test_a_message_the_tokenizer_cannot_represent_is_named():
    """A T5-style tokenizer without byte fallback turns emoji and unseen letters into one unknown
    token; the chat said nothing, and the model answered something else than was typed."""
    import torch

    from banglaslm.config import ModelConfig
    from banglaslm.model import GPT
    from banglaslm.tokenizer import Tokenizer

    tokenizer = Tokenizer.build_char("আমি ভাত খাই। ব্যবহারকারী সহকারী: \n")
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=64, vocab_size=tokenizer.vocab_size))
    out = Recorder()
    chat_loop(None, Script(["আমি ভাত খাই", "আমি 😀 খাই Z"]), out,
              SamplingParams(max_new_tokens=2, seed=1), engine=Engine(model, tokenizer))
    notes = [line for line in out.text.splitlines() if "cannot represent" in line]
    assert notes == ["(note: your message holds characters the tokenizer cannot represent ('😀', 'Z'); the model "
                     "reads an unknown token in their place)"]


def test_what_a_second_trial_found_in_the_terminal_chat(loaded):
    """A message of only invisible characters went to the model as an empty turn; a piped file
    with Windows line ends broke the backslash continuation; /system alone cleared the system
    prompt and the conversation, and nothing showed the prompt; a conversation past the model's
    context lost its start without a word."""
    engine, out = SpyEngine(loaded), Recorder()
    long = "আমি ভাত খাই। " * loaded.config.model.block_size
    script = Script(["\u200b\u200b", "প্রথম লাইন\\\r", "দ্বিতীয় লাইন\r", "/system", "/settings", long, "আবার", "/quit"])
    history = chat_loop(loaded, read_line=script, write=out, engine=engine, system="ভদ্র হও",
                        params=SamplingParams(max_new_tokens=2, seed=1))
    wanted = [{"role": "system", "content": "ভদ্র হও"}, {"role": "user", "content": "প্রথম লাইন\nদ্বিতীয় লাইন"}]
    assert engine.calls[0][0] == encode_chat(engine.tokenizer, wanted)[0] and len(engine.calls) == 3
    assert history[0] == {"role": "system", "content": "ভদ্র হও"} and len(history) == 7
    assert "(system prompt: ভদ্র হও)" in out.text and "system prompt: ভদ্র হও\n" in out.text
    assert out.text.count("the conversation has outgrown the model's context of") == 1
