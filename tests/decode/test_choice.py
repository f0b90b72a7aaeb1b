"""Next-token choice (jaxthink.decode.choice): greedy, temperature, top-k, top-p.

The distribution tests draw one token in each of N rows that share their logits (each row its
own key) and compare the counts with the filtered softmax that a numpy sort defines.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer import bench, cli
from jaxthink.decode.choice import (
    CANDIDATES,
    REJECTION_ATTEMPTS,
    check_sampling,
    choose_tokens,
    choose_tokens_and_norm,
    choose_tokens_and_paths,
    first_argmax,
    in_top_p,
    kept_tokens,
    logprob_and_certainty,
    top_k_mask,
    top_p_mask,
)

DRAWS = 20_000


def reference_probs(logits, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """The filtered softmax by a sort (float64): top-k keeps the k largest, then top-p the
    most likely tokens, in order, until their mass under the top-k softmax reaches p; tokens
    tied with the last one kept are kept too."""
    z = np.asarray(logits, np.float64) / temperature
    keep = np.ones(z.shape, bool)
    if 0 < top_k < z.size:
        keep &= z >= np.sort(z)[::-1][top_k - 1]
    probs = np.where(keep, np.exp(z - z.max()), 0.0)
    probs /= probs.sum()
    if top_p < 1:
        ordered = np.sort(probs)[::-1]
        n = int(np.searchsorted(np.cumsum(ordered), top_p))
        keep &= probs >= ordered[n]
    probs = np.where(keep, probs, 0.0)
    return probs / probs.sum()


def draw_paths(logits, temperature: float, top_k: int, top_p: float, attempts=REJECTION_ATTEMPTS):
    """(token counts, rejection draws per row, rows drawn by bisection) of DRAWS rows sharing
    `logits` [V], each row with its own key."""
    full = lambda x, dtype=jnp.float32: jnp.full((DRAWS,), x, dtype)
    tokens, draws, bisected, _ = jax.jit(choose_tokens_and_paths, static_argnums=6)(
        jnp.broadcast_to(logits, (DRAWS, logits.shape[-1])),
        jax.random.split(jax.random.key(7), DRAWS),
        jnp.int32(0),
        full(temperature),
        full(top_k, jnp.int32),
        full(top_p),
        attempts,
    )
    counts = np.bincount(np.asarray(tokens), minlength=logits.shape[-1])
    return counts, np.asarray(draws), np.asarray(bisected)


def draw_counts(logits, temperature: float, top_k: int, top_p: float):
    """Token counts of DRAWS rows sharing `logits` [V], each row with its own key."""
    return draw_paths(logits, temperature, top_k, top_p)[0]


def assert_drawn_from(counts: np.ndarray, probs: np.ndarray):
    """No draw outside the support, and a chi-square far below what a wrong law gives."""
    assert counts[probs == 0].sum() == 0, np.nonzero(counts * (probs == 0))
    support = probs > 0
    expected = counts.sum() * probs[support]
    chi2 = np.sum((counts[support] - expected) ** 2 / expected)
    df = max(support.sum() - 1, 1)
    assert chi2 < df + 6 * np.sqrt(2 * df), (chi2, df)


LOGITS_24 = jax.random.normal(jax.random.key(0), (24,)) * 1.5


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(1.0, 0, 1.0), (0.6, 0, 1.0), (1.3, 0, 1.0), (0.8, 5, 1.0), (1.0, 0, 0.7), (0.7, 8, 0.6)],
)
def test_draws_follow_the_filtered_softmax(temperature, top_k, top_p):
    counts = draw_counts(LOGITS_24, temperature, top_k, top_p)
    assert_drawn_from(counts, reference_probs(LOGITS_24, temperature, top_k, top_p))


def test_a_wrong_temperature_fails_the_frequency_check():
    """The check has power: draws at T = 0.6 are not those of T = 0.7."""
    counts = draw_counts(LOGITS_24, 0.6, 0, 1.0)
    with pytest.raises(AssertionError):
        assert_drawn_from(counts, reference_probs(LOGITS_24, 0.7, 0, 1.0))


FLAT = jax.random.normal(jax.random.key(1), (300,)) * 0.1


def test_flat_rows_follow_the_filtered_softmax_by_rejection_or_bisection():
    """Top-p 0.5 of a near-flat 300-token row keeps ~150 tokens, more than the candidates:
    every row draws by rejection (~1 / 0.5 draws), a rare one rejected REJECTION_ATTEMPTS times
    by bisection; top-k 100 (past the candidates) always by bisection."""
    probs = reference_probs(FLAT, 1.0, 0, 0.5)
    assert (probs > 0).sum() > CANDIDATES
    counts, draws, bisected = draw_paths(FLAT, 1.0, 0, 0.5)
    assert_drawn_from(counts, probs)
    assert (draws >= 1).all() and 1.7 < draws.mean() < 2.1 and bisected.mean() < 0.01
    counts, draws, bisected = draw_paths(FLAT, 1.0, 100, 1.0)
    assert_drawn_from(counts, reference_probs(FLAT, 1.0, 100, 1.0))
    assert (draws == 0).all() and bisected.all()


@pytest.mark.parametrize("attempts", [1, 3, REJECTION_ATTEMPTS])
def test_rows_rejected_up_to_the_cap_and_then_bisected_follow_the_filtered_softmax(attempts):
    """Top-p 0.3 of a flat row: ~70% of the draws are rejected, so many rows reach the cap and
    draw by bisection; the mixture of both paths is still the filtered softmax."""
    probs = reference_probs(FLAT, 0.8, 0, 0.3)
    counts, draws, bisected = draw_paths(FLAT, 0.8, 0, 0.3, attempts)
    assert_drawn_from(counts, probs)
    assert (draws >= 1).all() and draws.max() == attempts
    share = (1 - 0.3) ** attempts  # about: the set's mass is a little over 0.3
    assert 0.5 * share < bisected.mean() < 1.1 * share, (bisected.mean(), share)
    assert (draws[bisected] == attempts).all()


def test_ties_at_the_top_p_threshold_are_all_kept_by_rejection():
    """Flat logits on a grid of 0.05: the last kept value is shared by many tokens, all kept."""
    logits = jnp.round(FLAT * 20) / 20
    for top_p in (0.3, 0.6):
        probs = reference_probs(logits, 1.0, 0, top_p)
        at_threshold = np.asarray(logits) == np.asarray(logits)[probs > 0].min()
        assert at_threshold.sum() > 5 and (probs[at_threshold] > 0).all()
        counts, draws, _ = draw_paths(logits, 1.0, 0, top_p)
        assert_drawn_from(counts, probs)
        assert (draws >= 1).all()


def test_a_vocabulary_not_a_multiple_of_the_block():
    logits = jax.random.normal(jax.random.key(2), (200,)) * 2
    for settings in [(1.0, 0, 1.0), (0.9, 0, 0.8)]:
        assert_drawn_from(draw_counts(logits, *settings), reference_probs(logits, *settings))


MIXED = [  # (temperature, top_k, top_p) per row: off, top-k, top-p, both, past the candidates
    (1.0, 0, 1.0),
    (0.7, 1, 1.0),
    (1.0, 5, 1.0),
    (0.6, 63, 1.0),
    (1.0, 64, 1.0),
    (0.9, 200, 1.0),
    (1.0, 0, 0.3),
    (0.6, 0, 0.95),
    (1.2, 0, 0.999),
    (1.0, 10, 0.5),
    (0.8, 100, 0.9),
    (1.0, 1000, 0.9),
]


@pytest.mark.parametrize("ties", [False, True])
def test_kept_sets_are_those_of_a_sort(ties):
    """Per row, with the settings mixed in one batch; with ties (logits rounded to 0.25),
    tokens tied with the last one kept are kept too."""
    x = jax.random.normal(jax.random.key(3), (len(MIXED), 700)) * 2.5
    x = jnp.round(x * 4) / 4 if ties else x
    t, k, p = (jnp.array(c) for c in zip(*MIXED))
    kept = np.asarray(kept_tokens(x, t, k.astype(jnp.int32), p))
    for r, settings in enumerate(MIXED):
        expected = reference_probs(x[r], *settings) > 0
        np.testing.assert_array_equal(kept[r], expected, err_msg=f"row {r}: {settings}")


@pytest.mark.parametrize("ties", [False, True])
def test_the_rejection_rule_keeps_the_sets_of_a_sort(ties):
    """`in_top_p` (a token is kept iff the mass of the tokens more likely than it is < p), for
    every token of the top-p rows of MIXED, equals the sort's set, ties at the threshold kept."""
    rows = [r for r, (_, k, p) in enumerate(MIXED) if k == 0 and p < 1]
    x = jax.random.normal(jax.random.key(3), (len(MIXED), 700)) * 2.5
    x = (jnp.round(x * 4) / 4 if ties else x)[jnp.array(rows)]
    t, _, p = (jnp.array(c)[jnp.array(rows)] for c in zip(*MIXED))
    kept = jax.vmap(lambda token: in_top_p(x, t, p, jnp.full(len(rows), token)), out_axes=1)(
        jnp.arange(700)
    )
    for i, r in enumerate(rows):
        expected = reference_probs(x[i], *MIXED[r]) > 0
        np.testing.assert_array_equal(kept[i], expected, err_msg=f"row {r}: {MIXED[r]}")


def test_top_k_keeps_exactly_the_k_best():
    logits = jax.random.normal(jax.random.key(0), (4, 1000))
    k = jnp.array([1, 5, 50, 0])
    kept = np.asarray(top_k_mask(logits, k) > -1e29)
    assert kept.sum(1).tolist() == [1, 5, 50, 1000]
    for r, kk in enumerate([1, 5, 50]):
        best = np.argsort(-np.asarray(logits[r]))[:kk]
        assert set(np.nonzero(kept[r])[0]) == set(best)


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = jax.random.normal(jax.random.key(1), (3, 500)) * 3
    p = jnp.array([0.5, 0.9, 1.0])
    kept = np.asarray(top_p_mask(logits, p) > -1e29)
    probs = np.asarray(jax.nn.softmax(logits, -1))
    for r, pp in enumerate([0.5, 0.9]):
        order = np.argsort(-probs[r])
        n = int(np.searchsorted(np.cumsum(probs[r][order]), pp) + 1)
        assert set(np.nonzero(kept[r])[0]) == set(order[:n])
    assert kept[2].all()


def test_a_rows_draw_depends_on_its_key_and_step_only():
    """Row 0 draws the same token whatever its neighbours (their number, logits and settings:
    greedy, filtered, flat rows that take the exact path) for the same key and step, also when
    the few candidates settle it alone and a neighbour makes the batch take the C; `step` as a
    scalar equals `step` per row."""
    logits = jax.random.normal(jax.random.key(4), (7, 900)) * 2
    keys = jax.random.split(jax.random.key(5), 7)
    t, k, p = (jnp.array(c) for c in zip(*MIXED[:7]))
    k = k.astype(jnp.int32)
    choose = jax.jit(choose_tokens)
    flat = jnp.zeros((1, 900)).at[0, :3].set(0.01)
    for row0 in [(1.0, 0, 1.0), (0.7, 0, 0.9), (0.7, 10, 1.0), (0.7, 5, 1.0), (0.3, 0, 0.6)]:
        t0, k0, p0 = (x.at[0].set(v) for x, v in zip((t, k, p), row0))
        for step in range(4):
            alone = choose(logits[:1], keys[:1], step, t0[:1], k0[:1], p0[:1])[0]
            batch = choose(logits, keys, step, t0, k0, p0)
            assert batch[0] == alone
            with_flat = choose(
                jnp.concatenate([logits[:1], flat]),
                keys[:2],
                jnp.array([step, 9]),
                t0[:2],
                k0[:2].at[1].set(0),
                p0[:2].at[1].set(0.5),
            )
            assert with_flat[0] == alone
            per_row = choose(logits, keys, jnp.full((7,), step), t0, k0, p0)
            np.testing.assert_array_equal(per_row, batch)


def test_a_rejection_rows_draw_depends_on_its_key_and_step_only():
    """A flat top-p row draws the same token alone or beside rows that need more attempts (the
    rejected rows draw again one after another)."""
    rows = 24
    logits = jnp.stack([FLAT * (1 + 0.1 * i) for i in range(rows)])
    keys = jax.random.split(jax.random.key(8), rows)
    t, k, p = jnp.ones(rows), jnp.zeros(rows, jnp.int32), jnp.full(rows, 0.5)
    choose = jax.jit(choose_tokens_and_paths)
    for step in range(8):
        batch, batch_draws, _, _ = choose(logits, keys, step, t, k, p)
        assert (batch_draws > 1).sum() > 2  # rejected at the first draw
        for row in (0, 1, rows - 1):
            one = slice(row, row + 1)
            alone, draws, _, _ = choose(logits[one], keys[one], step, t[one], k[one], p[one])
            assert batch[row] == alone[0] and batch_draws[row] == draws[0] >= 1


WIDE_FLAT = jax.random.normal(jax.random.key(3), (4096,)) * 0.1


def test_rows_whose_top_p_set_outweighs_the_candidates_draw_by_rejection_alone():
    """Top-p 0.9 of a flat 4096-token row: p times the row's total weight passes 2 x CANDIDATES
    (each candidate weighs at most 1), so the row goes to rejection without a look at the
    candidates, and still draws from the filtered softmax; beside a row that needs the
    candidates (which are then computed) it draws the same token."""
    probs = reference_probs(WIDE_FLAT, 1.0, 0, 0.9)
    assert (probs > 0).sum() > 30 * CANDIDATES
    counts, draws, bisected = draw_paths(WIDE_FLAT, 1.0, 0, 0.9)
    assert_drawn_from(counts, probs)
    assert (draws >= 1).all() and draws.mean() < 1.2 and not bisected.any()
    spread = jnp.zeros(4096).at[:3].set(12.0)
    both = jnp.stack([WIDE_FLAT, spread])
    keys = jax.random.split(jax.random.key(9), 2)
    t, k, p = jnp.ones(2), jnp.zeros(2, jnp.int32), jnp.array([0.9, 0.9])
    choose = jax.jit(choose_tokens_and_paths)
    for step in range(16):
        pair, pair_draws, _, _ = choose(both, keys, step, t, k, p)
        alone, alone_draws, _, _ = choose(both[:1], keys[:1], step, t[:1], k[:1], p[:1])
        assert pair[0] == alone[0] and pair_draws[0] == alone_draws[0] >= 1
        assert pair_draws[1] == 0 and pair[1] < 3  # the spread row: its candidates


def test_greedy_rows_take_the_first_argmax():
    logits = jnp.round(jax.random.normal(jax.random.key(6), (6, 300)) * 2)  # tied maxima
    t = jnp.array([0.0, 1.0, 0.0, 0.5, 0.0, 0.0])
    k, p = jnp.array([0, 0, 3, 0, 0, 0]), jnp.array([1.0, 0.9, 0.5, 1.0, 1.0, 1.0])
    keys = jax.random.split(jax.random.key(0), 6)
    for temperature in (t, jnp.zeros(6)):
        drawn = choose_tokens(logits, keys, 3, temperature, k, p)
        greedy = temperature == 0
        np.testing.assert_array_equal(drawn[greedy], jnp.argmax(logits, -1)[greedy])


def test_first_argmax_is_argmax_ties_included():
    x = jnp.round(jax.random.normal(jax.random.key(0), (64, 300)) * 2)  # many tied maxima
    x = x.at[3].set(-jnp.inf).at[4].set(0.0)
    np.testing.assert_array_equal(first_argmax(x), jnp.argmax(x, axis=-1))
    y = jnp.round(jax.random.normal(jax.random.key(1), (2, 3, 1024)) * 2)  # leading axes
    np.testing.assert_array_equal(first_argmax(y), jnp.argmax(y, axis=-1))


@pytest.mark.parametrize(
    "settings, message",
    [
        ((-0.1, 1.0, 0), "temperature=-0.1: must be a finite number >= 0"),
        ((float("nan"), 1.0, 0), "temperature=nan"),
        ((1.0, 0.0, 0), r"top_p=0.0: must be in \(0, 1\]"),
        ((1.0, 1.5, 0), "top_p=1.5"),
        ((1.0, 1.0, -1), "top_k=-1: must be an integer >= 0"),
        ((1.0, 1.0, 2.5), "top_k=2.5"),
    ],
)
def test_check_sampling_names_the_bad_value(settings, message):
    with pytest.raises(ValueError, match=message):
        check_sampling(*settings)


def test_check_sampling_accepts_the_edges():
    for settings in [(0.0, 1.0, 0), (0.6, 0.95, 20), (2.0, 1e-3, 1)]:
        check_sampling(*settings)


def test_sampling_bench_prints_one_row_per_model_and_setting(capsys):
    """`python -m infer bench --sampling --shape tiny` runs end to end (a smoke test)."""
    argv = ["bench", "--sampling", "--shape", "tiny", "--batch", "2", "--new-tokens", "3"]
    bench.run_command(cli.parse_args([*argv, "--prompt-len", "16", "--min-seconds", "0"]))
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ")][1:]
    models = [r.split("|")[1].strip() for r in rows]
    assert models == ["tiny: as initialised"] * 3 + ["tiny: spread"] * 3
    ratios = [float(r.split("|")[-2].strip().rstrip("x")) for r in rows]
    assert ratios[0] == ratios[3] == 1.0 and all(np.isfinite(ratios))


@pytest.mark.parametrize("vocab", [256, 300])  # a multiple of the block, and not
def test_logprob_and_certainty_are_the_log_softmax_and_the_kl_from_uniform(vocab):
    """Greedy rows (T 0) read T = 1; rows at T = 1 and T = 0.6 side by side; the same with the
    tempered normaliser that the choice computed given for some rows (the last row's not)."""
    logits = jax.random.normal(jax.random.key(4), (4, vocab)) * 3
    temperature = jnp.array([0.0, 1.0, 0.6, 0.6])
    token = jnp.array([5, vocab - 1, 17, 3])
    x = np.asarray(logits, np.float64)
    t = np.array([1.0, 1.0, 0.6, 0.6])[:, None]
    z = x / t - x.max(-1, keepdims=True) / t
    log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
    log_p1 = x - x.max(-1, keepdims=True)
    log_p1 -= np.log(np.exp(log_p1).sum(-1, keepdims=True))
    n = jnp.zeros(4, jnp.int32)
    _, norm = choose_tokens_and_norm(
        logits, jax.random.split(jax.random.key(5), 4), 0, temperature, n, jnp.ones(4)
    )
    for known in (None, (jnp.array([False, True, True, False]), norm)):
        logprob, certainty = jax.jit(logprob_and_certainty)(logits, token, temperature, known)
        np.testing.assert_allclose(logprob, log_probs[np.arange(4), token], atol=2e-5)
        np.testing.assert_allclose(certainty, -log_p1.mean(-1) - np.log(vocab), atol=1e-5)
