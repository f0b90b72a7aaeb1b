"""Supervised warm-up: packed <think>/<short> samples (data.py), the loop (loop.py)."""
