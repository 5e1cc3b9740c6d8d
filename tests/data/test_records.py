"""Fine-tuning data intake: every format and container → the same messages; clear errors otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diji.data.records import conversation_from_record, load_conversations
from diji.errors import DijiError

WANT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "add 2 and 3"},
        {"role": "assistant", "content": "5"}]
RECORDS = {
    "messages": {"messages": WANT},
    "sharegpt": {"conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "add 2 and 3"},
                                   {"from": "gpt", "value": "5"}]},
    "alpaca": {"system": "be brief", "instruction": "add", "input": "2 and 3", "output": "5"},
    "prompt_response": {"system": "be brief", "prompt": "add 2 and 3", "response": "5"},
}


@pytest.mark.parametrize("fmt", list(RECORDS))
def test_every_format_gives_the_same_messages(fmt: str) -> None:
    got = conversation_from_record(RECORDS[fmt])
    want = [dict(m) for m in WANT]
    if fmt == "alpaca":
        want[1]["content"] = "add\n\n2 and 3"
    assert got == want


def test_sharegpt_tool_turns_and_alpaca_history() -> None:
    rec = {"conversations": [{"from": "human", "value": "weather?"}, {"from": "function_call", "value": "{\"f\": 1}"},
                             {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "It is sunny."}]}
    assert [m["role"] for m in conversation_from_record(rec)] == ["user", "assistant", "tool", "assistant"]
    rec = {"instruction": "and now?", "output": "b", "history": [["first?", "a"]]}
    assert [m["content"] for m in conversation_from_record(rec)] == ["first?", "a", "and now?", "b"]
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                          {"role": "assistant", "content": "yo"}]}
    assert conversation_from_record(parts)[0]["content"] == "hi"


def _write_all(root: Path) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [RECORDS["messages"]] * 3
    out = {}
    out["jsonl"] = root / "a.jsonl"
    out["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    out["json"] = root / "alpaca.json"
    out["json"].write_text(json.dumps([RECORDS["alpaca"]] * 3))
    out["parquet"] = root / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), out["parquet"])
    out["csv"] = root / "p.csv"
    out["csv"].write_text("system,prompt,response\n" + "be brief,add 2 and 3,5\n" * 3)
    try:
        import datasets
    except ImportError:  # the same layout written by hand: an arrow stream + state.json + dataset_info.json
        folder = root / "disk"
        folder.mkdir()
        table = pa.Table.from_pylist([RECORDS["sharegpt"]] * 3)
        with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
            w.write_table(table)
        (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
        (folder / "dataset_info.json").write_text("{}")
    else:
        folder = root / "disk"
        datasets.Dataset.from_list([RECORDS["sharegpt"]] * 3).save_to_disk(str(folder))
    out["save_to_disk"] = folder
    return out


def test_every_container_is_read(tmp_path: Path) -> None:
    files = _write_all(tmp_path)
    formats = {"jsonl": "messages", "json": "alpaca", "parquet": "messages", "csv": "prompt_response",
               "save_to_disk": "sharegpt"}
    for name, path in files.items():
        intake = load_conversations(path)
        assert intake.format == formats[name], name
        assert len(intake.conversations) == 3 and intake.conversations[0][-1] == WANT[-1], name


def test_column_mapping_and_clear_errors(tmp_path: Path) -> None:
    p = tmp_path / "qa.jsonl"
    p.write_text(json.dumps({"question": "add 2 and 3", "answer": "5", "id": 7}) + "\n")
    with pytest.raises(DijiError, match=r"matches no SFT format \(fields found: answer, id, question\)"):
        load_conversations(p)
    intake = load_conversations(p, columns=("prompt=question", "response=answer"))
    assert intake.conversations[0] == WANT[1:]
    with pytest.raises(DijiError, match="unknown SFT data extension '.txt'"):
        (tmp_path / "x.txt").write_text("hello")
        load_conversations(tmp_path / "x.txt")
    with pytest.raises(DijiError, match="not a `datasets.save_to_disk` folder"):
        load_conversations(tmp_path)
    with pytest.raises(DijiError, match="format is alpaca"):
        (tmp_path / "m.jsonl").write_text(json.dumps(RECORDS["messages"]) + "\n")
        load_conversations(tmp_path / "m.jsonl", fmt="alpaca")
    with pytest.raises(DijiError, match="'field=column'"):
        load_conversations(p, columns=("question",))


def test_sharegpt_tool_turns_render(small_tokenizer) -> None:
    from diji.data.chat import render

    rec = {"conversations": [{"from": "human", "value": "weather?"}, {"from": "function_call", "value": "get()"},
                             {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "It is sunny."}]}
    ids, mask = render(conversation_from_record(rec), small_tokenizer)
    assert len(ids) == len(mask) and sum(mask) > 0
