"""The synthetic task, the corpus, the tokenizer and JSONL validation."""

import json
import re

import pytest
from transformers import AutoTokenizer

from r1lab.data.arithmetic import is_test_question, sample_problems
from r1lab.data.corpus import CorpusMix, completion_text, documents
from r1lab.errors import DataError
from r1lab.data.jsonl import read_pairs, read_qa_jsonl, read_sft_jsonl
from r1lab.data.tasks import ArithmeticTask
from r1lab.data.templates import render
from r1lab.models.tokenizer import TAGS, train_tokenizer


def solve(question: str) -> int:
    """An independent solver: '7+8*4 mod 10' -> (7 + 8*4) % 10."""
    s, op, k, n = re.fullmatch(r"(\d)([+-])(\d)\*(\d) mod 10", question).groups()
    total = int(s) + (1 if op == "+" else -1) * int(k) * int(n)
    return total % 10


def test_answers_are_right():
    for p in sample_problems(0, 300, split="train") + sample_problems(0, 100, split="test"):
        assert int(p["answer"]) == solve(p["question"])


def test_train_and_test_never_overlap():
    test = {p["question"] for p in sample_problems(0, 120, split="test")}
    train = {p["question"] for p in sample_problems(0, 20000, split="train")}
    assert len(test) == 120                        # distinct
    assert not (test & train)
    assert all(is_test_question(q, 0.15) for q in test)
    assert not any(is_test_question(q, 0.15) for q in train)


def split_key(question: str) -> str:
    """The text a question's split is decided on: its English wording."""
    if number := re.fullmatch(r"用汉字写(\d+)", question):
        return f"Write {number[1]} in words"
    if listing := re.fullmatch(r"列出(\d)个(\d+)到(\d+)之间的(偶数|奇数)", question):
        k, low, high, parity = listing.groups()
        return f"List {k} {'even' if parity == '偶数' else 'odd'} numbers between {low} and {high}"
    return question.replace(" 模 ", " mod ")


def test_corpus_holds_no_test_question():
    questions = [prompt.rsplit("User: ", 1)[1].split("\n")[0]
                 for prompt, _ in documents(0, 3000, CorpusMix(), "r1-compact", languages=("en", "zh"))]
    assert len(set(questions)) > 500                                    # a real variety of questions
    assert {"模" in q for q in questions} == {True, False}              # both languages
    general = [split_key(q) for q in questions if "mod" not in split_key(q)]
    assert len(general) == 240                                          # 8% non-reasoning
    assert {q.split()[0] for q in general} == {"Write", "List"}
    assert not any(is_test_question(split_key(q), 0.15) for q in questions)   # none from the test split


def test_languages_mix_inside_worked_solutions():
    docs = documents(0, 3000, CorpusMix(), "r1-compact", languages=("en", "zh"))
    worked = [c for _, c in docs if "=" in c]
    mixed = [c for c in worked if "left" in c and "还剩" in c]
    assert 0.45 < len(mixed) / len(worked) < 0.55                       # mix_languages 0.5
    assert all(re.match(r" <think>\S+ (\d left|还剩\d), ", c) for c in mixed)   # the first step in one language
    none = documents(0, 3000, CorpusMix(mix_languages=0.0), "r1-compact", languages=("en", "zh"))
    assert not any("left" in c and "还剩" in c for _, c in none)


def test_same_seed_same_data_other_seed_other_data():
    task = ArithmeticTask(kind="arithmetic")
    assert task.sample_train(0, 5, 10) == task.sample_train(0, 5, 10)
    assert task.sample_train(0, 5, 10) != task.sample_train(0, 6, 10)
    assert task.test_examples(0) == task.test_examples(0)


def test_corpus_kinds():
    import random
    p = {"question": "3+9*2 mod 10", "answer": "1", "steps": [(2, 3, "+", 9, 2), (1, 2, "+", 9, 1)]}
    rng = random.Random(0)
    assert completion_text(p, "worked", rng, 0.3) == " <think>3+9=2 1 left, 2+9=1 0 left</think> <answer>1</answer>"
    assert completion_text(p, "malformed", rng, 0.3).endswith("</think> The answer is 1.")
    slipped = completion_text(p, "slip", rng, 0.3)
    assert slipped.startswith(" <think>3+9=") and "<answer>1</answer>" not in slipped
    direct = [completion_text(p, "direct", random.Random(i), 0.0) for i in range(20)]
    assert all(d.startswith(" <think></think> <answer>") for d in direct)
    assert not any("<answer>1</answer>" in d for d in direct)     # direct_correct = 0: always wrong


def test_tokenizer_is_deterministic_and_loads_with_autotokenizer(tmp_path, tokenizer):
    docs = documents(0, 800, CorpusMix(), "r1-compact")
    again = train_tokenizer([p + c for p, c in docs], 512)
    assert again.get_vocab() == tokenizer.get_vocab()
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = render("r1-compact", "7+8*4 mod 10") + " <think>7+8=5 3 left</think> <answer>9</answer>"
    ids = loaded(text)["input_ids"]
    assert loaded.decode(ids) == text                                   # lossless round trip
    for tag in TAGS:                                                    # each tag is one token
        assert len(loaded(tag, add_special_tokens=False)["input_ids"]) == 1
    digits = loaded.convert_ids_to_tokens(loaded("1234", add_special_tokens=False)["input_ids"])
    assert digits == ["1", "2", "3", "4"]
    chat = loaded.apply_chat_template([{"role": "user", "content": "2+2*2 mod 10"}],
                                      tokenize=False, add_generation_prompt=True)
    assert chat == "User: 2+2*2 mod 10\nAssistant:"
    assert loaded.eos_token == "<|endoftext|>" and loaded.pad_token == "<|pad|>"


@pytest.mark.parametrize("line,message", [
    ('{"question": "q"}', "line 2: field 'answer': missing"),
    ('{"question": "q", "answer": [1]}', "line 2: field 'answer': expected text or a number"),
    ('not json', "line 2: not valid JSON"),
    ('[1, 2]', "line 2: expected a JSON object"),
])
def test_bad_jsonl_names_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "ok", "answer": 3}\n' + line + "\n")
    with pytest.raises(DataError) as e:
        read_qa_jsonl(path, "question", "answer")
    assert str(path) in str(e.value) and message.replace("line 2", f"{path}:2") in str(e.value)


def test_jsonl_reads_numbers_and_skips_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"q": "a?", "a": 3, "lang": "en"}\n\n{"q": "b?", "a": "#### 4"}\n')
    assert read_qa_jsonl(path, "q", "a") == [{"question": "a?", "answer": "3", "lang": "en"},
                                             {"question": "b?", "answer": "#### 4"}]   # other fields kept


@pytest.mark.parametrize("line,message", [
    ('{"prompt": "p"}', "line 2: field 'completion': missing"),
    ('{"prompt": "p", "completion": 3}', "line 2: field 'completion': expected text"),
    ('{"messages": "hi"}', "line 2: field 'messages': expected a list of messages"),
    ('{"messages": [{"role": "user"}]}', "line 2: field 'content': missing"),
    ('{"messages": [{"role": "user", "content": "q"}]}', "line 2: field 'messages': must end with an assistant"),
    ('{"messages": [7]}', "line 2: field 'messages[0]': expected an object"),
])
def test_bad_sft_rows_name_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "sft.jsonl"
    path.write_text('{"prompt": "p", "completion": "c", "lang": "zh"}\n' + line + "\n")
    with pytest.raises(DataError) as e:
        read_sft_jsonl(path)
    assert message.replace("line 2", f"{path}:2") in str(e.value)


def test_sft_rows_of_both_shapes_keep_their_fields(tmp_path):
    path = tmp_path / "sft.jsonl"
    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "id": 7}
    path.write_text(json.dumps({"prompt": "p", "completion": "c", "lang": "zh"}) + "\n" + json.dumps(chat) + "\n")
    assert read_sft_jsonl(path) == [{"prompt": "p", "completion": "c", "lang": "zh"}, chat]


def test_read_pairs_both_shapes(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"prompt": "Q", "chosen": "a", "rejected": "b", "category": "general"}) + "\n\n"
                 + json.dumps({"instruction": "Name a colour.", "input": "", "output": "red", "chosen": "blue",
                               "rejected": "x"}) + "\n")
    rows = read_pairs(p)
    assert rows[0] == {"prompt": "Q", "chosen": "a", "rejected": "b", "category": "general"}
    assert rows[1]["prompt"].endswith("### Instruction:\nName a colour.\n\n### Response:\n")
    assert "### Input" not in rows[1]["prompt"] and rows[1]["chosen"] == "blue"
    arr = tmp_path / "p.json"
    arr.write_text(json.dumps([{"instruction": "Rewrite.", "input": "hi", "chosen": "Hi.", "rejected": "hi"}]))
    assert "### Input:\nhi\n\n" in read_pairs(arr)[0]["prompt"]

@pytest.mark.parametrize("line, msg", [('{"prompt": "Q", "chosen": "a"}', "p.jsonl:1: field 'rejected': missing"),
                                       ('{"prompt": "Q", "chosen": 3, "rejected": "b"}', "field 'chosen': expected text"),
                                       ('{"chosen": "a", "rejected": "b"}', "field 'instruction': missing"),
                                       ('[1]', "p.jsonl:1: expected a JSON object")])
def test_read_pairs_errors_name_line_and_field(tmp_path, line, msg):
    p = tmp_path / "p.jsonl"
    p.write_text(line + "\n")
    with pytest.raises(DataError, match=msg.replace("(", r"\(")):
        read_pairs(p)


GOOD = b'{"question": "ok", "answer": 3}\n'
HOSTILE_FILES = {
    "latin-1 bytes": (GOOD + '{"question": "caf\xe9", "answer": 1}\n'.encode("latin-1"), ":2: not UTF-8 (byte 0xe9"),
    "UTF-16": ('{"question": "q", "answer": 1}\n'.encode("utf-16"), ":1: the file is UTF-16"),
    "lone surrogate": (GOOD + b'{"question": "\\ud800", "answer": 1}\n', ":2: text holds a lone surrogate"),
    "deep nesting": (GOOD + b'{"question": ' + b"[" * 100_000 + b"]" * 100_000 + b', "answer": 1}\n',
                     ":2: JSON nested too deeply"),
    "10 MB line": (GOOD + b'{"question": "' + b"x" * 10_000_000 + b'", "answer": 1}\n', ":2: line longer than"),
    "NUL bytes": (GOOD + b"\x00" * 64 + b"\n", ":2: not valid JSON"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_FILES))
def test_a_hostile_data_file_is_one_error_naming_file_and_line(tmp_path, name):
    content, message = HOSTILE_FILES[name]
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as e:
        read_qa_jsonl(path, "question", "answer")
    assert f"{path}{message}" in str(e.value)


def test_a_utf8_byte_order_mark_is_read_as_nothing(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD)
    assert read_qa_jsonl(path, "question", "answer") == [{"question": "ok", "answer": "3"}]


def test_bad_rows_are_skipped_and_counted_when_asked(tmp_path):
    from r1lab.data.jsonl import skipping_bad_rows
    path = tmp_path / "d.jsonl"
    path.write_bytes(GOOD + b'{"question": "", "answer": 1}\n' + b'{"question": "' + b"x" * 5_000_000 + b'"}\n'
                     + b'not json\n' + b'{"question": "last", "answer": 2}\n')
    with pytest.raises(DataError, match=":2: field 'question': empty"):
        read_qa_jsonl(path, "question", "answer")                      # the default: the first bad row stops
    said = []
    with skipping_bad_rows(said.append):
        rows = read_qa_jsonl(path, "question", "answer")
    assert [r["question"] for r in rows] == ["ok", "last"]             # the 5 MB line is skipped whole
    assert said == [f"{path}: skipped 3 bad row(s) of 5 (bad_rows: skip); the first: {path}:2: field 'question': empty"]
    path.write_bytes(b"not json\n")
    with skipping_bad_rows(said.append), pytest.raises(DataError, match="holds no examples"):
        read_qa_jsonl(path, "question", "answer")


def test_a_run_with_bad_rows_skip_logs_the_count_and_runs(tmp_path, qwen_dir):
    from r1lab.config import load_config
    from r1lab.pipeline import run
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "1+1", "answer": "2"}\n{"question": 3}\n{"question": "2+2", "answer": "4"}\n')
    config = tmp_path / "c.yaml"
    config.write_text(f"name: t\nbad_rows: skip\ntask: {{kind: jsonl, train_path: {data}, test_path: {data}}}\n"
                      f"stages:\n  - {{kind: eval, name: e, model: {qwen_dir}, samples: 1, general: false,"
                      f" sampling: {{max_new_tokens: 4}}}}\n")
    said = []
    out = run(load_config(str(config)), tmp_path / "run", log=said.append)
    assert f"{data}: skipped 1 bad row(s) of 3 (bad_rows: skip); the first: {data}:2: field 'answer': missing" in said
    assert json.loads((out / "stages/0-e/eval.json").read_text())["n_questions"] == 2
