"""colstats: running statistics over a column of numbers, in one pass and constant memory.

The csvstats sample's "third-party dependency": a pure-Python module that is not on a Batch node, shipped inside
the application package under lib/ (as a vendored wheel or `pip install --target lib/` would put it).
"""

from __future__ import annotations

import math

__version__ = "1.0"


class RunningStats:
    """count, mean, min and max of the numbers added so far; the mean by Welford's update, which does not drift."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf

    def add(self, value: float) -> None:
        self.count += 1
        self.mean += (value - self.mean) / self.count
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)

    def as_dict(self) -> dict[str, float | int | None]:
        if self.count == 0:
            return {"count": 0, "mean": None, "min": None, "max": None}
        return {"count": self.count, "mean": self.mean, "min": self.minimum, "max": self.maximum}


def parse_number(text: str) -> float | None:
    """The number a CSV cell holds (surrounding spaces allowed), or None; NaN and infinities are not numbers here."""
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None
