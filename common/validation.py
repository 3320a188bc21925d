"""How a problem with input is told to a person: a pydantic validation error (or FastAPI's, for a
request's parameters) as one problem after another, each naming the field (or setting, or query
parameter) and what was expected, and any value quoted in a message cut short: the one describer
of the project. Every package's strict loaders use it, so bad input reads the same everywhere
and no message grows with the input (a 1 MB string in a field is quoted as its first few dozen
characters). Also the URL fields that files people write share (`RedisUrlText`, `HttpUrlText`),
the secrets clients send in a header (`HeaderSecret`), and a service's name (`ServiceName`).
Not for: the models themselves, or reading files (see `input_files`)."""

from __future__ import annotations

import re
import reprlib
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Annotated, Any, Protocol, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import AfterValidator, BaseModel, Field, ValidationError
from redis.connection import parse_url

# What a message may show of one value, of a field's location (mapping keys are the file's own
# text too), of one problem, and how many problems it lists.
QUOTE_CHARS = 60
LOCATION_CHARS = 120
PROBLEM_CHARS = 300
MAX_PROBLEMS = 5


class _BoundedRepr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        try:
            return super().repr_int(x, level)
        except ValueError:  # more digits than Python converts (a hex literal in YAML has no cap)
            return f"<an integer of {len(format(abs(x), 'x'))} hex digits>"


_QUOTE = _BoundedRepr()
_QUOTE.maxstring = QUOTE_CHARS
_QUOTE.maxother = QUOTE_CHARS
_QUOTE.maxlist = _QUOTE.maxtuple = _QUOTE.maxset = _QUOTE.maxdict = 5
_QUOTE.maxlevel = 3

Model = TypeVar("Model", bound=BaseModel)

# A URL's userinfo password (`redis://:pw@host`, `http://user:pw@host`): never shown in a message.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*):[^\s/@'\"]+@")
HIDDEN_PASSWORD = "***"


def without_passwords(text: str) -> str:
    """`text` with every URL's password replaced by ***: `redis://:***@host:6379/0`."""
    return _URL_PASSWORD.sub(rf"\g<head>:{HIDDEN_PASSWORD}@", text)


def quoted(value: object) -> str:
    """`value` as a message shows it: its repr, at most about QUOTE_CHARS characters (reprlib
    never builds the whole repr, so this is cheap for a huge or deeply nested value)."""
    return without_passwords(_QUOTE.repr(value))


def bounded(text: str, limit: int) -> str:
    """`text`, cut after `limit` characters with a note of how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters)"


def kind_of(value: object) -> str:
    """What a YAML/JSON value is, in the words a person who wrote the file would use."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


class Problems(Protocol):
    """What `describe_problems` reads: pydantic's ValidationError, or FastAPI's
    RequestValidationError (which is not one)."""

    def errors(self) -> Sequence[Any]: ...


# Where FastAPI says a request's parameter was: a message names the place instead of "field".
_PARAMETER_PLACES = frozenset({"query", "path", "header", "cookie"})


def describe_problems(
    error: Problems,
    what: str = "field",
    hide: Collection[str] = (),
    within: str = "",
    *,
    request: bool = False,
    origins: Mapping[str, str] | None = None,
    renamed: Mapping[str, str] | None = None,
) -> str:
    """`field 'a.b': <what was wrong>; field 'c': ...` (or `setting '...'`), at most
    MAX_PROBLEMS of them. `hide` names location parts that are not fields (union tags);
    `within` is the field the validated value came from, when it was not the whole document.
    With `request`, locations are FastAPI's for a request: `query 'limit': ...`, and a body's
    fields without the leading `body`. `origins` says where a top-level field's value came from
    (a service's flag or environment variable), shown after its name. `renamed` gives a
    location the name the person used for it, when the data was built from their arguments
    (`{"target.role": "role"}`)."""
    problems = []
    for problem in error.errors():
        where, loc = what, [str(p) for p in problem["loc"]]
        # A check across fields (a model validator) names the field it blames.
        blamed = getattr(problem.get("ctx", {}).get("error"), "setting", None)
        if isinstance(blamed, str):
            loc = [*loc, blamed]
        if request and loc and loc[0] in _PARAMETER_PLACES:
            where, loc = loc[0], loc[1:]
        elif request and loc and loc[0] == "body":
            loc = loc[1:]
        # pydantic's validator wrappers ("function-after[...]") are not fields either.
        parts = [within, *loc]
        location = ".".join(p for p in parts if p and "[" not in p and p not in hide)
        location = _renamed(location, renamed or {})
        location = bounded(location, LOCATION_CHARS)
        message = str(problem["msg"]).removeprefix("Value error, ")
        message = bounded(without_passwords(message), PROBLEM_CHARS)
        origin = f" ({origins[loc[0]]})" if origins and loc and loc[0] in origins else ""
        problems.append(f"{where} '{location}'{origin}: {message}" if location else message)
    more = len(problems) - MAX_PROBLEMS
    shown = "; ".join(problems[:MAX_PROBLEMS])
    return shown if more <= 0 else f"{shown}; and {more} more problem{'s' * (more > 1)}"


def _renamed(location: str, renamed: Mapping[str, str]) -> str:
    for name, shown in renamed.items():
        if location == name or location.startswith(f"{name}."):
            return shown + location[len(name) :]
    return location


def validated(
    model: type[Model],
    data: Any,
    source: str,
    *,
    error: Callable[[str], Exception],
    hide: Collection[str] = (),
    what: str = "field",
    renamed: Mapping[str, str] | None = None,
) -> Model:
    """`model` validated from `data`; a problem raises `error("SOURCE: field '...': ...")`
    (`what` instead of "field"; `renamed` as `describe_problems`)."""
    try:
        return model.model_validate(data)
    except ValidationError as problem:
        described = describe_problems(problem, what, hide, renamed=renamed)
        raise error(f"{source}: {described}") from None


def _port_problem(url: str) -> str | None:
    """What is wrong with the URL's port, if anything (none given is the scheme's default)."""
    try:
        parts = urlsplit(url)
    except ValueError as error:  # e.g. "Invalid IPv6 URL"
        return str(error)
    try:
        port = parts.port
    except ValueError:  # not a number, or over 65535
        port = -1
    if port is not None and not 1 <= port <= 65535:
        return "its port is not a number from 1 to 65535"
    return None


def _redis_url(value: str) -> str:
    """A URL `redis.Redis.from_url` takes: its own parser reads it here, so a bad port or
    option is found at load, not as redis-py's ValueError mid-run."""
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"{quoted(value)} is not a redis://HOST:PORT URL")
    unix = value.startswith("unix://")
    problem = None if unix else _port_problem(value)
    if problem is None:
        try:
            parts = parse_url(value)
        except ValueError as error:  # an option of the query, e.g. ?socket_timeout=x
            problem = str(error)
        else:
            if unix and not parts.get("path"):
                problem = "it names no socket path (unix:///PATH)"
            elif not unix and not parts.get("host"):
                problem = "it names no host"
    if problem:
        raise ValueError(f"{quoted(value)} is not a usable redis URL: {problem}")
    return value


def _http_url(value: str) -> str:
    """A URL httpx takes, with a host and a port from 1 to 65535."""
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{quoted(value)} is not an http(s):// URL")
    problem = _port_problem(value)
    if problem is None:
        try:
            problem = None if httpx.URL(value).host else "it names no host"
        except httpx.InvalidURL as error:
            problem = str(error)
    if problem:
        raise ValueError(f"{quoted(value)} is not a usable URL: {problem}")
    return value


def header_secret_problem(value: str) -> str | None:
    """Why `value` cannot be a secret a client sends in an HTTP header (a bearer token, an API
    key), or None. Servers decode header bytes as latin-1, clients encode text as ASCII or
    UTF-8: only visible ASCII reads the same at both ends (a space or control character would
    not survive the header either)."""
    if not all("!" <= char <= "~" for char in value):
        return "must be visible ASCII characters (no spaces): it travels in an HTTP header"
    return None


def _header_secret(value: str) -> str:
    problem = header_secret_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# Checked when the file is loaded: a wrong scheme, host or port would otherwise surface mid-run,
# as redis-py's or httpx's error about a URL the message no longer ties to the file.
RedisUrlText = Annotated[str, AfterValidator(_redis_url)]
HttpUrlText = Annotated[str, AfterValidator(_http_url)]
# A secret compared with one a client sends in a header (see `header_secret_problem`).
HeaderSecret = Annotated[str, AfterValidator(_header_secret)]

# Blanks that may not begin or end a service's name; the published pattern says the same.
_BLANKS = " \t\n\r\f\v"
_SERVICE_PATTERN = r"^[^ \t\n\r\f\v]([\s\S]*[^ \t\n\r\f\v])?$"


def _unpadded(value: str) -> str:
    if value and (value[0] in _BLANKS or value[-1] in _BLANKS):
        raise ValueError("must not begin or end with a space, a tab or a line break")
    return value


# A service's name wherever one is given: an event's `service`, and a service shadowed over
# `/v1/shadow` (a name no event can carry would never match one). "ratequeue " is a typo, not a
# second service: refused rather than kept apart from "ratequeue".
ServiceName = Annotated[
    str,
    Field(min_length=1, max_length=128, json_schema_extra={"pattern": _SERVICE_PATTERN}),
    AfterValidator(_unpadded),
]
