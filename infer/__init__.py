"""`python -m infer`: generation, evaluation sweeps and the decode benchmark."""
