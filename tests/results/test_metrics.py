"""Score, Score_k, the accuracy matrix summaries, on hand-computed curves."""

from __future__ import annotations

import math

import pytest

from cl_bench.core.score import (
    at_chance,
    average_final_accuracy,
    backward_transfer,
    forgetting,
    in_score_window,
    peak_score,
    task_letters,
)


def test_score_is_peak_mean_within_window():
    # rows 0-2: task A training (excluded), rows 3-6: the window
    curves = [[0.1, 0.0], [0.9, 0.0], [0.99, 0.99], [0.9, 0.1], [0.6, 0.8], [0.5, 0.95], [0.1, 0.99]]
    steps = [0, 50, 100, 100, 150, 200, 250]
    score = peak_score(curves, window_start=3, steps=steps)
    assert score.score == pytest.approx((0.5 + 0.95) / 2)
    assert score.per_task == [0.5, 0.95]
    assert score.step == 200


def test_the_windows_first_row_is_one_of_its_points():
    curves = [[0.2, 0.1], [0.95, 0.3], [0.9, 0.2], [0.5, 0.5]]
    score = peak_score(curves, window_start=1, steps=[0, 10, 20, 30])
    assert score.step == 10 and score.per_task == [0.95, 0.3]


def test_the_window_is_the_last_tasks_training_and_its_step_0_only_with_the_start():
    assert [in_score_window(1, step, 2, "training") for step in (0, 1, 500)] == [False, True, True]
    assert [in_score_window(1, step, 2, "with_start") for step in (0, 1, 500)] == [True, True, True]
    assert not in_score_window(0, 5, 2, "with_start") and not in_score_window(1, 5, 3, "training")


def test_at_chance_is_within_two_standard_errors_of_a_uniform_guess():
    # 9 units, 400 examples: a guess scores 1/9 with standard error sqrt((1/9)(8/9)/400) = 0.0157
    bound = 1 / 9 + 2 * (1 / 9 * 8 / 9 / 400) ** 0.5
    assert at_chance(0.066, 9, 400) and at_chance(bound - 1e-9, 9, 400)
    assert not at_chance(bound + 1e-9, 9, 400) and not at_chance(0.31, 9, 400)


def test_score_ties_go_to_the_earliest_point():
    curves = [[0.6, 0.4], [0.4, 0.6], [0.5, 0.5]]
    score = peak_score(curves, window_start=0, steps=[0, 1, 2])
    assert score.step == 0 and score.per_task == [0.6, 0.4]


def test_score_skips_points_with_a_missing_task():
    score = peak_score([[1.0, math.nan], [0.2, 0.4]], 0, [0, 1])
    assert score.step == 1


def test_matrix_summaries_hand_computed():
    matrix = [
        [0.9, 0.1, 0.1],
        [0.7, 0.8, 0.1],
        [0.5, 0.6, 0.9],
    ]
    assert average_final_accuracy(matrix) == pytest.approx((0.5 + 0.6 + 0.9) / 3)
    assert forgetting(matrix) == pytest.approx([0.9 - 0.5, 0.8 - 0.6])
    assert backward_transfer(matrix) == pytest.approx(((0.5 - 0.9) + (0.6 - 0.8)) / 2)


def test_forgetting_uses_the_best_earlier_accuracy_not_the_first():
    matrix = [[0.5, 0.0], [0.7, 0.9], [0.6, 0.9]]
    assert forgetting(matrix)[0] == pytest.approx(0.7 - 0.6)
    assert backward_transfer(matrix) == pytest.approx(((0.6 - 0.5) + (0.9 - 0.9)) / 2)


def test_task_letters():
    assert task_letters(2) == ["A", "B"]
    assert task_letters(27)[:2] == ["1", "2"]
