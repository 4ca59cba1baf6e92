"""JSONL instruction data: records, chat templates, --mask-prompt, bad records, packing, sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest
from chat_util import CHATML, chat_tokenizer, write_jsonl

from anetrain.errors import DataError, TokenizerError
from anetrain.formats.chat_template import chat_template
from anetrain.formats.data import IGNORE, embedded_dataset, eval_windows
from anetrain.formats.instruct import Encoder, is_jsonl, open_jsonl
from anetrain.formats.packing import Example, PackedSampler, pack
from anetrain.formats.tokenizer import read_tokenizer

CHATS = [
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
     {"role": "assistant", "content": "hello there"}, {"role": "user", "content": "how are you?"},
     {"role": "assistant", "content": "fine, thanks!"}],
    [{"role": "user", "content": "what is two plus two?"},
     {"role": "assistant", "content": "four."}],
    [{"role": "assistant", "content": "hi!"}, {"role": "user", "content": "hello"}],
    [{"role": "user", "content": "a story?"}, {"role": "assistant", "content": "once upon a time"},
     {"role": "tool", "content": "the end"}, {"role": "assistant", "content": "the end."}],
]  # fmt: skip


@pytest.fixture
def chat_dir(tmp_path):
    return chat_tokenizer(tmp_path / "tok")


def _encoder(tok_dir, mask_prompt: bool = True) -> Encoder:
    tok = read_tokenizer(tok_dir)
    return Encoder(tok, chat_template(tok), mask_prompt)


@pytest.mark.parametrize("messages", CHATS)
def test_assistant_mask_equals_transformers(chat_dir, messages):
    """Every assistant turn (not only the last) is exactly transformers' assistant-token mask of
    the same template ({% generation %} spans); the tokens are apply_chat_template's."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(chat_dir))
    want = hf.apply_chat_template(messages, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)  # fmt: skip
    ex = _encoder(chat_dir).example({"messages": messages})
    assert ex.ids.tolist() == list(want["input_ids"])
    assert ex.loss.astype(int).tolist() == list(want["assistant_masks"])
    assert sum(want["assistant_masks"]) > 0
    unmasked = _encoder(chat_dir, mask_prompt=False).example({"messages": messages})
    assert unmasked.loss.tolist() == [False] + [True] * (len(ex.ids) - 1)


def test_assistant_tokens_by_hand(chat_dir):
    """The masked-in tokens decode to the assistant turns, each with its end of turn; BOS
    comes from the template once (no second one added)."""
    tok = read_tokenizer(chat_dir)
    ex = _encoder(chat_dir).example({"messages": CHATS[0]})
    assert ex.ids[0] == tok.bos_id and ex.ids[1] != tok.bos_id
    spans, start = [], None
    for t, on in enumerate([*ex.loss.tolist(), False]):
        if on and start is None:
            start = t
        elif not on and start is not None:
            spans.append(tok.decode_all(ex.ids[start:t].tolist(), skip_special=False))
            start = None
    assert spans == ["hello there<|im_end|>\n", "fine, thanks!<|im_end|>\n"]


def test_prompt_completion_records(chat_dir):
    """With a chat template: a user prompt and an assistant completion. Without one (llama2.c's
    tokenizer): BOS + prompt + completion + EOS, the loss on the completion and EOS."""
    rec = {"prompt": "what is two plus two?", "completion": "four."}
    chat = _encoder(chat_dir).example(rec)
    messages = [{"role": "user", "content": rec["prompt"]},
                {"role": "assistant", "content": rec["completion"]}]  # fmt: skip
    same = _encoder(chat_dir).example({"messages": messages})
    assert np.array_equal(chat.ids, same.ids) and np.array_equal(chat.loss, same.loss)
    tok = read_tokenizer(embedded_dataset() / "tokenizer.bin")
    plain = Encoder(tok, chat_template(tok), mask_prompt=True)
    rec = {"prompt": "Once upon a time", "completion": " there was a cat."}
    ex = plain.example(rec)
    assert ex.ids.tolist() == tok.encode(rec["prompt"] + rec["completion"], bos=True, eos=True)
    assert ex.ids[0] == tok.bos_id and ex.ids[-1] == tok.eos_id
    n = len(tok.encode(rec["prompt"], bos=True))
    assert ex.loss.tolist() == [False] * n + [True] * (len(ex.ids) - n)
    assert tok.decode_all(ex.ids[ex.loss].tolist()).strip() == "there was a cat."
    text = plain.example({"text": "The end."})
    assert text.ids.tolist() == tok.encode("The end.", bos=True, eos=True)
    assert text.loss.tolist() == [False] + [True] * (len(text.ids) - 1)  # no mask on text


def test_a_template_reaching_for_python_internals_is_refused(tmp_path):
    d = chat_tokenizer(tmp_path / "tok", template="{{ ''.__class__.__mro__ }}")
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": CHATS[1]}])
    with pytest.raises(TokenizerError) as e:
        open_jsonl(data, d, mask_prompt=False, skip_bad=True)  # not a bad record: the template
    assert str(e.value) == (f"{d / 'tokenizer_config.json'}: the chat template reaches for Python "
                            "internals (access to attribute '__class__' of 'str' object is "
                            "unsafe.); refused")  # fmt: skip


def test_template_forms_and_errors(tmp_path):
    """HF's list of named templates (the "default" one); a syntax error; chat_template.jinja
    wins over tokenizer_config.json as in transformers; no template at all."""
    named = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": CHATML}]
    tok = read_tokenizer(chat_tokenizer(tmp_path / "a", template=named))
    assert chat_template(tok).render(CHATS[1], False).startswith("<s><|im_start|>user\n")
    d = chat_tokenizer(tmp_path / "b", template="{% for %}")
    with pytest.raises(TokenizerError, match=f"{d / 'tokenizer_config.json'}: the chat template "
                       "does not parse \\(line 1: "):  # fmt: skip
        chat_template(read_tokenizer(d))
    (d / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    assert chat_template(read_tokenizer(d)).render(CHATS[1], True) == "what is two plus two?"
    assert chat_template(read_tokenizer(chat_tokenizer(tmp_path / "c", template=None))) is None


def test_messages_need_a_chat_template(tmp_path):
    d = chat_tokenizer(tmp_path / "tok", template=None)
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "hi"}, {"messages": CHATS[1]}])
    with pytest.raises(DataError) as e:
        open_jsonl(data, d, mask_prompt=False, skip_bad=True)
    assert str(e.value) == (f"{data}:2: a chat (\"messages\") record, but the tokenizer has no "
                            "chat template; pass a --tokenizer that has one")  # fmt: skip


def test_unstable_template_prefixes_are_an_error(tmp_path):
    """A template that renders the last message differently: the conversation up to an
    assistant turn does not tokenize as a prefix of the whole, so --mask-prompt refuses it."""
    last = ("{% for m in messages %}{{ m['content'] }}{% if loop.last %} the end{% endif %}"
            "{% endfor %}")  # fmt: skip
    d = chat_tokenizer(tmp_path / "tok", template=last)
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": CHATS[1]}])
    assert open_jsonl(data, d, mask_prompt=False, skip_bad=False).train.records == 1
    with pytest.raises(DataError) as e:
        open_jsonl(data, d, mask_prompt=True, skip_bad=False)
    assert str(e.value) == (f"{data}:1: the chat template of {d / 'tokenizer_config.json'} "
                            "renders a conversation's beginning into tokens that are not a "
                            "prefix of the whole conversation's; --mask-prompt cannot find the "
                            "assistant tokens; fix them, or pass --skip-bad-records to leave "
                            "them out")  # fmt: skip


BAD = [
    ("{not json", "not JSON (Expecting property name enclosed in double quotes at column 2)"),
    ("[1, 2]", "expected a JSON object, got a list"),
    ({"input": "x"}, 'keys [\'input\']: a record is {"text"}, {"prompt", "completion"} or '
     '{"messages"}'),
    ({"prompt": "x"}, 'missing "completion" (a record is {"text"}, {"prompt", "completion"} or '
     '{"messages"})'),
    ({"text": "x", "prompt": "y"}, 'keys [\'prompt\', \'text\'] mix record kinds: a record is '
     '{"text"}, {"prompt", "completion"} or {"messages"}'),
    ({"text": "x", "extra": 1}, 'keys [\'extra\', \'text\']: a record is {"text"}, {"prompt", '
     '"completion"} or {"messages"}'),
    ({"text": 5}, '"text" must be a string, got a number'),
    ({"text": " "}, '"text" is empty'),
    ({"prompt": "x", "completion": ""}, '"completion" is empty'),
    ({"messages": []}, '"messages" must be a non-empty list, got a list'),
    ({"messages": "hi"}, '"messages" must be a non-empty list, got a string'),
    ({"messages": ["hi"]}, "message 1: expected an object, got a string"),
    ({"messages": [{"role": "user"}]}, 'message 1: missing "content"'),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hi"}]},
     "message 2: unknown role 'bot' (one of system, user, assistant, tool)"),
    ({"messages": [{"role": "user", "content": None}]},
     'message 1: "content" must be a string, got null'),
    ({"messages": [{"role": "user", "content": ""}]}, 'message 1: "content" is empty'),
    (b"\xff\xfe", "not UTF-8 (byte 1)"),
]  # fmt: skip


@pytest.mark.parametrize("record, problem", BAD, ids=[p.split(" (")[0] for _, p in BAD])
def test_every_bad_record_kind_is_reported_with_file_and_line(chat_dir, tmp_path, record, problem):
    data = tmp_path / "train.jsonl"
    raw = record if isinstance(record, bytes) else \
        (record if isinstance(record, str) else json.dumps(record)).encode()  # fmt: skip
    data.write_bytes(b'{"text": "hi"}\n\n' + raw + b"\n")
    with pytest.raises(DataError) as e:
        open_jsonl(data, chat_dir, mask_prompt=False, skip_bad=False)
    assert str(e.value) == f"{data}:3: {problem}; fix them, or pass --skip-bad-records to leave " \
        "them out"  # fmt: skip
    kept = open_jsonl(data, chat_dir, mask_prompt=False, skip_bad=True).train
    assert (kept.records, kept.skipped) == (1, 1)


def test_template_refusals_and_many_bad_records(tmp_path):
    """raise_exception in the template is a bad record; several: the first and how many."""
    strict = ("{% for m in messages %}{% if m['role'] == 'system' %}"
              "{{ raise_exception('no system messages') }}{% endif %}{{ m['content'] }}"
              "{% endfor %}")  # fmt: skip
    d = chat_tokenizer(tmp_path / "tok", template=strict)
    data = write_jsonl(tmp_path / "train.jsonl", [{"messages": CHATS[0]}, "nope", {"text": "hi"},
                                                  [1]])  # fmt: skip
    with pytest.raises(DataError) as e:
        open_jsonl(data, d, mask_prompt=False, skip_bad=False)
    assert str(e.value) == (f"{data}:1: the chat template refused it: no system messages (and 2 "
                            "more bad records); fix them, or pass --skip-bad-records to leave "
                            "them out")  # fmt: skip
    only_bad = write_jsonl(tmp_path / "bad.jsonl", ["nope"])
    with pytest.raises(DataError, match=f"^{only_bad}: no records \\(1 bad ones skipped\\)$"):
        open_jsonl(only_bad, d, mask_prompt=False, skip_bad=True)


def test_open_jsonl_directory_and_file(chat_dir, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    write_jsonl(d / "train.jsonl", [{"messages": c} for c in CHATS])
    write_jsonl(d / "valid.jsonl", [{"prompt": "hi", "completion": "hello"}])
    ds = open_jsonl(d, chat_dir, mask_prompt=True, skip_bad=False)
    assert is_jsonl(d) and is_jsonl(d / "train.jsonl") and not is_jsonl(embedded_dataset())
    assert ds.train.records == 4 and ds.val.records == 1 and ds.test is None
    assert ds.vocab_size == read_tokenizer(chat_dir).vocab_size and ds.max_id < ds.vocab_size
    assert open_jsonl(d / "train.jsonl", chat_dir, True, False).val is None
    with pytest.raises(DataError, match="JSONL data needs a tokenizer: pass --tokenizer PATH"):
        open_jsonl(d, None, mask_prompt=True, skip_bad=False)


# ----------------------------------------------------------------------------
# packing


def _ex(n: int, first: int = 1, start: int = 10) -> Example:
    loss = np.zeros(n, dtype=bool)
    loss[first:] = True
    return Example(np.arange(start, start + n, dtype=np.int32), loss)


def test_packing_greedy_in_order_with_ignore_targets():
    S = 8  # windows of 9 tokens
    exs = [_ex(4, start=10), _ex(5, first=3, start=20), _ex(3, start=30), _ex(12, start=40),
           _ex(2, first=2, start=60), _ex(6, start=70)]  # fmt: skip
    p = pack(exs, S)
    assert (p.examples, p.truncated, p.dropped) == (5, 1, 1)  # 12 > 9 cut; [60, 61] no loss
    assert p.x.dtype == p.y.dtype == np.int32 and p.x.shape == p.y.shape == (4, S)
    I = IGNORE  # noqa: E741
    # window 0: [10 11 12 13][20 21 22 23 24]: 20 follows 13 (IGNORE), 21, 22 masked prompt
    assert p.x[0].tolist() == [10, 11, 12, 13, 20, 21, 22, 23]
    assert p.y[0].tolist() == [11, 12, 13, I, I, I, 23, 24]
    # window 1: [30 31 32] + padding (the 9 tokens of example 4 do not fit beside it)
    assert p.x[1].tolist() == [30, 31, 0, 0, 0, 0, 0, 0]  # an example's last token: a target
    assert p.y[1].tolist() == [31, 32] + [I] * 6
    assert p.x[2].tolist() == list(range(40, 48)) and p.y[2].tolist() == list(range(41, 49))
    assert p.x[3].tolist() == [70, 71, 72, 73, 74, 0, 0, 0]
    assert p.y[3].tolist() == [71, 72, 73, 74, 75, I, I, I]
    assert p.loss_fraction == pytest.approx(float((p.y != I).sum()) / p.y.size)


def test_packed_eval_windows_and_summary(chat_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": c} for c in CHATS] + ["bad"])
    split = open_jsonl(data, chat_dir, mask_prompt=True, skip_bad=True).train
    windows = list(eval_windows(split, 64))
    p = split.packed(64)
    assert len(windows) == p.x.shape[0] and all(np.array_equal(x, p.x[i]) and
                                                np.array_equal(y, p.y[i])
                                                for i, (x, y) in enumerate(windows))  # fmt: skip
    assert len(list(eval_windows(split, 64, cap=1))) == 1
    # every assistant token of every conversation is a target exactly once
    want = sorted(t for c in CHATS for t in _encoder(chat_dir).example({"messages": c})
                  .ids[_encoder(chat_dir).example({"messages": c}).loss].tolist())  # fmt: skip
    assert sorted(p.y[p.y != IGNORE].tolist()) == want
    assert split.summary(64) == (f"4 examples in {p.x.shape[0]} windows, 1 bad records skipped; "
                                 f"{p.loss_fraction:.0%} of targets with loss")  # fmt: skip
    assert "1 truncated to --seq" in split.summary(16)


def _packed(n: int, S: int = 4):
    return pack([_ex(S + 1, start=100 * i) for i in range(n)], S)


def test_packed_sampler_epochs_resume_and_ranks():
    """Every window once per epoch in a seeded order; a saved state continues the stream
    bit-identically; rank r of N takes item r of each group of N of the one global stream."""
    p = _packed(5)
    s = PackedSampler(p, seed=3, name="t")
    firsts = [int(s.next()[0][0]) // 100 for _ in range(15)]
    assert all(sorted(firsts[e * 5 : e * 5 + 5]) == list(range(5)) for e in range(3))
    assert firsts[:5] != firsts[5:10]  # a new permutation each epoch
    for k in (0, 3, 5, 7):
        a = PackedSampler(p, seed=3, name="t")
        for _ in range(k):
            a.next()
        b = PackedSampler(p, seed=99, name="t")
        b.set_state(json.loads(json.dumps(a.state())))  # through a checkpoint's JSON header
        assert [int(b.next()[0][0]) // 100 for _ in range(8)] == firsts[k : k + 8]
    ranks = [PackedSampler(p, seed=3, name="t", rank=r, ranks=3) for r in range(3)]
    got = [int(ranks[r].next()[0][0]) // 100 for _ in range(4) for r in range(3)]
    assert got == firsts[:12]
    with pytest.raises(DataError, match="t: the run was trained on 6 windows, this data packs "
                       "into 5; the data or its tokenizer changed"):  # fmt: skip
        PackedSampler(p, seed=3, name="t").set_state(PackedSampler(_packed(6), 3, "u").state())
    with pytest.raises(DataError, match="t: the run was trained on a token stream"):
        PackedSampler(p, seed=3, name="t").set_state(np.random.PCG64(1).state)


# ----------------------------------------------------------------------------
# a training run's setup (the training itself waits for the IGNORE-aware loss)


def _setup(argv):
    from anetrain.run import setup_run
    from anetrain.train import build_parser

    return setup_run(build_parser().parse_args(argv))


def test_a_jsonl_run_records_what_its_resume_needs(chat_dir, tmp_path):
    """The RunState keeps the data, the tokenizer, --mask-prompt and --skip-bad-records; the
    resumed run reopens the same windows and continues the same sampler stream."""
    from anetrain.formats import checkpoint

    d = tmp_path / "data"
    d.mkdir()
    write_jsonl(d / "train.jsonl", [{"messages": c} for c in CHATS * 3] + ["bad"])
    write_jsonl(d / "valid.jsonl", [{"text": "once upon a time"}])
    out = tmp_path / "run"
    args = ["--data", str(d), "--tokenizer", str(chat_dir), "--mask-prompt",
            "--skip-bad-records", "--seq", "32", "--steps", "5", "--out", str(out)]  # fmt: skip
    run = _setup(args)
    st = run.state
    assert (st.data, st.tokenizer, st.mask_prompt, st.skip_bad_records) == \
        (str(d.resolve()), str(chat_dir.resolve()), True, True)  # fmt: skip
    assert run.cfg.vocab_size == read_tokenizer(chat_dir).vocab_size
    sampler = run.data.train.sampler(32, run.tc.seed + 1)
    for _ in range(3):
        sampler.next()
    st.step, st.sampler = 1, sampler.state()
    checkpoint.save(out / checkpoint.FILE_NAME, checkpoint.Checkpoint(st, run.params))
    want = [sampler.next() for _ in range(6)]
    resumed = _setup(["--resume", str(out)])
    assert (resumed.state.mask_prompt, resumed.state.skip_bad_records) == (True, True)
    again = resumed.data.train.sampler(32, resumed.tc.seed + 1)
    again.set_state(resumed.state.sampler)
    for x, y in want:
        gx, gy = again.next()
        assert np.array_equal(gx, x) and np.array_equal(gy, y)
    assert IGNORE in np.concatenate([y for _, y in want])


def test_jsonl_flags_and_errors(chat_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "hi there"}] * 4)
    with pytest.raises(DataError, match=f"^{data}: JSONL data needs a tokenizer"):
        _setup(["--data", str(data), "--out", str(tmp_path / "a")])
    with pytest.raises(DataError, match="^--val-data: applies to token files, not to the JSONL"):
        _setup(["--data", str(data), "--tokenizer", str(chat_dir), "--val-data", str(data),
                "--out", str(tmp_path / "b")])  # fmt: skip
    with pytest.raises(DataError, match="^--mask-prompt: applies to JSONL data .*, not to the "
                       "embedded dataset$"):  # fmt: skip
        _setup(["--mask-prompt", "--out", str(tmp_path / "c")])
    with pytest.raises(DataError, match="^--tokenizer is empty"):
        _setup(["--data", str(data), "--tokenizer", "", "--out", str(tmp_path / "d")])
    run = _setup(["--data", str(data), "--tokenizer", str(chat_dir), "--seq", "16",
                  "--out", str(tmp_path / "e")])  # fmt: skip
    assert run.data.val is None and run.state.mask_prompt is None
    assert run.data.train.summary(16) == "4 examples in 1 windows; 75% of targets with loss"


def test_a_masked_chat_run_trains_resumes_and_evaluates(chat_dir, tmp_path, capsys):
    """End to end with --mask-prompt on chat records: cpu and sim train on the assistant tokens
    alone (the loss is the mean over them), a resume continues bit-identically, and eval on the
    run reports its last val_loss."""
    import json

    from anetrain.eval import main as eval_main
    from anetrain.formats import checkpoint
    from anetrain.train import main as train_main

    d = tmp_path / "data"
    d.mkdir()
    write_jsonl(d / "train.jsonl", [{"messages": c} for c in CHATS * 4])
    write_jsonl(d / "valid.jsonl", [{"messages": c} for c in CHATS])
    base = ["--data", str(d), "--tokenizer", str(chat_dir), "--mask-prompt", "--seq", "32",
            "--threads", "1", "--seed", "3", "--lr-decay-steps", "6"]  # fmt: skip

    def run(*extra):
        assert train_main([*base, *map(str, extra)]) == 0, capsys.readouterr()

    run("--steps", 6, "--backend", "cpu", "--out", tmp_path / "once")
    banner = capsys.readouterr().out
    assert "% of targets with loss" in banner
    run("--steps", 3, "--backend", "cpu", "--out", tmp_path / "twice", "--quiet")
    assert train_main(["--resume", str(tmp_path / "twice"), "--steps", "6", "--quiet"]) == 0
    once, twice = (checkpoint.load(checkpoint.resolve(tmp_path / n)) for n in ("once", "twice"))
    assert np.array_equal(once.params.flat, twice.params.flat)
    rows = [json.loads(line) for line in (tmp_path / "once" / "metrics.jsonl").read_text()
            .splitlines()]  # fmt: skip
    assert rows[-1]["loss"] < rows[0]["loss"]
    capsys.readouterr()
    assert eval_main([str(tmp_path / "once"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == rows[-1]["val_loss"]
    run("--steps", 2, "--backend", "sim", "--out", tmp_path / "sim", "--quiet")
    sim = [json.loads(line) for line in (tmp_path / "sim" / "metrics.jsonl").read_text()
           .splitlines()]  # fmt: skip
    assert sim[0]["loss"] == pytest.approx(rows[0]["loss"], rel=1e-2)
