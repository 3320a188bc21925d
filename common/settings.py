"""The one way a service's settings (CLI options and environment variables) are validated before
anything starts: `parse_settings` builds the settings model, leaving out the options not given,
and a bad value raises `InvalidSetting` naming each bad setting and what was expected, so the
API and the controller refuse to start with the same kind of message.

Not for: the settings models themselves (each service owns its own), or files people write
(see `input_files`).
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError

from common.errors import InvalidSetting
from common.validation import Model, describe_problems


def parse_settings(model: type[Model], values: Mapping[str, object]) -> Model:
    """`model` from `values`, those that are None left to their defaults (an option not given);
    raises InvalidSetting naming each bad setting."""
    try:
        return model(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as error:
        raise InvalidSetting(describe_problems(error, "setting")) from None
