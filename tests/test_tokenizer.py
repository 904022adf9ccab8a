import random

from transformers import AutoTokenizer

from sorl.tasks.arithmetic import ArithmeticTask
from sorl.tokenizer import ARITHMETIC_ALPHABET, build_char_tokenizer


def _task_strings() -> list[str]:
    """Many samples of every format the task emits, with all ops and malformed critiques."""
    task = ArithmeticTask(ops="+-*", num_operands=4, min_operands=2, digits=3, num_train=500, num_eval=50)
    rng = random.Random(0)
    out = [p + t for p, t in task.sft_examples(300, seed=0)]
    for q in task.eval_questions():
        wrong = task.inject_error(q, rng)
        for response in (task.solution(q), wrong, "", "garbage"):
            out.append(task.refinement_prompt(q, response, task.critique(q, response)) + task.solution(q))
    return out


def test_alphabet_small_and_covers_task():
    assert len(ARITHMETIC_ALPHABET) == len(set(ARITHMETIC_ALPHABET)) and len(ARITHMETIC_ALPHABET) + 3 < 100
    emitted = set("".join(_task_strings()))
    assert {" ", "\n", "*", "|", "?", ";", "V"} <= emitted
    assert emitted <= set(ARITHMETIC_ALPHABET)


def test_special_ids_and_settings():
    tok = build_char_tokenizer()
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids(ARITHMETIC_ALPHABET[0]) == 3
    assert len(tok) == len(ARITHMETIC_ALPHABET) + 3
    assert tok.padding_side == "left"
    assert tok.bos_token is None


def test_one_token_per_char_no_bos_eos():
    tok = build_char_tokenizer()
    text = "Q:12+34-56\nS:12+34=46; A"
    ids = tok(text).input_ids
    assert len(ids) == len(text)
    assert tok.convert_ids_to_tokens(ids) == list(text)
    assert tok.eos_token_id not in ids and tok.unk_token_id not in ids


def test_unknown_chars_and_left_padding():
    tok = build_char_tokenizer()
    assert tok("1é2").input_ids == [tok.convert_tokens_to_ids("1"), 2, tok.convert_tokens_to_ids("2")]
    batch = tok(["1", "123"], padding=True)
    assert batch.input_ids[0][:2] == [0, 0] and batch.attention_mask[0] == [0, 0, 1]


def test_round_trip_task_strings():
    tok = build_char_tokenizer()
    for text in _task_strings():
        ids = tok(text).input_ids
        assert len(ids) == len(text) and tok.unk_token_id not in ids
        assert tok.decode(ids + [tok.eos_token_id, tok.pad_token_id], skip_special_tokens=True) == text


def test_save_load_round_trip(tmp_path):
    tok = build_char_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == tok.get_vocab()
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2)
    assert loaded.padding_side == "left"
    for text in _task_strings()[:100] + [" ?\n ok"]:
        ids = loaded(text).input_ids
        assert ids == tok(text).input_ids
        assert loaded.decode(ids, skip_special_tokens=True) == text


def test_custom_alphabet():
    tok = build_char_tokenizer("ab ")
    assert len(tok) == 6
    assert tok.decode(tok("ab ba").input_ids) == "ab ba"
    assert tok("c").input_ids == [2]
