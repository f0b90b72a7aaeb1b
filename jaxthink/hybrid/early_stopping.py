"""Early stopping for the steer stage's training loops (the SAE and the steering vectors).

`EarlyStopping(patience, min_delta, best=initial)`: after each epoch `update(epoch, loss, value)`
keeps `value` if `loss` beats the best so far by more than `min_delta`, and returns True once
`patience` epochs in a row have not.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


@dataclasses.dataclass
class EarlyStopping:
    patience: int
    min_delta: float = 0.0
    best: Any = None  # the value of the best epoch (the initial value until one improves)
    best_loss: float = math.inf
    best_epoch: int = -1
    waited: int = 0  # epochs since the last improvement

    def update(self, epoch: int, loss: float, value: Any) -> bool:
        """Records one epoch; True means stop."""
        if loss < self.best_loss - self.min_delta:
            self.best, self.best_loss, self.best_epoch, self.waited = value, loss, epoch, 0
            return False
        self.waited += 1
        return self.waited >= self.patience
