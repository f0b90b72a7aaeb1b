"""SFT samples: records -> (prompt, response) pairs -> token rows packed to the sequence length.

A paired record `{prompt, think, short}` gives two samples (Thinkless warm-up):
`<think>` + think + `</think>` + short, and `<short>` + short; a record `{prompt, response}` gives
one. `which="plain"` trains a base model instead: the worked solution (trace + short, no tags) and
the direct answer (short alone), neither with a control token. The prompt is the checkpoint's chat template around the question, ending at the assistant
tag, so the first response token is the control token. Every response ends with the EOS token.
The loss covers the response tokens only, control token and EOS included (the repeats of a short
response, `short_repeats`, leave the control token out).

A sample longer than `seq_len` is truncated (its response is cut; a prompt that alone fills the
row leaves nothing to learn and the sample is dropped). Samples are packed first-fit into rows
of `seq_len` tokens (grain's `FirstFitPackIterDataset`, `batch_size` bins at a time), which give
segment ids and per-sample positions for `forward(model, tokens, segment_ids=, positions=)`.
"""

from __future__ import annotations

import grain
import numpy as np
from grain.experimental import FirstFitPackIterDataset, ThreadPrefetchIterDataset

from jaxthink.data.records import (
    IN_ORDER,
    record_stream,
    short_response,
    think_response,
    worked_response,
)
from jaxthink.tokenizer import (
    SHORT,
    THINK,
    control_tokens,
    format_prompt,
    thinking_prefix_in_prompt,
    token_id,
)


def responses_of(record: dict, which: str = "both", short_repeats: int = 1) -> list[str]:
    """The response texts a record trains: its `response`, or its think and/or short pair (or,
    `plain`, its worked solution and direct answer), the short one `short_repeats` times (its few tokens would otherwise get little of the loss; the
    repeats train the answer but not the control token, see `sample_pairs`)."""
    if "response" in record:
        return [record["response"]]
    if "think" in record and "short" in record:
        if which == "plain":
            return [worked_response(record), *[record["short"]] * short_repeats]
        pair = {"think": think_response(record), "short": short_response(record)}
        shorts = [pair["short"]] * short_repeats
        return {"both": [pair["think"], *shorts], "think": [pair["think"]], "short": shorts}[which]
    raise ValueError(
        f"SFT record with keys {sorted(record)}; expected 'prompt' plus 'think' and 'short' "
        "(paired) or 'response'"
    )


def sample_pairs(
    records: list[dict], which: str = "both", short_repeats: int = 1, worked_share: float = 1.0
) -> list[tuple[str, str, bool]]:
    """(question, response, trains_control) for every sample of every record, records in order.

    A repeated response (`short_repeats`) does not train its control token, so the SFT policy's
    choice between `<think>` and `<short>` stays at the records' own mix. With `plain`, the
    worked solutions of `worked_share` of the records (evenly spread) train their first token:
    the base model reads every solution but opens one by itself that much less often than it
    answers directly.
    """
    pairs = []
    for i, record in enumerate(records):
        if "prompt" not in record:
            raise ValueError(f"SFT record {i} has keys {sorted(record)}; 'prompt' is required")
        responses = responses_of(record, which, short_repeats)
        trains = [r not in responses[:j] for j, r in enumerate(responses)]
        if which == "plain" and "response" not in record:
            trains[0] = int((i + 1) * worked_share) > int(i * worked_share)
        pairs += [(record["prompt"], r, t) for r, t in zip(responses, trains, strict=True)]
    return pairs


def check_control_tokens(tokenizer, responses: list[str]) -> None:
    """Responses that open with `<think>`/`<short>` need them as single tokens, and a chat
    template that leaves the first response token to the model (not one that opens `<think>`)."""
    used = {t for r in responses for t in (THINK, SHORT) if r.startswith(t)}
    if not used:
        return
    missing = [t for t in sorted(used) if token_id(tokenizer, t) is None]
    if missing:
        raise ValueError(
            f"the responses start with {', '.join(missing)} but the tokenizer has no such token; "
            "add the control tokens to the tokenizer (a Thinkless-style checkpoint)"
        )
    if thinking_prefix_in_prompt(tokenizer):
        raise ValueError(
            "the chat template's generation prompt already opens <think>, so the control token "
            "cannot be the first response token; use a template that ends at the assistant tag"
        )


def tokenize(
    tokenizer, question: str, response: str, seq_len: int, eos: int, trains_control: bool = True
) -> dict | None:
    """{"tokens", "loss"} int32 rows of one sample, truncated to `seq_len`; None if no loss left.
    Without `trains_control` the first response token (the control token) has no loss."""
    prompt = tokenizer.encode(format_prompt(tokenizer, question), add_special_tokens=False)
    answer = tokenizer.encode(response, add_special_tokens=False) + [eos]
    tokens = np.asarray(prompt + answer, np.int32)[:seq_len]
    skip = 0 if trains_control else 1
    loss = np.asarray([0] * (len(prompt) + skip) + [1] * (len(answer) - skip), np.int32)[:seq_len]
    return {"tokens": tokens, "loss": loss} if loss.any() else None


def sft_batches(
    tokenizer,
    records: list[dict],
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    which: str = "both",
    short_repeats: int = 1,
    worked_share: float = 1.0,
    prefetch: int = 2,
    shard: tuple[int, int] = (0, 1),
) -> grain.IterDataset:
    """Packed batches {"tokens", "segment_ids", "positions", "loss"}, each int32 [B, seq_len].

    `batch_size` is global. With `shard` = (index, count) the stream reads share `index` of the
    samples and yields its batch_size / count rows of every global batch (a process's rows:
    `jaxthink.distributed.data_shard`). `prefetch` batches are prepared ahead on a thread; the
    iterator's state still counts only consumed batches.
    """
    pairs = sample_pairs(records, which, short_repeats, worked_share)
    check_control_tokens(tokenizer, [response for _, response, _ in pairs[:100]])
    if batch_size % shard[1]:
        raise ValueError(f"batch_size={batch_size} does not split into {shard[1]} data shares")
    rows = batch_size // shard[1]
    eos = control_tokens(tokenizer).eos[0]
    ds = record_stream(pairs, seed, shard).map(
        lambda p: tokenize(tokenizer, p[0], p[1], seq_len, eos, trains_control=p[2])
    )
    ds = ds.to_iter_dataset(IN_ORDER).filter(lambda s: s is not None)
    ds = FirstFitPackIterDataset(
        ds,
        length_struct={"tokens": seq_len, "loss": seq_len},
        num_packing_bins=rows,
        shuffle_bins=False,
    )
    ds = ds.batch(rows, drop_remainder=True).map(_rename)
    return ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch) if prefetch else ds


def _rename(packed: dict) -> dict:
    return {
        "tokens": packed["tokens"],
        "segment_ids": packed["tokens_segment_ids"],
        "positions": packed["tokens_positions"],
        "loss": packed["loss"],
    }
