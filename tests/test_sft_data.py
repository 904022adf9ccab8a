"""SFTDataModule's examples file: kinds repeated per epoch, and clear errors."""

import json

import pytest

from sorl.sft import SFTDataModule, read_examples
from sorl.tasks import ArithmeticTask


@pytest.fixture
def examples_file(tmp_path):
    rows = [
        {"prompt": "1+1", "target": "Answer: 2", "kind": "solution"},
        {"prompt": "check 1+1 = 3", "target": "Verdict: wrong", "kind": "critique"},
        {"prompt": "check 1+1 = 2", "target": "Verdict: right", "kind": "critique"},
        {"prompt": "2+2", "target": "Answer: 4"},  # a user's file: no kind
    ]
    path = tmp_path / "examples.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_repeats_count_each_kind(examples_file):
    assert read_examples(examples_file) == [
        ("1+1", "Answer: 2"), ("check 1+1 = 3", "Verdict: wrong"), ("check 1+1 = 2", "Verdict: right"), ("2+2", "Answer: 4"),
    ]
    examples = read_examples(examples_file, {"critique": 2, "solution": 0})
    assert examples == [
        ("check 1+1 = 3", "Verdict: wrong"), ("check 1+1 = 3", "Verdict: wrong"),
        ("check 1+1 = 2", "Verdict: right"), ("check 1+1 = 2", "Verdict: right"),
        ("2+2", "Answer: 4"),
    ]
    data = SFTDataModule(examples_file=examples_file, repeats={"critique": 3})
    data.setup("fit")
    assert len(data.examples) == 2 + 3 * 2


def test_repeats_errors(examples_file):
    with pytest.raises(ValueError, match="no row has: \\['refinement'\\]"):
        read_examples(examples_file, {"refinement": 2})
    with pytest.raises(ValueError, match="whole numbers >= 0"):
        SFTDataModule(examples_file=examples_file, repeats={"critique": -1})
    with pytest.raises(ValueError, match="a task's demonstrations have none"):
        SFTDataModule(task=ArithmeticTask(), repeats={"critique": 2})
