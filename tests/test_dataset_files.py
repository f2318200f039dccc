"""Data files through Hugging Face datasets: parquet, CSV and save_to_disk folders, streamed, with
the JSONL readers' field mapping and checks (a bad row names its file, row and field)."""

import pytest

datasets = pytest.importorskip("datasets")

from r1lab.data.jsonl import read_pairs, read_qa_jsonl, read_sft_jsonl  # noqa: E402
from r1lab.data.tasks import JsonlTask  # noqa: E402
from r1lab.errors import DataError  # noqa: E402

QA = [{"q": f"What is {i} + 1?", "a": str(i + 1), "lang": "en"} for i in range(6)]


def write(rows, path):
    ds = datasets.Dataset.from_list(rows)
    if path.suffix == ".parquet":
        ds.to_parquet(str(path))
    elif path.suffix == ".csv":
        ds.to_csv(str(path), index=False)
    else:
        ds.save_to_disk(str(path))
    return path


@pytest.mark.parametrize("name", ["qa.parquet", "qa.csv", "qa_saved"])
def test_a_task_reads_questions_from_each_form_with_its_field_mapping(tmp_path, name):
    path = write(QA, tmp_path / name)
    task = JsonlTask(kind="jsonl", train_path=str(path), test_path=str(path), question_field="q",
                     answer_field="a", n_test=4, verifier="accuracy")
    test = task.test_examples(0)
    assert [r["question"] for r in test] == [r["q"] for r in QA[:4]]
    assert test[2]["answer"] == "3" and test[2]["lang"] == "en"
    assert all(r in [{"question": q["q"], "answer": q["a"], "lang": "en"} for q in QA]
               for r in task.sample_train(0, 1, 5))


def test_a_bad_row_names_the_file_row_and_field(tmp_path):
    rows = [dict(r) for r in QA]
    rows[4]["q"] = "   "
    path = write(rows, tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet: row 4: field 'q': empty"):
        read_qa_jsonl(path, "q", "a")
    assert len(read_qa_jsonl(path, "q", "a", limit=3)) == 3          # streamed: rows past the limit are not read
    with pytest.raises(DataError, match=r"row 0: field 'question': missing"):
        read_qa_jsonl(path, "question", "a")


def test_sft_and_preference_rows_from_dataset_files(tmp_path):
    chat = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": f"hello {i}"}]}
            for i in range(3)]
    sft = read_sft_jsonl(write(chat, tmp_path / "sft.parquet"))
    assert sft[1]["messages"][1] == {"role": "assistant", "content": "hello 1"}
    pairs = [{"prompt": "p", "chosen": "good", "rejected": "bad"}] * 2
    assert read_pairs(write(pairs, tmp_path / "pairs.csv"))[0]["chosen"] == "good"


def test_unreadable_files_and_split_folders_are_one_clear_error(tmp_path):
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"broken.parquet: cannot read it as parquet"):
        read_qa_jsonl(broken, "q", "a")
    splits = tmp_path / "splits"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(QA)}).save_to_disk(str(splits))
    with pytest.raises(DataError, match="a dataset with splits \\(train\\); name one split's folder"):
        read_qa_jsonl(splits, "q", "a")
