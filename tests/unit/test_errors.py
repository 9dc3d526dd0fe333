"""errors: the one-line summary of a library's exception."""

from __future__ import annotations

from ml_playground.errors import summary


def test_summary_is_the_first_non_empty_line() -> None:
    assert summary(ValueError("\n  size mismatch for wte\n\tmore detail\n")) == "size mismatch for wte"


def test_summary_of_an_empty_message_is_the_type_name() -> None:
    assert summary(RuntimeError("  \n")) == "RuntimeError"
    assert summary(EOFError()) == "EOFError"
