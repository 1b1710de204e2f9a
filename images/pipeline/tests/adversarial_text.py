"""Hostile text for the linear-time tests of the redactor and the text features.

A regex that backtracks turns one customer message into a stalled pod: a long
digit run ending in a letter, a run of separators, nested parentheses, many
``@`` or ``.``, mixed scripts. The strategy here repeats such units up to and
beyond the longest conversation the pipeline accepts; ``within_budget`` stops
a call that runs past its time budget (the regex engine checks for signals, so
an alarm interrupts even a catastrophic match) and fails the test.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis import strategies as st

from privacy_pipeline.config import load_config

MAX_CONVERSATION_CHARS = load_config().conversations.max_conversation_chars
# "and beyond": five times what validate lets through.
LONGEST = 5 * MAX_CONVERSATION_CHARS

# Pieces the detectors' patterns start or continue on, plus a few that end them.
UNITS = (
    "1", "12 ", "1-", "1.", "12.", "+1 ", "+", "(", "(1)", "((12)", "(1", "@", "a@", "a.", "x@a.", ".", "-",
    "::", "a:", "1:", "!", "?.", " ", "\t", "\n", "a", "A1 ", "GB82 ", "WEST ", "AB 12 ", "1 a ", "12 Main ",
    "1-2", "\u0663", "\u00e9", "\u200b", "\u4e2d", "'", "n't ", "my ", "please ", "St ",
)  # fmt: skip
# What follows the run: the character that makes a greedy match fail and backtrack.
TAILS = ("", "a", "x", "@", ".", "1", "!", "_", "\u00e9", "-", ")")


def _repeated(unit: str, length: int, tail: str) -> str:
    return (unit * (length // len(unit) + 1))[:length] + tail


def adversarial_texts(longest: int = LONGEST) -> st.SearchStrategy[str]:
    """A unit (one to three pieces, or a few arbitrary characters) repeated to 1..``longest`` chars, then a tail."""
    unit = st.lists(st.sampled_from(UNITS) | st.text(min_size=1, max_size=3), min_size=1, max_size=3).map("".join)
    return st.builds(_repeated, unit, st.integers(min_value=1, max_value=longest), st.sampled_from(TAILS))


def budget_seconds(text: str, per_100k_chars: float) -> float:
    """A generous time budget: a fixed second for start-up noise plus ``per_100k_chars`` per 100,000 characters."""
    return 1.0 + per_100k_chars * len(text) / 100_000


@contextmanager
def within_budget(seconds: float, what: str) -> Iterator[None]:
    """Fail with ``what`` if the block runs longer than ``seconds`` (main thread only: SIGALRM)."""

    def _expired(signum: int, frame: Any) -> None:
        raise AssertionError(f"{what} ran past its {seconds:.1f} s budget")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def fastest_of(function: Callable[[str], object], text: str, repeats: int = 3) -> float:
    """The least CPU time of ``repeats`` calls.

    CPU time, not wall time: the tier's other xdist worker (and whatever else shares the machine) taking the
    core does not count, and the least of the calls is the one least disturbed by caches and clock changes.
    """
    timings = []
    for _ in range(repeats):
        started = time.process_time()
        function(text)
        timings.append(time.process_time() - started)
    return min(timings)
