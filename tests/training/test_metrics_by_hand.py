"""field_f1 and classification_metrics against numbers computed by hand (fractions, not re-derived in code)."""

import pytest

from trainers.metrics import classification_metrics, field_f1


def test_field_f1_two_true_one_false_one_missed():
    gold = [{"date": "Friday", "time": "7pm"}, {"people": "4"}]
    pred = [{"date": "Friday", "time": "7pm"}, {"people": "5"}]
    # tp=2 (date, time), fp=1 (people 5), fn=1 (people 4)
    scores = field_f1(gold, pred)
    assert scores["precision_micro"] == pytest.approx(2 / 3)
    assert scores["recall_micro"] == pytest.approx(2 / 3)
    assert scores["f1_micro"] == pytest.approx(4 / 6)
    assert scores["f1_people"] == 0.0


def test_field_f1_one_field_perfect_another_zero():
    gold = [{"date": "Friday", "time": "7pm"}, {"date": "today", "time": "8pm"}]
    pred = [{"date": "Friday", "time": "9pm"}, {"date": "today"}]
    # date: tp=2 -> 1. time: tp=0, fp=1, fn=2 -> 0. micro: tp=2, fp=1, fn=2 -> 4/7
    scores = field_f1(gold, pred)
    assert scores["f1_date"] == 1.0
    assert scores["f1_time"] == 0.0
    assert scores["precision_micro"] == pytest.approx(2 / 3)
    assert scores["recall_micro"] == pytest.approx(2 / 4)
    assert scores["f1_micro"] == pytest.approx(4 / 7)


def test_field_f1_duplicate_values_count_per_example():
    gold = [{"date": "today"}] * 3
    pred = [{"date": "today"}, {"date": "today"}, {}]
    # tp=2, fn=1 -> F1 = 4/5
    assert field_f1(gold, pred)["f1_micro"] == pytest.approx(4 / 5)


def test_field_f1_a_value_from_another_example_does_not_match():
    gold = [{"time": "7pm"}, {"time": "8pm"}]
    pred = [{"time": "8pm"}, {"time": "7pm"}]
    # swapped: tp=0, fp=2, fn=2
    scores = field_f1(gold, pred)
    assert scores["f1_micro"] == 0.0
    assert scores["f1_time"] == 0.0


def test_field_f1_normalises_case_outer_punctuation_and_spaces_only():
    gold = [{"date": "Friday", "people": "New   York group", "time": "7:30"}]
    pred = [{"date": " friday! ", "people": "new york group.", "time": "7.30"}]
    # date and people match after normalising; "7:30" vs "7.30" differ inside -> tp=2, fp=1, fn=1
    scores = field_f1(gold, pred)
    assert scores["f1_date"] == 1.0
    assert scores["f1_people"] == 1.0
    assert scores["f1_time"] == 0.0
    assert scores["f1_micro"] == pytest.approx(4 / 6)


def test_field_f1_empty_predictions():
    scores = field_f1([{"date": "Friday"}, {"time": "7pm"}], [{}, {"time": "  "}])
    # a blank value is no prediction: tp=0, fp=0, fn=2
    assert scores == {"precision_micro": 0.0, "recall_micro": 0.0, "f1_micro": 0.0, "f1_date": 0.0, "f1_time": 0.0}


def test_field_f1_nothing_to_find_and_nothing_found():
    assert field_f1([{}, {}], [{}, {}]) == {"precision_micro": 0.0, "recall_micro": 0.0, "f1_micro": 0.0}


def test_field_f1_refuses_lists_of_different_length():
    with pytest.raises(ValueError):
        field_f1([{"date": "x"}], [])


def test_classification_metrics_by_hand():
    # label 0: tp=1 fn=1 -> 2/3; label 1: tp=1 fp=2 -> 2/4; label 2: fn=1 -> 0; macro = (2/3 + 1/2 + 0) / 3
    scores = classification_metrics([0, 0, 1, 2], [0, 1, 1, 1])
    assert scores["accuracy"] == pytest.approx(2 / 4)
    assert scores["f1_macro"] == pytest.approx(7 / 18)


def test_classification_metrics_counts_a_label_only_predicted():
    # label 0: tp=1 fn=1 -> 2/3; label 3 (never gold): fp=1 -> 0; macro = 1/3
    scores = classification_metrics([0, 0], [0, 3])
    assert scores["accuracy"] == pytest.approx(1 / 2)
    assert scores["f1_macro"] == pytest.approx(1 / 3)


def test_classification_metrics_perfect_and_empty():
    assert classification_metrics([2, 1, 2], [2, 1, 2]) == {"accuracy": 1.0, "f1_macro": 1.0}
    assert classification_metrics([], []) == {"accuracy": 0.0, "f1_macro": 0.0}
