"""`python -m train sft`'s config: the model, the records, which responses they train, packing and
the optimizer (load it from YAML with `jaxthink.runs.load_config(SFTConfig, path, overrides)`)."""

from __future__ import annotations

import dataclasses

from jaxthink.data.records import DataSource
from jaxthink.runs.config import ModelSpec, OptimConfig, RunFields, positive

RESPONSES = ("both", "think", "short", "plain")


@dataclasses.dataclass(frozen=True)
class SFTConfig(RunFields):
    """Supervised warm-up on paired `<think>`/`<short>` responses (or plain responses).

    `responses` picks which of a paired record's responses become samples (`plain`: a base
    model's mix of worked solutions and direct answers, no control tokens); `short_repeats`
    trains each short response that many times per record; `worked_share` (plain only) is the
    share of worked solutions that train their first token (the base's choice to write one). Samples are packed
    into rows of `seq_len` tokens (longer ones truncated); `batch_size` rows per step.
    """

    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    data: DataSource = dataclasses.field(default_factory=lambda: DataSource(levels=(1,)))
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    responses: str = "both"
    short_repeats: int = 1
    worked_share: float = 1.0
    seq_len: int = 512
    batch_size: int = 32
    run_dir: str = "runs/sft"

    def __post_init__(self):
        super().__post_init__()
        if self.responses not in RESPONSES:
            raise ValueError(f"responses {self.responses!r}; accepted: {', '.join(RESPONSES)}")
        positive(self, "seq_len", "batch_size", "short_repeats")
        if not 0 <= self.worked_share <= 1:
            raise ValueError(f"worked_share {self.worked_share}: must be in [0, 1]")
