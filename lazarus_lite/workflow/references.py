"""The load-time check of a workflow's seams: every output a step reads comes from a step of
the same workflow that runs before it (an ancestor in the DAG) and produces the model the reader
expects, and the steps' input models agree with each other (together they are the model of the
workflow's inputs). A rename in a workflow file fails here, at load, not at run time.
Not for: the DAG itself (see `definition`) or parsing files (see `loading`).
"""

from __future__ import annotations

from pydantic import BaseModel

from lazarus_lite.workflow.context import WorkflowInputs
from lazarus_lite.workflow.definition import WorkflowDefinition
from lazarus_lite.workflow.registry import STEPS


def check_references(definition: WorkflowDefinition) -> list[str]:
    """What is wrong with the reads of `definition`'s steps (empty when every one resolves);
    assumes every `run` and `on_failure` names a registered step."""
    problems = []
    runs = {s.name: s.run for s in definition.steps}
    readers = [(s.name, s.run, definition.ancestors(s.name)) for s in definition.steps]
    if definition.on_failure is not None and STEPS[definition.on_failure].reads:
        # It runs after whichever step failed, possibly the first: no output is sure to exist.
        problems.append(
            f"workflow '{definition.name}': its on_failure step ({definition.on_failure}) reads "
            f"{', '.join(map(repr, STEPS[definition.on_failure].reads))}; an on_failure step "
            "may run before any other step succeeded, so it may read no step's output"
        )
    for reader, run, before in readers:
        for source, expected in STEPS[run].reads.items():
            where = f"workflow '{definition.name}': step '{reader}' ({run}) reads '{source}'"
            if source not in runs:
                problems.append(f"{where}, which is not a step of this workflow")
                continue
            if source not in before:
                problems.append(
                    f"{where}, which does not run before it (add it to `needs`, directly or "
                    "through a step it needs)"
                )
            produced = STEPS[runs[source]].output
            if produced is None or not issubclass(produced, expected):
                problems.append(
                    f"{where} as {expected.__name__}, but '{source}' runs {runs[source]}, whose "
                    f"output is {produced.__name__ if produced else 'untyped'}"
                )
    try:
        inputs_model(definition)
    except TypeError as conflict:
        problems.append(f"workflow '{definition.name}': {conflict}")
    return problems


def inputs_model(definition: WorkflowDefinition) -> type[WorkflowInputs]:
    """The model of the workflow's inputs: every field its steps' input models name. Two steps
    that name one input with different types are a TypeError."""
    models: list[type[WorkflowInputs]] = []
    for run in [s.run for s in definition.steps] + [definition.on_failure or ""]:
        model = STEPS[run].inputs if run in STEPS else None
        if model is not None and model not in models:
            models.append(model)
    seen: dict[str, tuple[object, type[BaseModel]]] = {}
    for model in models:
        for name, info in model.model_fields.items():
            if name in seen and seen[name][0] != info.annotation:
                raise TypeError(
                    f"input '{name}' is {info.annotation} for {model.__name__} but "
                    f"{seen[name][0]} for {seen[name][1].__name__}"
                )
            seen.setdefault(name, (info.annotation, model))
    # Subclasses first, so the bases' order is one Python can linearise.
    bases = [m for m in models if not any(o is not m and issubclass(o, m) for o in models)]
    if not bases:
        return WorkflowInputs
    if len(bases) == 1:
        return bases[0]
    return type(f"{definition.name.replace('.', '_')}_inputs", tuple(bases), {})
