"""The shape issue 22 asks of service/ (bench/shape.py measures it): no class longer than about 200
lines. That no function takes more than five arguments is ruff's PLR0913 in `make lint`."""

from __future__ import annotations

from bench.shape import classes, functions

MAX_CLASS_LINES = 200


def test_no_class_in_service_is_longer_than_200_lines():
    longer = [m for m in classes() if m.size > MAX_CLASS_LINES]
    assert not longer, f"split these along their jobs: {longer}"


def test_the_measure_counts_lines_and_arguments_as_ruff_does():
    lengths, arguments = functions()
    by_name = {m.where.rsplit(" ", 1)[1]: m.size for m in arguments}
    assert by_name["list_batches"] == 5  # adapter, executor, key, query, call
    assert by_name["scoped_target"] == 4  # self is not counted
    assert all(m.size > 0 for m in lengths) and classes()[0].size >= classes()[-1].size
