"""Mode policies: parsing mode strings and the pure per-step functions of the decode loop."""

from jaxthink.policies.modes import (
    MODES,
    Mode,
    ModeError,
    ModeOptions,
    modes_help,
    parse_mode,
    parse_modes,
)

__all__ = ["MODES", "Mode", "ModeError", "ModeOptions", "modes_help", "parse_mode", "parse_modes"]
