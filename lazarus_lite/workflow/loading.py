"""Reading workflow files: parse, validate the definition, check that every step function is
registered and that every step's reads resolve (`references`). A bad file is refused with a
WorkflowError naming the file, the step and what is wrong.
Not for: the shape of a definition (see `definition`).
"""

from __future__ import annotations

from pathlib import Path

from common import input_files
from common.validation import quoted, validated
from lazarus_lite.errors import WorkflowError
from lazarus_lite.workflow.definition import CATEGORIES, WorkflowDefinition
from lazarus_lite.workflow.references import check_references
from lazarus_lite.workflow.registry import STEPS


def checked(definition: WorkflowDefinition, source: str) -> WorkflowDefinition:
    """`definition` if its category is one the kill switch knows, its step functions exist and
    its reads resolve; else WorkflowError."""
    if definition.category not in CATEGORIES:
        raise WorkflowError(
            f"{source}: field 'category': {quoted(definition.category)} is not a category the "
            f"kill switch can suspend; expected one of {list(CATEGORIES)}"
        )
    for s in definition.steps:
        if s.run not in STEPS:
            raise WorkflowError(
                f"{source}: step '{s.name}': unknown step function {quoted(s.run)}; "
                f"expected one of {sorted(STEPS)}"
            )
    if definition.on_failure is not None and definition.on_failure not in STEPS:
        raise WorkflowError(
            f"{source}: field 'on_failure': unknown step function "
            f"{quoted(definition.on_failure)}; expected one of {sorted(STEPS)}"
        )
    problems = check_references(definition)
    if problems:
        raise WorkflowError(f"{source}: " + "; ".join(problems))
    return definition


def parse_workflow(text: str, source: str) -> WorkflowDefinition:
    raw = input_files.parse(
        text, source, expected="a workflow: a mapping with name and steps", error=WorkflowError
    )
    return checked(validated(WorkflowDefinition, raw, source, error=WorkflowError), source)


def load_workflows(directory: Path) -> dict[str, WorkflowDefinition]:
    found = {}
    for path in input_files.yaml_files(directory, what="workflow files", error=WorkflowError):
        definition = parse_workflow(input_files.read_text(path, error=WorkflowError), str(path))
        found[definition.name] = definition
    return found
