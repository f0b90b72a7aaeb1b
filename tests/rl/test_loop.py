"""The RL trainer's pieces on a real tiny model: the loss against `policy_loss` on log-probs
computed directly with `forward`, micro-batch accumulation, response widths, the reward table."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxthink
from jaxthink.decode.generate import Generation
from jaxthink.decode.sampler import left_pad
from jaxthink.rl import LossConfig, RewardConfig, group_advantages, mode_advantages, policy_loss
from jaxthink.rl.config import RLConfig, RolloutConfig
from jaxthink.rl.loop import (
    RLSetup,
    accumulate_gradients,
    mini_batches,
    resharding,
    rl_step,
    training_arrays,
)
from jaxthink.rl.rollout import Rollout, collect, response_width, right_pad, score
from jaxthink.runs.config import ModelSpec
from jaxthink.runs.logprobs import response_logprobs
from jaxthink.runs.mesh import Layout
from jaxthink.runs.model import build_model
from jaxthink.sharding import MeshConfig, make_mesh

TEMPERATURE = 0.7
CONFIGS = {
    "degrpo-paper": LossConfig("degrpo", alpha=0.3, normalization="paper", kl_coef=0.2),
    "degrpo-token_mean": LossConfig("degrpo", alpha=0.3, normalization="token_mean"),
    "grpo": LossConfig("grpo", kl_coef=0.2, entropy_coef=0.05),
}


SPEC = ModelSpec(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1)
LENGTHS = [5, 1, 12, 3, 20, 8]  # response tokens per row, control token included


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, tokenizer, _ = build_model(SPEC, tmp_path_factory.mktemp("rl_model"))
    return model, tokenizer


def training_batch(tokenizer, seed=0):
    """A ragged batch of real prompts and random responses that open with a control token,
    varied advantages, and old/ref log-probs near the current ones."""
    rng = np.random.default_rng(seed)
    prompts = [tokenizer.encode(f"Q: {q}\nA:") for q in ("1+2", "34+5", "7-9")] * 2
    control = [tokenizer.convert_tokens_to_ids(t) for t in ("<think>", "<short>")]
    responses = [
        [control[i % 2]] + rng.integers(6, 100, n - 1).tolist() for i, n in enumerate(LENGTHS)
    ]
    prompt_tokens, prompt_valid = left_pad(prompts, 0)
    response_tokens, mask = right_pad(responses, 0, 32)
    return {
        "prompt_tokens": prompt_tokens,
        "prompt_valid": prompt_valid,
        "response_tokens": response_tokens,
        "response_mask": mask,
        "advantages": rng.normal(size=len(LENGTHS)).astype(np.float32),
        "old_logp": (rng.normal(-4.0, 0.3, mask.shape) * mask).astype(np.float32),
        "ref_logp": (rng.normal(-4.0, 0.3, mask.shape) * mask).astype(np.float32),
    }


def direct_logprobs(model, arrays):
    """Log-probs and entropies straight from `forward`, written out position by position."""
    prompt, response = arrays["prompt_tokens"], arrays["response_tokens"]
    mask = arrays["response_mask"]
    tokens = np.concatenate([prompt, response], 1)
    valid = np.concatenate([arrays["prompt_valid"], mask > 0], 1)
    logits = np.asarray(jaxthink.forward(model, tokens, valid), np.float64) / TEMPERATURE
    p = prompt.shape[1]
    logp = np.zeros(mask.shape)
    entropy = np.zeros(mask.shape)
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[b, t]:
                row = logits[b, p + t - 1]  # the logits that predicted response token t
                log_probs = row - np.log(np.exp(row - row.max()).sum()) - row.max()
                logp[b, t] = log_probs[response[b, t]]
                entropy[b, t] = -(np.exp(log_probs) * log_probs).sum()
    return logp.astype(np.float32), entropy.astype(np.float32)


@functools.partial(jax.jit, static_argnums=0)
def trainer_losses(graphdef, params, batch):
    """The trainer's loss under every config, in one compiled program."""
    return {
        n: accumulate_gradients(graphdef, params, batch, c, TEMPERATURE)[0]
        for n, c in CONFIGS.items()
    }


@pytest.fixture(scope="module")
def batch(tiny):
    return training_batch(tiny[1])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_trainer_loss_equals_policy_loss_on_forward_logprobs(tiny, batch, name):
    model, _ = tiny
    logp, entropy = direct_logprobs(model, batch)
    expected, _ = policy_loss(
        logp,
        batch["old_logp"],
        batch["advantages"],
        batch["response_mask"],
        CONFIGS[name],
        ref_logp=batch["ref_logp"],
        entropy=entropy,
    )
    graphdef, params = nnx.split(model)
    rows = len(LENGTHS)
    losses = trainer_losses(graphdef, params, mini_batches(batch, np.arange(rows), 1, rows)[0])
    np.testing.assert_allclose(float(losses[name]), float(expected), rtol=1e-5, atol=1e-6)


@functools.partial(jax.jit, static_argnums=(0, 4))
def whole_and_micro(graphdef, params, whole, micro, name):
    cfg = CONFIGS[name]
    return (
        accumulate_gradients(graphdef, params, whole, cfg, TEMPERATURE),
        accumulate_gradients(graphdef, params, micro, cfg, TEMPERATURE, remat=True),
    )


def test_micro_batches_add_up_to_the_whole_batch(tiny, batch):
    """...and recomputing the blocks in the backward pass (remat, on the micro side) changes
    nothing."""
    model, _ = tiny
    graphdef, params = nnx.split(model)
    order = np.random.default_rng(0).permutation(len(LENGTHS))
    whole = mini_batches(batch, order, 1, 6)[0]  # [1, 6, ...]
    micro = mini_batches(batch, order, 1, 2)[0]  # [3, 2, ...]
    (loss_w, grads_w, terms_w), (loss_m, grads_m, terms_m) = whole_and_micro(
        graphdef, params, whole, micro, "degrpo-token_mean"
    )
    np.testing.assert_allclose(float(loss_m), float(loss_w), rtol=1e-5, atol=1e-7)
    for a, b in zip(jax.tree.leaves(grads_m), jax.tree.leaves(grads_w), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    for key in ("clip_frac", "kl_mean", "entropy_mean", "control", "response"):
        np.testing.assert_allclose(terms_m[key].mean, terms_w[key].mean, rtol=1e-5)


def test_response_width_is_a_bounded_power_of_two():
    assert response_width(1, 1024) == 32
    assert response_width(33, 1024) == 64
    assert response_width(300, 1024) == 512
    assert response_width(1000, 1000) == 1024  # max_new_tokens rounded up to 32
    assert response_width(90, 96) == 96


def test_truncated_thinking_is_wrong_even_with_the_right_answer():

    def gen(text, ids, mode):
        return Generation(
            prompt="1+1",
            prompt_ids=[7],
            text=text,
            thinking="",
            answer="",
            mode="thinkless",
            chosen_mode=mode,
            token_ids=ids,
            logprobs=[],
            num_thinking_tokens=0,
            num_answer_tokens=0,
            num_tokens=len(ids),
            confidence=0.0,
            finish_reason="length",
            budget_forced=False,
            seconds=0.0,
        )

    end_think = 4
    gens = [
        gen("<think>1+1=2 \\boxed{2}", [3, 9, 9], "think"),  # cut before </think>
        gen("<think>ok</think>\\boxed{2}", [3, 9, 4, 9], "think"),
        gen("<short>\\boxed{2}", [5, 9], "short"),
        gen("<short>\\boxed{3}", [5, 9], "short"),
    ]
    lengths = np.array([g.num_tokens for g in gens])
    rewards, think, correct, truncated = score(gens, ["2"] * 4, lengths, end_think, RewardConfig())
    np.testing.assert_array_equal(rewards, [-1.0, 0.5, 1.0, -1.0])
    np.testing.assert_array_equal(truncated, [True, False, False, False])
    assert jnp.asarray(think).tolist() == [True, True, False, False]


@pytest.mark.parametrize("baseline", ["group", "mode"])
def test_training_advantages_by_response_baseline(baseline):
    """ "group": one advantage per row; "mode": the group's on the control token, the same-mode
    samples' on every response token after it."""
    rewards = np.array([1.0, 0.8, 0.8, 1.0, 1.0, -1.0, -1.0, 0.8], np.float32)
    think = np.array([0, 1, 1, 0, 0, 0, 1, 1], bool)
    rollout = Rollout(
        prompt_tokens=np.zeros((8, 4), np.int32),
        prompt_valid=np.ones((8, 4), bool),
        response_tokens=np.zeros((8, 6), np.int32),
        response_mask=np.ones((8, 6), np.float32),
        rewards=rewards,
        think=think,
        correct=rewards > 0,
        truncated=np.zeros(8, bool),
        lengths=np.full(8, 6, np.int32),
        generations=[],
    )
    cfg = RLConfig(
        rollout=RolloutConfig(group_size=4, prompts_per_step=2),
        normalize_std=True,
        response_baseline=baseline,
    )
    adv = training_arrays(rollout, cfg)["advantages"]
    group = np.asarray(group_advantages(rewards, 4, normalize_std=True))
    if baseline == "group":
        np.testing.assert_array_equal(adv, group)
        return
    assert adv.shape == (8, 6)
    np.testing.assert_array_equal(adv[:, 0], group)
    within = np.asarray(mode_advantages(rewards, think, 4, normalize_std=True))
    np.testing.assert_array_equal(adv[:, 1:], np.repeat(within[:, None], 5, 1))
    # prompt 0: <think> loses to <short>, but its two right traces are not pushed down
    assert adv[1, 0] < 0 and adv[2, 0] < 0 and not adv[1:3, 1:].any()
    assert adv[7, 1] > 0 > adv[6, 1]  # prompt 1: the right trace against the wrong one


def test_rollout_logprobs_are_the_trainers_on_its_arrays(tiny):
    """The sampler's log-probs of a rollout (rows flowing through fewer slots than rows) equal
    the trainer's recomputation on the rollout's own prompt and response arrays."""

    model, tokenizer = tiny
    records = [{"question": q, "answer": "3"} for q in ("1+2", "34+5", "7-9")]
    cfg = RolloutConfig(group_size=2, max_new_tokens=12, temperature=TEMPERATURE, slots=4)
    r = collect(model, tokenizer, records, cfg, RewardConfig(), seed=1)
    assert [len(g.prompt_ids) for g in r.generations] == [int(v.sum()) for v in r.prompt_valid]
    logp, _ = response_logprobs(
        model, r.prompt_tokens, r.prompt_valid, r.response_tokens, r.response_mask, TEMPERATURE
    )
    for b, g in enumerate(r.generations):
        np.testing.assert_allclose(np.asarray(logp)[b, : g.num_tokens], g.logprobs, atol=2e-5)


def test_a_second_rl_step_traces_and_compiles_nothing(tiny):
    """After the first step has compiled the rollout's and the update's programs, a step of new
    prompts of the same shapes (old and reference log-probs included) only runs them."""
    model, tokenizer = tiny
    cfg = RLConfig(
        rollout=RolloutConfig(
            group_size=2, prompts_per_step=2, max_new_tokens=8, temperature=TEMPERATURE
        ),
        loss=LossConfig(kl_coef=0.1),
        mini_batches=2,
        steps=2,
    )
    graphdef, params = nnx.split(model)
    params = jax.tree.map(jnp.copy, params)  # the update donates them
    setup, tx = RLSetup.create(cfg, graphdef, tokenizer, params)
    opt_state = tx.init(params)
    records = [
        [{"question": q, "answer": "3"} for q in pair] for pair in (("1+2", "4-1"), ("6/2", "9-6"))
    ]
    events = []
    listener = lambda event, seconds, **_: events.append(event)
    compiled = lambda: [e for e in events if "trace" in e or "compile" in e]
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        params, opt_state, _ = rl_step(setup, params, opt_state, records[0], jax.random.key(0))
        first = len(compiled())
        rl_step(setup, params, opt_state, records[1], jax.random.key(1))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert first > 0 and len(compiled()) == first, compiled()[first:]


def test_the_sampling_copy_is_one_program_per_layout(tiny):
    """The rollout's resharded copy of the parameters (FSDP meshes) is made by one jitted
    function per layout, not a new one (traced and compiled again) every step."""
    _, params = nnx.split(tiny[0])
    mesh = make_mesh(MeshConfig(1, 1, 1))
    copy = resharding(Layout.of(params, mesh))
    assert resharding(Layout.of(params, mesh)) is copy
    for _ in range(2):
        jax.block_until_ready(copy(params))
    assert copy._cache_size() == 1
