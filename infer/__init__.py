"""`python -m infer`: generation, evaluation sweeps and the decode benchmark.

Importing the package hides transformers' import-time notice that PyTorch is missing: jaxthink
runs without torch (only the benchmarks against transformers need it), so the notice would only
add a line to every command. transformers' other messages are kept.
"""

import logging


def _not_the_torch_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("PyTorch was not found.")


logging.getLogger("transformers").addFilter(_not_the_torch_notice)
