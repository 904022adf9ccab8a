"""Per-dataset evaluation: accuracy per evaluation set and their average, in the table and JSON."""

from lightning.pytorch import Trainer

from sorl.callbacks.evaluation import summary_json, summary_table
from sorl.evaluation import EvalMetrics

TRAINER = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)  # one process


def test_accuracy_per_set_and_the_mean_over_sets():
    metrics = EvalMetrics()
    metrics._add_dataset_sums("gen_acc", ["gsm8k", "gsm8k", "math500", ""], [1.0, 0.0, 1.0, 1.0])
    metrics._add_dataset_sums("gen_acc", ["gsm8k", "gsm8k"], [1.0, 1.0])
    metrics._add_dataset_sums("crit_acc", ["gsm8k", "gsm8k"], [1.0, 0.0])
    computed = metrics.compute(TRAINER)
    assert computed == {
        "eval/gen_acc/gsm8k": 0.75,
        "eval/gen_acc/math500": 1.0,
        "eval/gen_acc_avg": 0.875,  # the mean of the sets' accuracies, as in the paper's table
        "eval/crit_acc/gsm8k": 0.5,
        "eval/crit_acc_avg": 0.5,
    }
    assert metrics.compute(TRAINER) == {}  # reset after computing


def test_unnamed_questions_give_totals_only():
    metrics = EvalMetrics()
    metrics._add_dataset_sums("gen_acc", ["", ""], [1.0, 0.0])
    assert metrics.compute(TRAINER) == {}


def test_summary_has_a_row_per_set_and_the_old_keys():
    before = {"eval/gen_acc": 0.2, "eval/gen_acc/gsm8k": 0.3, "eval/gen_acc/amc23": 0.1, "eval/gen_acc_avg": 0.2}
    after = {"eval/gen_acc": 0.4, "eval/gen_acc/gsm8k": 0.5, "eval/gen_acc/amc23": 0.3, "eval/gen_acc_avg": 0.4,
             "eval/crit_acc": 0.6, "eval/crit_acc/gsm8k": 0.6, "eval/crit_acc_avg": 0.6}
    result = summary_json(before, after)
    assert result["gen_acc_before"] == 0.2 and result["crit_acc_after"] == 0.6 and result["crit_acc_before"] is None
    assert result["gen_acc_gsm8k_after"] == 0.5 and result["gen_acc_amc23_before"] == 0.1
    assert result["gen_acc_avg_before"] == 0.2 and result["crit_acc_avg_after"] == 0.6
    table = summary_table(before, after).splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in table if line and line.split()[0] in ("gsm8k", "amc23", "average")}
    assert rows == {
        "gsm8k": ["0.300", "0.500", "-", "0.600"],
        "amc23": ["0.100", "0.300", "-", "-"],
        "average": ["0.200", "0.400", "-", "0.600"],
    }
    assert "dataset" not in summary_table({"eval/gen_acc": 0.2}, {"eval/gen_acc": 0.3})
