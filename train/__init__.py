"""`python -m train`: SFT warm-up, DeGRPO/GRPO reinforcement learning and the RL step benchmark.

    python -m train sft --config configs/sft_tiny.yaml [key=value ...]
    python -m train rl --config configs/rl_tiny.yaml [key=value ...]
    python -m train bench [--sizes tiny,50m]

The trainers live in `jaxthink.runs`; this package is their command line.
"""
