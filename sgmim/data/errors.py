"""How the data layer reports bad input: one exception type, and skip-or-fail for bad files."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch

log = logging.getLogger("sgmim.data")
T = TypeVar("T")


class DataError(ValueError):
    """A dataset that is laid out wrongly or a file that cannot be read; the message names the
    path and what was expected there."""


class SkipPolicy:
    """Skip unreadable items with a warning (counted), or raise when `strict`.

    The count lives in shared memory so that it adds up over DataLoader workers (two workers
    skipping at the same instant may lose one increment: it is a health signal, not a ledger).
    """

    def __init__(self, strict: bool, max_tries: int = 10):
        self.strict = strict
        self.max_tries = max_tries
        self._skipped = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def skipped(self) -> int:
        """Items skipped so far, all processes together."""
        return int(self._skipped)

    def report_missing(self, what: str, missing: list[str], expected: str) -> None:
        """Files a layout promised but that are not there: warn with examples, or raise."""
        if not missing:
            return
        examples = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        message = f"{len(missing)} {what} without {expected}: {examples}"
        if self.strict:
            raise DataError(message)
        log.warning("%s (left out; strict: true makes this an error)", message)

    def load(self, index: int, length: int, load: Callable[[int], T]) -> tuple[int, T]:
        """`load(index)`, or after a DataError the next index that loads: (index used, item)."""
        for attempt in range(min(self.max_tries, length)):
            current = (index + attempt) % length
            try:
                return current, load(current)
            except DataError as exc:
                if self.strict:
                    raise
                self._skipped += 1
                log.warning("skipped a corrupt item (%d so far): %s", self.skipped, exc)
        raise DataError(f"{self.max_tries} items in a row from index {index} could not be read; "
                        "the dataset looks broken (see the warnings above)")
