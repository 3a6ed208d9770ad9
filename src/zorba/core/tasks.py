"""SST-2 and RTE: reading the TSVs, and the prompts / label words / label sentences per model kind."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from zorba.errors import UserError

_TEXT_COLUMNS = ("sentence", "content", "text")
_RTE_LABELS = {"entailment": 0, "not_entailment": 1, "0": 0, "1": 1}


@dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None
    label: int


@dataclass(frozen=True)
class Task:
    name: str
    num_labels: int
    # Causal LMs: prompt template and one label word per class (MeZO's templates).
    prompt: str
    label_words: tuple[str, ...]
    # Encoders: the example text template and one label sentence per class (cosine scoring).
    encoder_text: str
    label_sentences: tuple[str, ...]

    def causal_prompt(self, ex: Example) -> str:
        return self.prompt.format(a=ex.text_a, b=ex.text_b)

    def encoder_input(self, ex: Example) -> str:
        return self.encoder_text.format(a=ex.text_a, b=ex.text_b)


TASKS = {
    "sst2": Task(
        name="sst2",
        num_labels=2,
        prompt="{a} It was",
        label_words=(" terrible", " great"),
        encoder_text="{a}",
        label_sentences=("It was terrible.", "It was great."),
    ),
    "rte": Task(
        name="rte",
        num_labels=2,
        prompt='{a}\nDoes this mean that "{b}" is true? Yes or No?\n',
        label_words=("Yes", "No"),  # GLUE RTE: 0 = entailment, 1 = not_entailment
        encoder_text="{a} Question: {b}",
        label_sentences=("Yes, that is true.", "No, that is not true."),
    ),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


def read_examples(path: str | Path, task: Task) -> list[Example]:
    """Read a task TSV with a header; every problem is a UserError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: not a readable UTF-8 TSV ({exc})") from None
    if not rows or not any(rows[0]):
        raise UserError(f"{path}: empty file (a header line is required)")
    header, body = rows[0], rows[1:]
    parse = _parse_sst2 if task.name == "sst2" else _parse_rte
    examples = parse(path, header, body)
    if not examples:
        raise UserError(f"{path}: no examples after the header")
    return examples


def _column(path: Path, header: list[str], names: tuple[str, ...]) -> int:
    for name in names:
        if name in header:
            return header.index(name)
    raise UserError(f"{path}: missing column {' or '.join(repr(n) for n in names)} (header: {header})")


def _cell(path: Path, row: list[str], col: int, line: int) -> str:
    if col >= len(row):
        raise UserError(f"{path}:{line}: expected at least {col + 1} tab-separated fields, got {len(row)}")
    return row[col]


def _label(path: Path, value: str, line: int, mapping: dict[str, int]) -> int:
    if value.strip() not in mapping:
        raise UserError(f"{path}:{line}: bad label {value!r} (expected one of {sorted(mapping)})")
    return mapping[value.strip()]


def _parse_sst2(path: Path, header: list[str], body: list[list[str]]) -> list[Example]:
    label_col = _column(path, header, ("label",))
    text_col = _column(path, header, _TEXT_COLUMNS)
    out = []
    for line, row in enumerate(body, start=2):
        if not row:
            continue
        label = _label(path, _cell(path, row, label_col, line), line, {"0": 0, "1": 1})
        out.append(Example(_cell(path, row, text_col, line), None, label))
    return out


def _parse_rte(path: Path, header: list[str], body: list[list[str]]) -> list[Example]:
    a_col = _column(path, header, ("sentence1", "premise"))
    b_col = _column(path, header, ("sentence2", "hypothesis"))
    label_col = _column(path, header, ("label",))
    out = []
    for line, row in enumerate(body, start=2):
        if not row:
            continue
        label = _label(path, _cell(path, row, label_col, line), line, _RTE_LABELS)
        out.append(Example(_cell(path, row, a_col, line), _cell(path, row, b_col, line), label))
    return out
