"""Benchmark tasks: where each one's files lie, how a row becomes a scored example, and k-shot prompts.

A *choice example* is ``(context, [continuations], gold)``: the model scores each continuation
after the context and the one with the best score is its answer. A *generation example* is
``(prompt, reference)``. The per-task adapters below are small pure functions from one raw row (a
CSV row as a dict, or one JSON object) to such an example; the loaders only read files and group
rows. Layouts follow each benchmark's public release as OpenCompass's data folder unpacks it, so
``--data-dir`` can point at such a folder (docs/eval.md lists every file and field).

Nothing here downloads: a missing file raises FileNotFoundError naming the file and the layout.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from pangu_pro.io import read_json as read_json_file

LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Example:
    context: str
    continuations: tuple[str, ...]
    gold: int  # -1: no single continuation is right (an AGI-Eval item with several answers; never a shot)


@dataclass
class Group:
    """The items of one subject (exams) or of the whole task, with the pool its k shots come from.

    `shots_from_items`: the pool is the items themselves, and an item never sees itself as a shot.
    """

    name: str
    header: str
    items: list[Example]
    shot_pool: list[Example] = field(default_factory=list)
    shots_from_items: bool = False
    shot_file: Optional[str] = None  # named in the error when too few shots are there


# ----------------------------------------------------------------------------------------------
# adapters: one raw row -> Example (pure)


def _letter_gold(value, where: str) -> int:
    letter = str(value).strip().upper()
    if letter not in LETTERS:
        raise ValueError(f"{where}: answer {value!r} is not one of A, B, C, D")
    return LETTERS.index(letter)


def _field(row: dict, name: str, where: str):
    if name not in row:
        raise ValueError(f"{where}: missing field {name!r} (has {sorted(row)})")
    return row[name]


def exam_example(question: str, options: list[str], answer, where: str, answer_word: str) -> Example:
    """A four-option exam question scored by the answer letter, OpenCompass's PPL template."""
    lines = [question.strip()] + [f"{letter}. {text.strip()}" for letter, text in zip(LETTERS, options)]
    return Example("\n".join(lines) + f"\n{answer_word}: ", LETTERS, _letter_gold(answer, where))


def ceval_item(row: dict, where: str = "ceval") -> Example:
    """C-Eval CSV row: id, question, A, B, C, D, answer[, explanation]."""
    options = [_field(row, k, where) for k in LETTERS]
    return exam_example(_field(row, "question", where), options, _field(row, "answer", where), where, "答案")


def cmmlu_item(row: dict, where: str = "cmmlu") -> Example:
    """CMMLU CSV row: (unnamed index), Question, A, B, C, D, Answer."""
    options = [_field(row, k, where) for k in LETTERS]
    return exam_example(_field(row, "Question", where), options, _field(row, "Answer", where), where, "答案")


def mmlu_item(row: list[str], where: str = "mmlu") -> Example:
    """MMLU CSV row without a header: question, A, B, C, D, answer."""
    if len(row) != 6:
        raise ValueError(f"{where}: expected 6 columns (question, A, B, C, D, answer), got {len(row)}")
    return exam_example(row[0], list(row[1:5]), row[5], where, "Answer")


def boolq_item(row: dict, where: str = "boolq") -> Example:
    """SuperGLUE BoolQ: passage, question, label (true/false); the original release names it `answer`."""
    label = row["label"] if "label" in row else _field(row, "answer", where)
    if isinstance(label, str):
        label = {"true": True, "false": False}.get(label.strip().lower(), label)
    if label not in (True, False, 0, 1):
        raise ValueError(f"{where}: label {label!r} is not a boolean")
    question = str(_field(row, "question", where)).strip().rstrip("?")
    return Example(f"{_field(row, 'passage', where)}\nQuestion: {question}?\nAnswer:", (" No", " Yes"), int(bool(label)))


def piqa_item(row: dict, label, where: str = "piqa") -> Example:
    """PIQA: goal, sol1, sol2 with the label (0 or 1) from the matching line of the labels file."""
    try:
        gold = int(str(label).strip())
    except ValueError:
        raise ValueError(f"{where}: label {label!r} is not 0 or 1") from None
    if gold not in (0, 1):
        raise ValueError(f"{where}: label {gold} is not 0 or 1")
    sols = (" " + str(_field(row, "sol1", where)).strip(), " " + str(_field(row, "sol2", where)).strip())
    return Example(str(_field(row, "goal", where)).strip(), sols, gold)


def c3_items(entry, where: str = "c3") -> list[Example]:
    """One C3 document, ``[[paragraph, ...], [{question, choice: [...], answer}, ...], id]``: one Example per question."""
    if not isinstance(entry, list) or len(entry) < 2:
        raise ValueError(f"{where}: expected [[paragraphs], [questions], id], got {type(entry).__name__}")
    paragraphs, questions = entry[0], entry[1]
    content = "".join(paragraphs) if isinstance(paragraphs, list) else str(paragraphs)
    examples = []
    for q in questions:
        choices = [str(c) for c in _field(q, "choice", where)]
        answer = str(_field(q, "answer", where))
        if answer not in choices:
            raise ValueError(f"{where}: answer {answer!r} is not among the choices {choices}")
        examples.append(Example(f"文章：{content}\n问题：{_field(q, 'question', where)}\n答案：", tuple(choices),
                                choices.index(answer)))
    return examples


def axb_item(row: dict, where: str = "ax-b") -> Example:
    """SuperGLUE AX-b: sentence1, sentence2, label (entailment / not_entailment)."""
    label = str(_field(row, "label", where))
    if label not in ("entailment", "not_entailment"):
        raise ValueError(f"{where}: label {label!r} is not entailment / not_entailment")
    context = (f"{_field(row, 'sentence1', where)}\n{_field(row, 'sentence2', where)}\n"
               "Is the sentence below entailed by the sentence above? Answer:")
    return Example(context, (" Yes", " No"), 0 if label == "entailment" else 1)


def eprstmt_item(row: dict, where: str = "eprstmt") -> Example:
    """FewCLUE EPRSTMT: sentence, label (Negative / Positive)."""
    label = str(_field(row, "label", where))
    if label not in ("Negative", "Positive"):
        raise ValueError(f"{where}: label {label!r} is not Negative / Positive")
    return Example(f'内容： "{_field(row, "sentence", where)}"。情绪分类：', ("消极。", "积极。"),
                   ("Negative", "Positive").index(label))


# AGI-Eval v1 (github.com/ruixiangcui/AGIEval, data/v1/{subset}.jsonl): the subsets OpenCompass's mixed
# config scores by perplexity over the option letters, each with the line it puts before the question.
# Not scored here: jec-qa-kd / jec-qa-ca (several answers, generated) and the cloze subsets.
AGIEVAL_SUBSETS = {
    "gaokao-chinese": "以下是一道中国高考语文选择题，请选择正确的答案。",
    "gaokao-english": "以下是一道中国高考英语选择题，请选择正确的答案。",
    "gaokao-geography": "以下是一道中国高考地理选择题，请选择正确的答案。",
    "gaokao-history": "以下是一道中国高考历史选择题，请选择正确的答案。",
    "gaokao-biology": "以下是一道中国高考生物选择题，请选择正确的答案。",
    "gaokao-chemistry": "以下是一道中国高考化学选择题，请选择正确的答案。",
    "gaokao-physics": "以下是一道中国高考物理选择题，请选择正确的答案。",
    "gaokao-mathqa": "以下是一道中国高考数学选择题，请选择正确的答案。",
    "logiqa-zh": "以下是一道中国公务员考试题，请选择正确的答案。",
    "lsat-ar": "The following is a LSAT Analytical Reasoning question. Please select the correct answer.",
    "lsat-lr": "The following is a LSAT Logical Reasoning question. Please select the correct answer.",
    "lsat-rc": "The following is a LSAT Reading Comprehension question. Please select the correct answer.",
    "logiqa-en": "The following is a Logic Reasoning question. Please select the correct answer.",
    "sat-math": "The following is a SAT Math question. Please select the correct answer.",
    "sat-en": "The following is a SAT English question. Please select the correct answer.",
    "sat-en-without-passage": "The following is a SAT English question. Please select the correct answer.",
    "aqua-rat": "The following is a AQUA-RAT question. Please select the correct answer.",
}
AGIEVAL_FIVE_OPTIONS = ("lsat-ar", "lsat-lr", "lsat-rc", "aqua-rat")


def agieval_item(row: dict, subset: str, where: str = "agieval") -> Example:
    """AGI-Eval v1 row: passage (or null), question, options ["(A)...", ...], label (a letter, or a list of
    letters), answer (cloze), other. Prompt: the subset's line, passage + question, the options one a
    line, then "答案是：" (the Chinese exams, gaokao-english included) or "The answer is " -> A..D (A..E for
    LSAT and AQuA-RAT). An item with several right letters gets gold -1: no single letter is right, so it
    counts as wrong, as under OpenCompass's single-label perplexity scoring."""
    letters = tuple("ABCDE" if subset in AGIEVAL_FIVE_OPTIONS else "ABCD")
    options = _field(row, "options", where)
    if not isinstance(options, list) or not options:
        raise ValueError(f"{where}: options {options!r} is not a list of choices (a cloze item?)")
    label = _field(row, "label", where)
    label = "".join(label) if isinstance(label, list) else str(label or "")
    label = label.strip().upper()
    if not label or any(c not in letters for c in label):
        raise ValueError(f"{where}: label {label!r} is not made of {', '.join(letters)}")
    passage = row.get("passage") or ""
    hint = "The answer is " if AGIEVAL_SUBSETS[subset].startswith("The following") else "答案是："
    context = f"{AGIEVAL_SUBSETS[subset]}\n{passage}{_field(row, 'question', where)}\n" + "\n".join(
        str(o) for o in options) + f"\n{hint}"
    return Example(context, letters, letters.index(label) if len(label) == 1 else -1)


def xsum_item(row: dict, where: str = "xsum") -> tuple[str, str]:
    """XSum (OpenCompass layout): dialogue (the document), summary; the Hugging Face release names it `document`."""
    document = row["dialogue"] if "dialogue" in row else _field(row, "document", where)
    return (f"Document：{document}\nBased on the previous text, provide a brief single summary:",
            str(_field(row, "summary", where)))


# ----------------------------------------------------------------------------------------------
# prompts


def shot_text(example: Example) -> str:
    """A solved example as it appears among the k shots."""
    return example.context + example.continuations[example.gold] + "\n\n"


def build_context(group: Group, index: int, shots: int) -> str:
    """The context scored for item `index` of `group`: header, `shots` solved examples, the item's context."""
    pool = group.shot_pool
    chosen = [ex for i, ex in enumerate(pool)
              if ex.gold >= 0 and not (group.shots_from_items and i == index)][:shots]
    if len(chosen) < shots:
        raise ValueError(f"{group.name}: {shots} shots asked, only {len(chosen)} examples to take them from")
    return group.header + "".join(shot_text(ex) for ex in chosen) + group.items[index].context


# ----------------------------------------------------------------------------------------------
# file reading (errors name the file and the expected layout)


def _missing(path: Path, layout: str) -> FileNotFoundError:
    return FileNotFoundError(f"{path}: dataset file not found (the harness never downloads). Expected: {layout}")


def read_csv_dicts(path: Path, layout: str) -> list[dict]:
    if not path.is_file():
        raise _missing(path, layout)
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def read_csv_rows(path: Path, layout: str) -> list[list[str]]:
    if not path.is_file():
        raise _missing(path, layout)
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [row for row in csv.reader(f) if row]


def read_jsonl(path: Path, layout: str) -> list:
    if not path.is_file():
        raise _missing(path, layout)
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: not a JSON line ({err.msg}). Expected: {layout}") from None
    return rows


def read_json(path: Path, layout: str):
    if not path.is_file():
        raise _missing(path, layout)
    try:
        return read_json_file(path)
    except ValueError as err:  # names the file and the line
        raise ValueError(f"{err}. Expected: {layout}") from None


# ----------------------------------------------------------------------------------------------
# tasks


@dataclass(frozen=True)
class Task:
    name: str
    column: str  # the paper table's column
    kind: str  # "choice" or "generation"
    layout: str  # one line for errors; docs/eval.md has the full description
    load: Callable[[Path], list]  # data_dir -> [Group] (choice) or [(prompt, reference)] (generation)


def _exam_loader(folder: str, eval_split: str, file_pattern: str, adapter, header: Callable[[str], str],
                 layout: str, has_header: bool = True):
    def load(data_dir: Path) -> list[Group]:
        root = Path(data_dir) / folder
        eval_dir = root / eval_split
        if not eval_dir.is_dir():
            raise _missing(eval_dir, layout)
        suffix = file_pattern.format(subject="", split=eval_split)
        files = sorted(eval_dir.glob(f"*{suffix}"))
        if not files:
            raise FileNotFoundError(f"{eval_dir}: no *{suffix} files. Expected: {layout}")
        groups = []
        for path in files:
            subject = path.name[: -len(suffix)] if suffix else path.stem
            dev = root / "dev" / file_pattern.format(subject=subject, split="dev")
            reader = read_csv_dicts if has_header else read_csv_rows
            items = [adapter(row, f"{path}:{i + 2 if has_header else i + 1}")
                     for i, row in enumerate(reader(path, layout))]
            pool = [adapter(row, f"{dev}:{i}") for i, row in enumerate(reader(dev, layout))] if dev.is_file() else None
            groups.append(Group(subject, header(subject), items, pool or [], shot_file=str(dev)))
        return groups
    return load


def _single_loader(relative: str, read, adapter, layout: str):
    def load(data_dir: Path) -> list[Group]:
        path = Path(data_dir) / relative
        rows = read(path, layout)
        items = []
        for i, row in enumerate(rows):
            made = adapter(row, f"{path}:{i + 1}")
            items.extend(made if isinstance(made, list) else [made])
        return [Group(Path(relative).parts[-2], "", items, items, shots_from_items=True)]
    return load


def _load_piqa(data_dir: Path) -> list[Group]:
    path = Path(data_dir) / "piqa" / "dev.jsonl"
    labels_path = path.with_name("dev-labels.lst")
    rows = read_jsonl(path, PIQA_LAYOUT)
    if not labels_path.is_file():
        raise _missing(labels_path, PIQA_LAYOUT)
    labels = [line for line in labels_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(labels) != len(rows):
        raise ValueError(f"{labels_path}: {len(labels)} labels for the {len(rows)} items of {path}")
    items = [piqa_item(row, label, f"{path}:{i + 1}") for i, (row, label) in enumerate(zip(rows, labels))]
    return [Group("piqa", "", items, items, shots_from_items=True)]


def _load_agieval(data_dir: Path) -> list[Group]:
    groups = []
    for subset in AGIEVAL_SUBSETS:
        path = Path(data_dir) / "AGIEval" / "data" / "v1" / f"{subset}.jsonl"
        items = [agieval_item(row, subset, f"{path}:{i + 1}")
                 for i, row in enumerate(read_jsonl(path, AGIEVAL_LAYOUT))]
        groups.append(Group(subset, "", items, items, shots_from_items=True))
    return groups


def _load_xsum(data_dir: Path) -> list[tuple[str, str]]:
    path = Path(data_dir) / "Xsum" / "dev.jsonl"
    return [xsum_item(row, f"{path}:{i + 1}") for i, row in enumerate(read_jsonl(path, XSUM_LAYOUT))]


CEVAL_LAYOUT = ("ceval/formal_ceval/val/{subject}_val.csv (and dev/{subject}_dev.csv for shots), "
                "CSV with header id,question,A,B,C,D,answer[,explanation]")
CMMLU_LAYOUT = "cmmlu/test/{subject}.csv (and dev/{subject}.csv for shots), CSV with header ,Question,A,B,C,D,Answer"
MMLU_LAYOUT = ("mmlu/test/{subject}_test.csv (and dev/{subject}_dev.csv for shots), CSV without header: "
               "question,A,B,C,D,answer")
AGIEVAL_LAYOUT = ("AGIEval/data/v1/{subset}.jsonl for the 17 single-answer subsets (docs/eval.md), JSON lines "
                  "with passage, question, options, label, answer, other")
BOOLQ_LAYOUT = "SuperGLUE/BoolQ/val.jsonl, JSON lines with passage, question, label (true/false)"
PIQA_LAYOUT = "piqa/dev.jsonl (JSON lines with goal, sol1, sol2) and piqa/dev-labels.lst (one 0/1 per line)"
C3_LAYOUT = ("CLUE/C3/dev_0.json, one JSON array of documents [[paragraphs], [{question, choice, answer}], id]")
AXB_LAYOUT = "SuperGLUE/AX-b/AX-b.jsonl, JSON lines with sentence1, sentence2, label (entailment/not_entailment)"
EPRSTMT_LAYOUT = "FewCLUE/eprstmt/dev_few_all.json, JSON lines with sentence, label (Negative/Positive)"
XSUM_LAYOUT = "Xsum/dev.jsonl, JSON lines with dialogue (the document) and summary"

TASKS: dict[str, Task] = {t.name: t for t in [
    Task("ceval", "C-Eval", "choice", CEVAL_LAYOUT, _exam_loader(
        "ceval/formal_ceval", "val", "{subject}_{split}.csv", ceval_item,
        lambda s: f"以下是中国关于{s.replace('_', ' ')}考试的单项选择题，请选出其中的正确答案。\n\n", CEVAL_LAYOUT)),
    Task("cmmlu", "CMMLU", "choice", CMMLU_LAYOUT, _exam_loader(
        "cmmlu", "test", "{subject}.csv", cmmlu_item,
        lambda s: f"以下是关于{s.replace('_', ' ')}的单项选择题，请直接给出正确答案的选项。\n\n", CMMLU_LAYOUT)),
    Task("mmlu", "MMLU", "choice", MMLU_LAYOUT, _exam_loader(
        "mmlu", "test", "{subject}_{split}.csv", mmlu_item,
        lambda s: f"The following are multiple choice questions (with answers) about {s.replace('_', ' ')}.\n\n",
        MMLU_LAYOUT, has_header=False)),
    Task("agieval", "AGI-Eval", "choice", AGIEVAL_LAYOUT, _load_agieval),
    Task("boolq", "BoolQ", "choice", BOOLQ_LAYOUT,
         _single_loader("SuperGLUE/BoolQ/val.jsonl", read_jsonl, boolq_item, BOOLQ_LAYOUT)),
    Task("ax-b", "AX-b", "choice", AXB_LAYOUT,
         _single_loader("SuperGLUE/AX-b/AX-b.jsonl", read_jsonl, axb_item, AXB_LAYOUT)),
    Task("piqa", "PIQA", "choice", PIQA_LAYOUT, _load_piqa),
    Task("eprstmt", "EPRSTMT", "choice", EPRSTMT_LAYOUT,
         _single_loader("FewCLUE/eprstmt/dev_few_all.json", read_jsonl, eprstmt_item, EPRSTMT_LAYOUT)),
    Task("xsum", "XSum", "generation", XSUM_LAYOUT, _load_xsum),
    Task("c3", "C3", "choice", C3_LAYOUT,
         _single_loader("CLUE/C3/dev_0.json", read_json, c3_items, C3_LAYOUT)),
]}
ALIASES = {"axb": "ax-b", "ax_b": "ax-b", "c-eval": "ceval", "agi-eval": "agieval", "agi": "agieval"}


def resolve_tasks(names: str | list[str]) -> list[Task]:
    """Tasks from a comma-separated list (or 'all'), in the order given."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    if names == ["all"]:
        return list(TASKS.values())
    tasks = []
    for raw in names:
        key = ALIASES.get(raw.strip().lower(), raw.strip().lower())
        if key not in TASKS:
            raise ValueError(f"unknown task {raw!r}: expected some of {', '.join(TASKS)} (or all)")
        tasks.append(TASKS[key])
    return tasks


def check_shots(group: Group, shots: int) -> None:
    """Raise naming the dev file when `shots` examples cannot be taken for `group`."""
    if shots == 0 or group.shots_from_items:
        return
    if len(group.shot_pool) < shots:
        where = group.shot_file or group.name
        raise FileNotFoundError(f"{where}: {shots}-shot prompts need this dev file with at least {shots} rows "
                                f"(has {len(group.shot_pool)})")


def limit_items(groups: list[Group], limit: Optional[int]) -> list[Group]:
    """At most `limit` items per group (the first ones), for quick runs."""
    if limit is None:
        return groups
    return [Group(g.name, g.header, g.items[:limit], g.shot_pool, g.shots_from_items, g.shot_file) for g in groups]
