"""The sweep's user-count list: rising loads, refused with a hint when malformed."""
from __future__ import annotations

import pytest

from loadtest.sweep import LOCUSTFILES, SweepPlan, parse_users


def test_user_counts_are_parsed_in_the_order_given() -> None:
    assert parse_users("4,8, 16,32") == (4, 8, 16, 32)


@pytest.mark.parametrize("text", ["", "4,x", "0,4", "-1"])
def test_malformed_user_counts_are_refused_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match="--users"):
        parse_users(text)


def test_each_point_is_a_headless_locust_run_with_its_own_csv_prefix(tmp_path) -> None:
    plan = SweepPlan("adfilter", "127.0.0.1:8001", (8,), 10, "c7g.xlarge", ("--rps-per-user", "50"), processes=2)
    command = plan.command(8, tmp_path / "u8")
    assert command[command.index("-f") + 1] == str(LOCUSTFILES["adfilter"])
    assert {"--headless", "--only-summary"} <= set(command)
    assert command[command.index("-u") + 1] == "8" and command[command.index("-t") + 1] == "10s"
    assert command[command.index("--csv") + 1] == str(tmp_path / "u8")
    assert command[-4:] == ["--rps-per-user", "50", "--processes", "2"]
