"""Refilling every program at once: one outcome (Lambda) and one exit code (CLI) for several runs."""

from tokenpool.entrypoints.cli_refill import _worst_exit_code
from tokenpool.refill.model import Outcome, worst_outcome


def test_the_lambda_reports_the_worst_run():
    assert worst_outcome([]) is Outcome.SUCCEEDED
    assert worst_outcome([Outcome.SUCCEEDED, Outcome.SKIPPED_LEASE_HELD]) is Outcome.SKIPPED_LEASE_HELD
    assert worst_outcome([Outcome.STOPPED, Outcome.SKIPPED_LEASE_HELD, Outcome.SUCCEEDED]) is Outcome.STOPPED
    assert worst_outcome([Outcome.FAILED, Outcome.LEASE_LOST, Outcome.STOPPED]) is Outcome.FAILED


def test_the_cli_exits_with_the_worst_code_failure_then_interruption_then_held_lease():
    assert _worst_exit_code([]) == 0
    assert _worst_exit_code([Outcome.SUCCEEDED, Outcome.SKIPPED_LEASE_HELD]) == 3
    assert _worst_exit_code([Outcome.SKIPPED_LEASE_HELD, Outcome.STOPPED]) == 4
    assert _worst_exit_code([Outcome.LEASE_LOST, Outcome.FAILED, Outcome.SUCCEEDED]) == 1
