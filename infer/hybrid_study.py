"""`python -m infer hybrid-study`: the hybrid against its base and thinking models, over
coefficient grids and both ablations, on one problem set (jaxthink/hybrid/study.py).

    python -m infer hybrid-study --out runs/hybrid_study          # the shipped demo pair
    python -m infer hybrid-study --model THINKING_DIR --base-model BASE_DIR --steering FILE \\
        --data test.jsonl --grids "0;0.1,0.2,0.3;0.1,0.2,0.5,1.0" --out runs/study

Each run is an evaluation directory under --out (rerun the command to resume); the report is
study.md, study.json, steered.png and gap_by_level.png there. Without --data: the demo task's
held-out problems, --problems per level.
"""

from __future__ import annotations

import sys
from pathlib import Path

from infer.hybrid import pair_paths, parse_grid


def add_arguments(p) -> None:
    p.add_argument("--out", required=True, help="output directory (one subdirectory per run)")
    p.add_argument("--model", help="the thinking model (default: the shipped demo pair's)")
    p.add_argument("--base-model", help="the base model (default: the shipped demo pair's)")
    p.add_argument("--steering", help="the steering file (default: the shipped demo pair's)")
    p.add_argument("--data", help="a JSONL/Parquet problem file (default: demo test problems)")
    p.add_argument(
        "--problems",
        type=int,
        default=60,
        help="without --data: held-out demo problems per level (default: %(default)s)",
    )
    p.add_argument(
        "--grids",
        help="coefficient grids, ';' between grids, ',' within "
        "(default: 0;0.1,0.2,0.3;0.1,...,1.0;1,2,4,8; grid 0 is the base model alone)",
    )
    p.add_argument(
        "--main-grid", help="the ablations' grid (default: 0.1,0.2,...,1.0, the hybrid's default)"
    )
    p.add_argument("--max-new-tokens", type=int, default=320, help="default: %(default)s")
    p.add_argument("--slots", type=int, default=None, help="decode slots (default: the engine's)")


def run_command(args) -> None:
    from jaxthink.hybrid.decoding import DEFAULT_COEFFICIENTS
    from jaxthink.hybrid.study import DEFAULT_GRIDS, run_study, study_markdown

    try:
        paths = pair_paths("hybrid-study", args.model, args.base_model, args.steering)
        grids = (
            DEFAULT_GRIDS
            if args.grids is None
            else [parse_grid(g, "--grids") for g in args.grids.split(";") if g.strip()]
        )
        main = (
            DEFAULT_COEFFICIENTS
            if args.main_grid is None
            else parse_grid(args.main_grid, "--main-grid")
        )
        problems = _problems(args)
        study = run_study(
            *paths,
            problems,
            args.out,
            grids=grids,
            main_grid=main,
            max_new_tokens=args.max_new_tokens,
            slots=args.slots,
        )
    except ValueError as e:
        sys.exit(f"python -m infer hybrid-study: error: {e}")
    print(study_markdown(study))


def _problems(args):
    """--data's problems, else the demo task's held-out ones, written to --out/problems.jsonl."""
    from jaxthink.eval.datasets import load_problems

    if args.data:
        return load_problems(args.data)
    from jaxthink.data.arithmetic import LEVELS, generate_problems, write_jsonl

    if args.problems < 1:
        raise ValueError(f"--problems {args.problems}: must be at least 1")
    records = generate_problems(args.problems * len(LEVELS), seed=0, split="test")
    return load_problems(write_jsonl(records, Path(args.out) / "problems.jsonl"))
