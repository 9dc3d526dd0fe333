"""Three local lm-eval tasks over JSONL files that tests write (no download): multiple choice,
rolling log-likelihood (perplexity, bits per byte) and generation with exact match. Every text
uses only characters of tests/integration/tiny_gpt.py's corpus, so char models can read it."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

MC_DOCS = [
    {"context": "First Citizen:\nBefore we", "choices": [" proceed any further", " speak, hear all"], "label": 0},
    {"context": "All:\nSpeak,", "choices": [" speak.", " famish?"], "label": 0},
    {"context": "You are all resolved rather to", "choices": [" die than to famish?", " proceed."], "label": 0},
    {"context": "First, you know Caius", "choices": [" Marcius is chief enemy", " Citizen is all"], "label": 0},
]
ROLLING_DOCS = [
    {"text": "First Citizen:\nBefore we proceed any further, hear me speak.\n"},
    # Longer than the tiny models' block_size of 96: scored in several windows.
    {
        "text": "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n"
        "First Citizen:\nFirst, you know Caius Marcius is chief enemy to the people.\n\n"
    },
]
GENERATION_DOCS = [
    {"prompt": "First Citizen:\nBefore we", "answer": " proceed any further, hear me speak."},
    {"prompt": "All:\nSpeak,", "answer": " speak."},
]

MC_YAML = """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
ROLLING_YAML = """task: tiny_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""
GENERATION_YAML = """task: tiny_generation
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 24
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def _write(folder: Path, name: str, docs: Sequence[Mapping[str, object]], template: str) -> Path:
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in docs), encoding="utf-8")
    task = folder / f"{name}.yaml"
    task.write_text(template.format(data=json.dumps(str(data))), encoding="utf-8")
    return task


def write_tasks(folder: Path) -> dict[str, Path]:
    """The three task YAML files (with their data) in `folder`, by kind."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "choice": _write(folder, "tiny_choice", MC_DOCS, MC_YAML),
        "rolling": _write(folder, "tiny_rolling", ROLLING_DOCS, ROLLING_YAML),
        "generation": _write(folder, "tiny_generation", GENERATION_DOCS, GENERATION_YAML),
    }
