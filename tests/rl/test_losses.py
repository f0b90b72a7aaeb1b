"""DeGRPO and GRPO losses: the formulas, their gradients, clipping, the KL, and accumulation.

The reference below reads docs/methods.md section 2 literally, one sequence and one token at a time.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxthink.rl import (
    LossConfig,
    k3_kl,
    loss_denominators,
    loss_terms,
    merge_terms,
    policy_loss,
    summarize_terms,
)

LENGTHS = [5, 0, 8, 2, 8, 3]  # T_i, ragged; row 1 is only its control token
# Non-default coefficients so that every term is visible at a 1e-5 tolerance.
COEFS = dict(kl_coef=0.2, entropy_coef=0.05)
CONFIGS = {
    "degrpo-paper": LossConfig("degrpo", alpha=0.3, normalization="paper", **COEFS),
    "degrpo-token_mean": LossConfig("degrpo", alpha=0.3, normalization="token_mean", **COEFS),
    "grpo": LossConfig("grpo", **COEFS),
}

WIDTH = 11  # every batch is [B, 11] and B is 6 or 3, so eager ops compile for few shapes


def make_batch(lengths=LENGTHS, seed=0, spread=0.3):
    """Random ragged batch; padding holds NaN, which must never reach the loss."""
    rng = np.random.default_rng(seed)
    b, t = len(lengths), WIDTH
    mask = np.zeros((b, t), np.float32)
    for i, n in enumerate(lengths):
        mask[i, : n + 1] = 1.0
    logp = -rng.uniform(0.05, 3.0, (b, t)).astype(np.float32)
    old = (logp + rng.normal(0.0, spread, (b, t))).astype(np.float32)
    ref = (logp + rng.normal(0.0, spread, (b, t))).astype(np.float32)
    entropy = rng.uniform(0.0, 2.0, (b, t)).astype(np.float32)
    for x in (logp, old, ref, entropy):
        x[mask == 0] = np.nan
    adv = rng.normal(size=b).astype(np.float32)
    return dict(logp=logp, old_logp=old, advantages=adv, mask=mask, ref_logp=ref, entropy=entropy)


def reference_loss(batch, lengths, cfg, use_kl, use_entropy):
    logp, old, adv = batch["logp"], batch["old_logp"], batch["advantages"]
    ref, ent = batch["ref_logp"], batch["entropy"]
    eps, n_seq = cfg.clip_eps, len(lengths)

    def surrogate(i, t):
        r = np.exp(float(logp[i, t]) - float(old[i, t]))
        return max(-adv[i] * r, -adv[i] * min(max(r, 1 - eps), 1 + eps))

    def kl(i, t):
        if not use_kl:
            return 0.0
        d = float(ref[i, t]) - float(logp[i, t])
        return min(max(np.exp(d) - d - 1, -10.0), 10.0)

    def token(i, t):
        return surrogate(i, t) + cfg.kl_coef * kl(i, t)

    loss = 0.0
    if cfg.kind == "grpo":
        for i, n in enumerate(lengths):
            loss += sum(token(i, t) for t in range(n + 1)) / (n + 1) / n_seq
    elif cfg.normalization == "paper":
        for i, n in enumerate(lengths):
            loss += cfg.alpha * surrogate(i, 0) / n_seq
            if n > 0:
                loss += sum(token(i, t) for t in range(1, n + 1)) / n / n_seq
    else:
        response_sum = 0.0
        for i, n in enumerate(lengths):
            loss += cfg.alpha * surrogate(i, 0) / n_seq
            response_sum += sum(token(i, t) for t in range(1, n + 1))
        loss += response_sum / sum(lengths)
    if use_entropy:
        total = sum(float(ent[i, t]) for i, n in enumerate(lengths) for t in range(n + 1))
        loss -= cfg.entropy_coef * total / sum(n + 1 for n in lengths)
    return loss


def grad_wrt_logp(cfg, batch, **extra):
    def loss(lp):
        return policy_loss(lp, batch["old_logp"], batch["advantages"], batch["mask"], cfg, **extra)[
            0
        ]

    return np.asarray(jax.grad(loss)(jnp.asarray(batch["logp"])))


def at_ratio_one(lengths, adv):
    """Finite batch with old_logp == logp (ratio 1, no clipping) and the given advantages."""
    batch = make_batch(lengths)
    batch["logp"] = np.where(batch["mask"] > 0, batch["logp"], 0.0).astype(np.float32)
    batch["old_logp"] = batch["logp"].copy()
    batch["advantages"] = np.asarray(adv, np.float32)
    return batch


@pytest.mark.parametrize("use_entropy", [False, True], ids=["no-entropy", "entropy"])
@pytest.mark.parametrize("use_kl", [False, True], ids=["no-kl", "kl"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_loss_matches_the_formula(name, use_kl, use_entropy):
    cfg, batch = CONFIGS[name], make_batch()
    loss, _ = policy_loss(
        batch["logp"],
        batch["old_logp"],
        batch["advantages"],
        batch["mask"],
        cfg,
        ref_logp=batch["ref_logp"] if use_kl else None,
        entropy=batch["entropy"] if use_entropy else None,
    )
    expected = reference_loss(batch, LENGTHS, cfg, use_kl, use_entropy)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-5)


def test_batch_has_clipped_tokens_in_both_directions():
    # Guards the formula test above: it exercises the clip, not just the identity branch.
    b = make_batch()
    r = np.exp(b["logp"] - b["old_logp"])[b["mask"] > 0]
    assert (r > 1.2).sum() >= 3 and (r < 0.8).sum() >= 3


@pytest.mark.parametrize("name", list(CONFIGS))
def test_metrics_match_the_formula(name):
    cfg, batch = CONFIGS[name], make_batch()
    _, m = policy_loss(**batch, cfg=cfg)
    real = batch["mask"] > 0
    r = np.exp(batch["logp"] - batch["old_logp"])[real]
    adv = np.broadcast_to(batch["advantages"][:, None], batch["mask"].shape)[real]
    d = (batch["ref_logp"] - batch["logp"])[real]
    l0 = [
        max(-a * np.exp(lp - o), -a * np.clip(np.exp(lp - o), 0.8, 1.2))
        for a, lp, o in zip(batch["advantages"], batch["logp"][:, 0], batch["old_logp"][:, 0])
    ]
    expected = {
        "clip_frac": np.mean(((adv > 0) & (r > 1.2)) | ((adv < 0) & (r < 0.8))),
        "ratio_mean": r.mean(),
        "kl_mean": np.clip(np.exp(d) - d - 1, -10, 10).mean(),
        "entropy_mean": batch["entropy"][real].mean(),
    }
    if cfg.kind == "degrpo":
        expected["control_term"] = cfg.alpha * np.mean(l0)
    else:
        expected["control_term"] = np.mean([x / (n + 1) for x, n in zip(l0, LENGTHS)])
    for key, value in expected.items():
        np.testing.assert_allclose(float(m[key]), value, rtol=1e-5, atol=1e-6, err_msg=key)
    parts = (
        m["control_term"]
        + m["response_term"]
        + cfg.kl_coef * m["kl_term"]
        - cfg.entropy_coef * m["entropy_term"]
    )
    np.testing.assert_allclose(float(parts), float(m["loss"]), rtol=1e-6)


def test_policy_loss_jits():
    cfg, batch = CONFIGS["degrpo-paper"], make_batch()
    eager_loss, eager_metrics = policy_loss(**batch, cfg=cfg)
    jit_loss, jit_metrics = jax.jit(policy_loss, static_argnames="cfg")(**batch, cfg=cfg)
    np.testing.assert_allclose(float(jit_loss), float(eager_loss), rtol=1e-6)
    assert set(jit_metrics) == set(eager_metrics)


@pytest.mark.parametrize("normalization", ["paper", "token_mean"])
def test_degrpo_control_gradient_is_alpha_scaled_and_length_free(normalization):
    lengths, adv = [1, 9, 4], [0.7, 0.7, -1.3]  # rows 0 and 1: same advantage, lengths 1 and 9
    batch = at_ratio_one(lengths, adv)
    for alpha in (0.001, 0.01, 0.5):
        cfg = LossConfig("degrpo", alpha=alpha, normalization=normalization)
        g = grad_wrt_logp(cfg, batch)
        np.testing.assert_allclose(g[:, 0], -alpha * np.asarray(adv) / len(lengths), rtol=1e-6)
    assert g[0, 0] == g[1, 0]


def test_degrpo_kl_and_entropy_leave_the_control_gradient_alone():
    lengths, adv = [3, 9, 1], [0.5, -0.25, 1.0]
    batch = at_ratio_one(lengths, adv)
    cfg = LossConfig("degrpo", alpha=0.01, kl_coef=0.5, entropy_coef=0.5)
    ref = np.where(batch["mask"] > 0, batch["logp"] - 0.7, 0.0).astype(np.float32)
    g = grad_wrt_logp(cfg, batch, ref_logp=ref, entropy=np.ones_like(ref))
    np.testing.assert_allclose(g[:, 0], -0.01 * np.asarray(adv) / 3, rtol=1e-6)
    assert g[1, 1:10].any()  # while the KL does act on the response tokens


def test_grpo_control_gradient_is_diluted_by_length():
    lengths, adv = [1, 9, 4], [0.7, 0.7, -1.3]
    batch = at_ratio_one(lengths, adv)
    g = grad_wrt_logp(LossConfig("grpo"), batch)
    per_sequence = g[:, 0] * len(lengths)  # undo the mean over sequences
    np.testing.assert_allclose(
        per_sequence, -np.asarray(adv) / (np.asarray(lengths) + 1), rtol=1e-6
    )
    assert abs(g[1, 0]) < abs(g[0, 0]) / 4  # the long response's mode choice barely moves


def test_paper_response_gradient_is_one_over_length():
    lengths, adv = [1, 9, 0], [0.7, -1.3, 2.0]
    batch = at_ratio_one(lengths, adv)
    g = grad_wrt_logp(LossConfig("degrpo", normalization="paper"), batch)
    for i, n in enumerate(lengths):
        expected = np.zeros(g.shape[1] - 1, np.float32)
        if n:
            expected[:n] = -adv[i] / n / len(lengths)
        np.testing.assert_allclose(g[i, 1:], expected, rtol=1e-6, err_msg=f"row {i}")


def test_token_mean_response_gradient_is_one_over_total_length():
    lengths, adv = [1, 9, 4], [0.7, 0.7, -1.3]
    batch = at_ratio_one(lengths, adv)
    g = grad_wrt_logp(LossConfig("degrpo", normalization="token_mean"), batch)
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(g[i, 1 : n + 1], -adv[i] / sum(lengths), rtol=1e-6)
        assert not g[i, n + 1 :].any()


def test_clipped_tokens_have_zero_gradient_and_are_counted():
    # Rows 0, 1: four response tokens with ratios 1.5, 0.5, 1.5, 0.5; row 2: A = 0.
    batch = at_ratio_one([4, 4, 4], [1.0, -1.0, 0.0])
    batch["old_logp"][:, 1:5] -= np.log([1.5, 0.5, 1.5, 0.5]).astype(np.float32)
    g = grad_wrt_logp(LossConfig("degrpo", normalization="paper"), batch)
    # A > 0 clips r > 1.2 (tokens 1, 3); A < 0 clips r < 0.8 (tokens 2, 4).
    assert g[0, 1] == 0 and g[0, 3] == 0 and g[1, 2] == 0 and g[1, 4] == 0
    # The other direction is not clipped: the gradient is -A r / T_i / B.
    np.testing.assert_allclose(g[0, [2, 4]], -1.0 * 0.5 / 4 / 3, rtol=1e-6)
    np.testing.assert_allclose(g[1, [1, 3]], 1.0 * 1.5 / 4 / 3, rtol=1e-6)
    _, m = policy_loss(**batch, cfg=LossConfig())
    assert float(m["clip_frac"]) == pytest.approx(4 / 15)  # A = 0 never clips


def test_k3_kl_is_zero_at_the_reference_and_non_negative():
    logp = jnp.asarray(make_batch()["old_logp"][0, :3])
    assert not np.asarray(k3_kl(logp, logp)).any()
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 3, (2, 1000)).astype(np.float32)
    assert (np.asarray(k3_kl(jnp.asarray(a), jnp.asarray(b))) >= 0).all()


def test_k3_kl_is_clamped_with_finite_gradients():
    logp = jnp.array([0.0, 0.0, 0.0, -200.0])
    ref = jnp.array([30.0, -30.0, -1000.0, 0.0])
    np.testing.assert_allclose(np.asarray(k3_kl(logp, ref)), 10.0)
    g = jax.grad(lambda lp: k3_kl(lp, ref).sum())(logp)
    assert np.isfinite(np.asarray(g)).all() and not np.asarray(g).any()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_control_token_only_responses_are_finite(name):
    batch = make_batch(lengths=[0, 0, 0])
    loss, m = policy_loss(**batch, cfg=CONFIGS[name])
    g = grad_wrt_logp(CONFIGS[name], batch, ref_logp=batch["ref_logp"])
    assert np.isfinite(float(loss)) and np.isfinite(g).all()
    if CONFIGS[name].kind == "degrpo":
        assert float(m["response_term"]) == 0.0


@pytest.mark.parametrize("name", list(CONFIGS))
def test_micro_batches_with_global_denominators_give_the_full_batch(name):
    cfg, batch = CONFIGS[name], make_batch()
    halves = [{k: v[:3] for k, v in batch.items()}, {k: v[3:] for k, v in batch.items()}]

    def loss_of(b, den=None):
        def f(lp):
            return policy_loss(
                lp,
                *(b[k] for k in ("old_logp", "advantages", "mask")),
                cfg,
                ref_logp=b["ref_logp"],
                entropy=b["entropy"],
                denominators=den,
            )[0]

        return jax.value_and_grad(f)(jnp.asarray(b["logp"]))

    full_loss, full_grad = loss_of(batch)
    den = merge_terms(*(loss_denominators(h["mask"], cfg) for h in halves))
    parts = [loss_of(h, den) for h in halves]
    np.testing.assert_allclose(sum(float(p[0]) for p in parts), float(full_loss), rtol=1e-5)
    np.testing.assert_allclose(
        np.concatenate([p[1] for p in parts]), np.asarray(full_grad), rtol=1e-5, atol=1e-8
    )
    # Summed terms give the full batch's metrics exactly.
    merged = merge_terms(*(loss_terms(**h, cfg=cfg) for h in halves))
    full = summarize_terms(loss_terms(**batch, cfg=cfg), cfg)
    for key, value in summarize_terms(merged, cfg).items():
        np.testing.assert_allclose(float(value), float(full[key]), rtol=1e-5, err_msg=key)


def test_all_padding_rows_change_nothing():
    cfg, batch = CONFIGS["degrpo-paper"], make_batch()
    first_half = {k: v[:3] for k, v in batch.items()}
    padded = {k: v.copy() for k, v in batch.items()}
    padded["mask"][3:] = 0.0  # rows 3..5 become batch padding
    assert float(policy_loss(**padded, cfg=cfg)[0]) == pytest.approx(
        float(policy_loss(**first_half, cfg=cfg)[0]), rel=1e-6
    )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_per_token_advantages_equal_per_response_ones_broadcast(name):
    batch = make_batch()
    per_token = np.repeat(batch["advantages"][:, None], WIDTH, 1)
    loss, _ = policy_loss(**{**batch, "advantages": per_token}, cfg=CONFIGS[name])
    assert float(loss) == pytest.approx(float(policy_loss(**batch, cfg=CONFIGS[name])[0]), rel=1e-6)


def test_per_token_advantages_reach_their_own_tokens():
    lengths, control, response = [3, 5], np.array([0.5, -1.0]), np.array([2.0, 0.25])
    batch = at_ratio_one(lengths, control)
    batch["advantages"] = np.repeat(response[:, None], WIDTH, 1).astype(np.float32)
    batch["advantages"][:, 0] = control
    g = grad_wrt_logp(LossConfig("degrpo", alpha=0.3, normalization="paper"), batch)
    np.testing.assert_allclose(g[:, 0], -0.3 * control / 2, rtol=1e-6)
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(g[i, 1 : n + 1], -response[i] / n / 2, rtol=1e-6)


def test_shapes_are_checked():
    batch = make_batch()
    with pytest.raises(ValueError, match=r"advantages must have shape \[B\] = \(6,\)"):
        policy_loss(**{**batch, "advantages": batch["advantages"][:, None]}, cfg=LossConfig())
    with pytest.raises(ValueError, match="ref_logp must have the mask's shape"):
        policy_loss(**{**batch, "ref_logp": batch["ref_logp"][:, :-1]}, cfg=LossConfig())


def test_config_rejects_unknown_choices():
    with pytest.raises(ValueError, match="kind.*'ppo'"):
        LossConfig(kind="ppo")
    with pytest.raises(ValueError, match="normalization.*'seq_mean'"):
        LossConfig(normalization="seq_mean")
    with pytest.raises(ValueError, match="clip_eps"):
        LossConfig(clip_eps=0.0)


def test_defaults_are_the_reference_run():
    cfg = LossConfig()
    assert (cfg.kind, cfg.alpha, cfg.normalization, cfg.clip_eps) == ("degrpo", 0.001, "paper", 0.2)
    assert (cfg.kl_coef, cfg.entropy_coef) == (0.001, 0.001)
