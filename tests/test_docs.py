"""The documentation is checked against the code: the generated reference (docs/cli.md, docs/config.md, the
memory tables of docs/parallel.md and docs/inherit.md) is current and complete."""
from __future__ import annotations

import re

import pytest

from pangu_pro.cli import build_parser
from pangu_pro.reference import generated, undocumented_arguments, undocumented_keys


@pytest.mark.parametrize("path,text", list(generated().items()), ids=lambda v: getattr(v, "name", ""))
def test_generated_reference_is_current(path, text):
    current = path.read_text(encoding="utf-8") if path.is_file() else ""
    assert current == text, f"{path.name} is stale: run `python tools/gen_docs.py` and commit the result"


def test_every_flag_and_key_has_a_meaning():
    """bench flags belong to each benchmark module and are listed but not required to carry help."""
    missing = [m for m in undocumented_arguments(build_parser()) if not m.startswith("bench ")]
    assert not missing, f"add help= to: {', '.join(missing)}"
    assert not undocumented_keys(), ("add a `  # meaning` comment on the field's line: "
                                     + ", ".join(undocumented_keys()))


HAND_TYPED_MEMORY = re.compile(r"\d+(?:\.\d+)?\s*GiB")


def test_memory_figures_come_from_the_plan():
    """The memory per device in docs and config comments is `pangu-pro plan`'s, written by gen_docs into a
    marked block (docs/parallel.md, docs/inherit.md); no GiB figure is typed by hand outside the blocks
    (the docs said 25.6 and the configs ~24 GiB for the 1B preset; the plan, with the accumulation buffer, 32.7)."""
    from pangu_pro.config import load_config
    from pangu_pro.model.plan import GIB, memory_plan
    from pangu_pro.reference import PARALLEL_DOC, ROOT, memory_docs

    generated_block = re.compile(r"<!-- generated: ([\w-]+).*?<!-- end generated: \1 -->", re.S)
    typed = []
    for path in [PARALLEL_DOC, ROOT / "docs" / "ascend.md", *sorted((ROOT / "configs").rglob("*.yaml"))]:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".yaml":
            text = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
        typed += [f"{path.name}: {m.group(0)}" for m in HAND_TYPED_MEMORY.finditer(generated_block.sub("", text))]
    assert not typed, typed
    preset = load_config(ROOT / "configs" / "pangu_1b_pro.yaml")
    gib = [max(s.total(m) for s in memory_plan(preset)) / GIB for m in ("none", "selective", "full")]
    row = next(line for line in memory_docs()[PARALLEL_DOC].splitlines() if line.startswith("| `configs/pangu_1b_pro.yaml`"))
    assert " / ".join(f"{g:.1f}" for g in gib) in row and row.endswith("| none | full |"), row


def test_a_doc_without_its_generated_block_is_refused(tmp_path):
    from pangu_pro.reference import fill_block

    text = "a\n<!-- generated: memory-plan (gen_docs) -->\nold\n<!-- end generated: memory-plan -->\nb\n"
    assert fill_block(text, "memory-plan", "new\n", tmp_path) == text.replace("old\n", "new\n")
    with pytest.raises(ValueError, match="parallel.md: no `<!-- generated: memory-plan -->`"):
        fill_block("a\n", "memory-plan", "new\n", tmp_path / "parallel.md")


# ------------------------------------------------------------------------------ the shell examples

from tests.docs_examples import (ExampleError, Example, all_examples, check, doc_files,  # noqa: E402
                                 examples, make_workspace, run)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("docs"))


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.name)
def test_every_example_parses_and_its_config_validates(path, workspace):
    """Every command of every ```bash block: the real parsers, the launchers' own option parsing, the
    config with its overrides (cluster examples get only this; the others are also run, below)."""
    errors = []
    for example in examples(path):
        try:
            check(example, workspace)
        except ExampleError as err:
            errors.append(str(err))
    assert not errors, "\n".join(errors)


def test_a_wrong_flag_or_path_in_an_example_fails(workspace):
    readme = doc_files()[0]
    eval_example = next(e for e in examples(readme) if e.text.startswith("pangu-pro eval"))
    check(eval_example, workspace)
    for wrong, message in ((eval_example.text.replace("--ppl-text", "--ppl-txt"), "unrecognized arguments"),
                           ("pangu-pro params configs/tiny_cpu.yml", "configs/tiny_cpu.yml: no such config"),
                           ("pangu-pro params configs/tiny_cpu.yaml model.num_head=4", "model.num_head: unknown key"),
                           ("bash scripts/run_multi_round.sh configs/tiny_cpu.yaml --worker 2",
                            "unknown option '--worker'")):
        bad = Example(readme, eval_example.line, wrong, cluster=True)
        with pytest.raises(ExampleError, match="README.md:") as err:
            check(bad, workspace)
        assert message in str(err.value) and wrong in str(err.value), str(err.value)


@pytest.mark.slow
def test_the_readme_walkthrough_and_docs_examples_run_as_written(tmp_path):
    """Every block not marked as a cluster example runs, in order (README.md first), in one workspace."""
    from pangu_pro.train.metrics import read_metrics

    work = make_workspace(tmp_path / "work")
    ran = [e for e in all_examples() if not e.cluster]
    assert any(e.path.name == "README.md" for e in ran)
    for example in ran:
        run(example, work)
    # the walkthrough's training run: MFU against this machine's peak is a fraction
    mfus = [r["mfu"] for r in read_metrics(work / "runs" / "tiny", "train")]
    assert mfus and all(0 < m <= 1 for m in mfus), mfus
    assert (work / "runs" / "tiny" / "eval.json").is_file()
