"""`python -m infer --data FILE --out DIR`: evaluate modes on a problem set, resumably.

    python -m infer --data test.jsonl --mode no_think --mode think_budget=128,256,512 --n 8 \\
        --temperature 0.6 --out runs/eval

The command line of `jaxthink.eval.runner.evaluate` (which writes, resumes and reports): reads the
problems with the --data flags and prints the summary table (or JSON).
"""

from __future__ import annotations

import json
import sys

from jaxthink.eval import DatasetError, Problem, load_problems, report
from jaxthink.eval.runner import SAMPLES_JSONL, evaluate
from jaxthink.policies import ModeOptions


def evaluate_cli(
    command, problems, model, tokenizer, options: ModeOptions, generate_fn=None
) -> None:
    """`python -m infer --data FILE --out DIR ...`: evaluates `command` (a `GenerateCommand`)
    on its problems (`load_cli_problems`) and prints the table (or JSON)."""
    settings = command.settings
    if settings.n > 1 and settings.temperature == 0:
        print(
            f"warning: --n {settings.n} with --temperature 0 (greedy) gives {settings.n} "
            "identical samples per problem; pass e.g. --temperature 0.6 for parallel scaling",
            file=sys.stderr,
        )
    info = {"data": str(command.data), "model": command.model or "demo"}
    if command.hybrid:  # the pair, the steering file and the grid are settings of the run too
        h = command.hybrid
        info.update(
            model=h.model,
            base_model=h.base_model,
            steering=h.steering,
            coefficients=list(h.coefficients),
            ablation=h.ablation,
        )
    summary = evaluate(
        model,
        tokenizer,
        problems,
        command.modes,
        settings,
        out_dir=command.out,
        options=options,
        info=info,
        generate_fn=generate_fn,
        chat=not command.raw,
        system=command.system,
    )
    if command.json:
        print(json.dumps(summary), flush=True)
    else:
        print(report.markdown(summary))
        print(
            f"wrote {command.out}/: {SAMPLES_JSONL}, {report.SUMMARY_JSON}, "
            f"{report.SUMMARY_MD}, {report.PASS_AT_K_PNG}, {report.PARETO_PNG}"
        )


# load_problems' keywords, as `python -m infer` spells them (its errors name the keywords)
DATA_FLAGS = {
    "preset=": "--preset",
    "question_field=": "--question-field",
    "answer_field=": "--answer-field",
}


def load_cli_problems(command) -> list[Problem]:
    """The problems of --data, read with --preset / --question-field / --answer-field; errors
    name the command line's flags."""
    try:
        problems = load_problems(
            command.data, command.preset, command.question_field, command.answer_field
        )
    except DatasetError as error:
        message = str(error)
        for keyword, flag in DATA_FLAGS.items():
            message = message.replace(keyword, flag)
        raise ValueError(message) from None
    if not problems:
        raise ValueError(f"{command.data}: the file holds no problems")
    return problems
