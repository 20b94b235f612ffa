"""--data beyond JSONL: parquet, arrow and JSON files, save_to_disk folders, hub ids (through a stand-in for
datasets.load_dataset: no network), and TRL's preference format (plain, conversational, implicit prompt).
Every form of the same rows gives the same pairs as the JSONL they were made from; a bad row is refused
with its source, its index and the reason, before any model loads."""
import json
import re

import datasets
import pytest
from trl.data_utils import maybe_extract_prompt

from spot_fast import data_sources
from spot_fast import train as train_module
from spot_fast.data import DataError, implicit_prompt, load_pairs
from spot_fast.models import ASSETS, BUILTIN_MODEL, load_tokenizer

MAX_LENGTH = 256  # the bundled answers are cut, so truncation takes part in the comparison


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(BUILTIN_MODEL)


@pytest.fixture(scope="module")
def rows():
    return [json.loads(line) for line in (ASSETS / "pairs.jsonl").read_text().splitlines()][:24]


def as_tuples(pairs):
    return [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in pairs]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def conversational(row):
    """A SPoT row in TRL's conversational preference format."""
    return {"prompt": [{"role": "user", "content": row["question"]}],
            "chosen": [{"role": "assistant", "content": row["gemini_corrected_answer"]}],
            "rejected": [{"role": "assistant", "content": row["original_answer"]}]}


def implicit(row):
    """TRL's implicit-prompt variant: each answer is the whole conversation, no prompt field."""
    user = {"role": "user", "content": row["question"]}
    return {"chosen": [user, {"role": "assistant", "content": row["gemini_corrected_answer"]}],
            "rejected": [user, {"role": "assistant", "content": row["original_answer"]}]}


def test_parquet_arrow_json_and_saved_folders_give_the_jsonl_pairs(tmp_path, tokenizer, rows):
    """Half the rows name the prompt 'prompt', half 'question': a table holds both columns, None where a row
    lacks one, and such a row still reads as its JSON line."""
    rows = [{("prompt" if k == "question" and i % 2 else k): v for k, v in row.items()} for i, row in enumerate(rows)]
    expected = as_tuples(load_pairs(write_jsonl(tmp_path / "pairs.jsonl", rows), tokenizer, MAX_LENGTH)[0])
    assert len(expected) == len(rows) and any(len(c) < len(r) or len(c) > len(r) for _, c, r in expected)
    table = datasets.Dataset.from_list([{"question": None, "prompt": None, **row} for row in rows])
    table.to_parquet(str(tmp_path / "pairs.parquet"))
    table.to_json(str(tmp_path / "pairs.json"))
    datasets.DatasetDict({"train": table, "test": table.select(range(4))}).save_to_disk(str(tmp_path / "saved"))
    table.save_to_disk(str(tmp_path / "saved-one"))
    [arrow] = (tmp_path / "saved-one").glob("*.arrow")
    for source in ("pairs.parquet", "pairs.json", "saved", "saved-one", arrow):
        got, stats = load_pairs(tmp_path / source, tokenizer, MAX_LENGTH)
        assert as_tuples(got) == expected, source
        assert [p.line for p in got] == list(range(len(rows)))  # the row index, from 0
    test_split = load_pairs(tmp_path / "saved", tokenizer, MAX_LENGTH, split="test")[0]
    assert as_tuples(test_split) == expected[:4]
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'saved'}: no split 'dev' (it has 'train', 'test')")):
        load_pairs(tmp_path / "saved", tokenizer, MAX_LENGTH, split="dev")


def test_trl_formats_give_the_same_pairs(tmp_path, tokenizer, rows):
    """TRL's conversational format, in JSONL and parquet, and its implicit prompt (whole conversations in
    chosen/rejected; and plain text whose common prefix is the prompt), as our own fields give them."""
    expected = as_tuples(load_pairs(write_jsonl(tmp_path / "spot.jsonl", rows), tokenizer, MAX_LENGTH)[0])
    trl_rows = [conversational(row) for row in rows]
    assert as_tuples(load_pairs(write_jsonl(tmp_path / "conv.jsonl", trl_rows), tokenizer, MAX_LENGTH)[0]) == expected
    datasets.Dataset.from_list(trl_rows).to_parquet(str(tmp_path / "conv.parquet"))
    assert as_tuples(load_pairs(tmp_path / "conv.parquet", tokenizer, MAX_LENGTH)[0]) == expected
    implicit_rows = [implicit(row) for row in rows]
    datasets.Dataset.from_list(implicit_rows).save_to_disk(str(tmp_path / "implicit"))
    assert as_tuples(load_pairs(tmp_path / "implicit", tokenizer, MAX_LENGTH)[0]) == expected
    # a dataset that adds a string prompt column beside whole conversations: TRL takes the conversations' prefix
    with_prompt = [{"prompt": "ignored", **row} for row in implicit_rows]
    assert as_tuples(load_pairs(write_jsonl(tmp_path / "mixed.jsonl", with_prompt), tokenizer, MAX_LENGTH)[0]) == expected
    # plain text with the prompt inside both answers (TRL's prompt is their common prefix of characters, up to
    # the space before the first difference)
    plain = [{"prompt": "Q: 2 + 5?", "chosen": " Seven.", "rejected": " Eight."}]
    plain_implicit = [{"chosen": "Q: 2 + 5? Seven.", "rejected": "Q: 2 + 5? Eight."}]
    assert (as_tuples(load_pairs(write_jsonl(tmp_path / "plain.jsonl", plain), tokenizer, MAX_LENGTH)[0])
            == as_tuples(load_pairs(write_jsonl(tmp_path / "plain-implicit.jsonl", plain_implicit), tokenizer, MAX_LENGTH)[0]))


@pytest.mark.parametrize("record", [
    {"chosen": "Q: sky? It is blue.", "rejected": "Q: sky? It is green."},
    {"chosen": "abc", "rejected": "abd"},
    {"chosen": [{"role": "user", "content": "sky?"}, {"role": "assistant", "content": "blue"}],
     "rejected": [{"role": "user", "content": "sky?"}, {"role": "assistant", "content": "green"}]},
    {"chosen": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"},
                {"role": "user", "content": "again"}, {"role": "assistant", "content": "b"}],
     "rejected": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"},
                  {"role": "user", "content": "again"}, {"role": "assistant", "content": "c"}]},
    {"prompt": "p", "chosen": "c", "rejected": "r"},
    {"prompt": [{"role": "user", "content": "p"}], "chosen": [{"role": "assistant", "content": "c"}],
     "rejected": [{"role": "assistant", "content": "r"}]},
    {"prompt": "ignored", "chosen": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "c"}],
     "rejected": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "r"}]},
], ids=["text", "text-no-space", "conversation", "multi-turn", "explicit-text", "explicit-conversation", "string-prompt-beside-conversation"])
def test_the_implicit_prompt_is_trls(record):
    assert implicit_prompt(dict(record), "x") == {**record, **maybe_extract_prompt(dict(record))}


def test_an_implicit_prompt_that_is_empty_is_refused(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"chosen": "yes", "rejected": "no"}])
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:1: no prompt: there is no 'prompt' field and 'chosen' "
                                        r"and 'rejected' share no leading text"):
        load_pairs(path, tokenizer, MAX_LENGTH)


def test_a_hub_id_is_loaded_with_its_split_and_configuration(monkeypatch, tokenizer, rows, tmp_path):
    """No network here: datasets.load_dataset is replaced by a stand-in that records its call and returns
    the rows (the README says how to train from a hub dataset offline: a save_to_disk folder)."""
    calls = []

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return datasets.Dataset.from_list([conversational(row) for row in rows])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert data_sources.kind("trl-lib/ultrafeedback_binarized") == "hub"
    got = load_pairs("trl-lib/ultrafeedback_binarized", tokenizer, MAX_LENGTH, split="train_prefs", config="default")[0]
    assert calls == [("trl-lib/ultrafeedback_binarized", "default", "train_prefs")]
    assert as_tuples(got) == as_tuples(load_pairs(write_jsonl(tmp_path / "p.jsonl", rows), tokenizer, MAX_LENGTH)[0])
    with pytest.raises(DataError, match=r"data/pairs\.jsonl: no such file or folder"):
        data_sources.kind("data/pairs.jsonl")  # a path, not a hub id, although written owner/name


@pytest.mark.parametrize("make, where", [
    (lambda path: datasets.Dataset.from_list(
        [{"prompt": "a", "chosen": "b", "rejected": "c"}] * 2 + [{"prompt": "a", "chosen": " ", "rejected": "c"}]
    ).to_parquet(str(path / "bad.parquet")), "bad.parquet row 2: field 'chosen' is empty"),
    (lambda path: datasets.DatasetDict({"train": datasets.Dataset.from_list(
        [{"prompt": [{"role": "user", "content": "a"}], "chosen": [{"role": "assistant", "content": "b"}],
          "rejected": [{"role": "assistant", "content": "c"}]},
         {"prompt": [{"role": "wizard", "content": "a"}], "chosen": [{"role": "assistant", "content": "b"}],
          "rejected": [{"role": "assistant", "content": "c"}]}])}).save_to_disk(str(path / "bad")),
     "bad[train] row 1: field 'prompt', message 1: role 'wizard' is not one of"),
    (lambda path: datasets.Dataset.from_list([{"prompt": "a", "chosen": "b"}]).to_parquet(str(path / "bad.parquet")),
     "bad.parquet row 0: missing field: expected one of 'original_answer', 'rejected'"),
], ids=["empty answer", "unknown role in a saved folder", "missing field"])
def test_a_bad_row_is_refused_with_its_index_before_any_model_loads(tmp_path, capsys, make, where):
    make(tmp_path)
    data = tmp_path / where.split()[0].removesuffix("[train]")
    code = train_module.main(["--data", str(data), "--output-dir", str(tmp_path / "out"),
                              "--max-length", "64"])
    assert code == 1
    error = capsys.readouterr().err
    assert f"{tmp_path / where}" in error, error
    assert not (tmp_path / "out").exists()  # nothing written, no model loaded (that comes after the data)


def test_a_folder_without_a_dataset_is_named_as_such(tmp_path, tokenizer):
    with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path))}: is a directory with no dataset in it"):
        load_pairs(tmp_path, tokenizer, MAX_LENGTH)
