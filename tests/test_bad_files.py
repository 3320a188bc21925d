"""Every file a person writes or points a tool at, when it is bad, is refused with one line that
names the file, the field where there is one, and what was expected: each loader directly, then
each command line that reads such a file (no traceback, the usual exit code, nothing written)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from chaos.agent.targets import load_targets
from chaos.cli import app as chaos_app
from chaos.errors import ExperimentError, TargetError, TestbedError
from chaos.experiments import load_experiment
from chaos.targets import load_deployment
from chaos.testbed import load_state
from detection.cli import app as detection_app
from lazarus_lite.checks import CHECKS
from lazarus_lite.cli import app as lazarus_app
from lazarus_lite.errors import ProfileError, RuleError, WorkflowError
from lazarus_lite.profiles import load_profiles
from lazarus_lite.rules import load_rules
from lazarus_lite.workflow.loading import load_workflows
from notifications.config import load_notification_config
from notifications.errors import NotificationConfigError

SCENARIO = Path(__file__).parents[1] / "scenarios" / "primary_kill.yaml"
TESTBED_NODE = '{"name": "n", "role": "primary", "host": "127.0.0.1", "port": %s, "pid": 1}'


@dataclass(frozen=True)
class Loader:
    """One loader, called on the path of the file it reads (`in_directory`: it is given the
    file's directory and reads every *.yaml there)."""

    name: str
    load: Callable[[Path], object]
    error: type[Exception]
    filename: str
    wrong_type: tuple[str, str]  # a file with a field of the wrong type, and that field
    huge: tuple[str, str]  # a file with HUGE in a field whose value a message quotes, the field
    in_directory: bool = False

    def __str__(self) -> str:
        return self.name


LOADERS = [
    Loader(
        "rules",
        lambda path: load_rules([path], known_checks=CHECKS, known_actions=["default.record"]),
        RuleError,
        "rules.yaml",
        ("name: r\ncriteria: {environment: dev, event_type: RedisMasterDown}\nchecks: 5\n"
         "action: {name: default.record}\n", "field 'checks'"),
        ("name: r\ncriteria: {environment: dev, event_type: HUGE}\n"
         "action: {name: default.record}\n", "field 'criteria.event_type'"),
    ),
    Loader(
        "workflows",
        lambda path: load_workflows(path.parent),
        WorkflowError,
        "workflow.yaml",
        ("name: w\nsteps: {a: 1}\n", "field 'steps'"),
        ("name: w\ntimeout: HUGE\nsteps: [{name: a, run: lock.acquire}]\n", "field 'timeout'"),
        in_directory=True,
    ),
    Loader(
        "profiles",
        lambda path: load_profiles(path.parent),
        ProfileError,
        "service.yaml",
        ("service: s\nprofile: redis_shard\nteam: [t]\n", "field 'team'"),
        ("service: s\nprofile: redis_shard\nteam: t\noverrides: {workflow_timeout: HUGE}\n",
         "field 'overrides.workflow_timeout'"),
        in_directory=True,
    ),
    Loader(
        "notifications",
        lambda path: load_notification_config(path, env={}),
        NotificationConfigError,
        "channels.yaml",
        ("teams: {t: {slack: {webhook_url: 5}}}\n", "field 'teams.t.slack.webhook_url'"),
        ("teams: {t: {slack: {webhook_url: HUGE}}}\n", "field 'teams.t.slack.webhook_url'"),
    ),
    Loader(
        "experiments",
        load_experiment,
        ExperimentError,
        "experiment.yaml",
        ("title: [t]\n", "field 'title'"),
        ("title: t\nwatch_seconds: HUGE\n", "field 'watch_seconds'"),
    ),
    Loader(
        "targets",
        load_deployment,
        TargetError,
        "target.yaml",
        ("api: http://x\ncontrol: redis://x\nnodes: [{name: n, role: primary, port: high}]\n",
         "field 'nodes.0.port'"),
        ("api: http://x\ncontrol: HUGE\n", "field 'control'"),
    ),
    Loader(
        "testbed.json as a target",
        load_deployment,
        TargetError,
        "testbed.json",
        ('{"api": "http://x", "control": "redis://x", "nodes": [%s]}' % (TESTBED_NODE % '"high"'),
         "field 'nodes.0.port'"),
        ('{"api": "http://x", "control": "HUGE", "nodes": []}', "field 'control'"),
    ),
    Loader(
        "testbed state",
        lambda path: load_state(path.parent),
        TestbedError,
        "testbed.json",
        ('{"api": "http://x", "control": "redis://x", "nodes": [%s]}' % (TESTBED_NODE % '"high"'),
         "field 'nodes.0.port'"),
        ('{"api": "HUGE", "control": "redis://x", "nodes": []}', "field 'api'"),
        in_directory=True,
    ),
    Loader(
        "agent targets",
        load_targets,
        ValueError,
        "targets.yaml",
        ("targets: [{name: n, role: primary, port: high}]\n", "field 'port'"),
        # A key is the file's text too: the message names it, cut short.
        # (an explicit key: YAML limits implicit ones to 1024 characters)
        ("targets:\n  - {name: n, role: primary, port: 1, ? HUGE : 1}\n", "field 'hhhhhhhh"),
    ),
]  # fmt: skip
# Loaders with a duration field, and a file with V in it.
DURATIONS = {
    "workflows": ("name: w\ntimeout: V\nsteps: [{name: a, run: lock.acquire}]\n", "'timeout'"),
    "profiles": ("service: s\nprofile: redis_shard\nteam: t\noverrides: {workflow_timeout: V}\n",
                 "'overrides.workflow_timeout'"),
    "experiments": ("title: t\nwatch_seconds: V\n", "'watch_seconds'"),
}  # fmt: skip
MESSAGE_LIMIT = 1000  # far below what the bad files hold
YAML_LOADERS = [loader for loader in LOADERS if not loader.filename.endswith(".json")]
SELF_REFERENCE = "a: &a [*a]\n"  # without a bound, every walk of it loops and eats memory
REPEATED_KEY = "a: 1\nb: 2\na: 3\n"  # PyYAML alone keeps the last `a` and drops the first
TimeLimit = Callable[[float], AbstractContextManager[None]]


def refused(loader: Loader, path: Path) -> str:
    """The loader's one-line message about the file at `path`."""
    with pytest.raises(loader.error) as error:
        loader.load(path)
    message = str(error.value)
    assert "\n" not in message and len(message) < MESSAGE_LIMIT, message
    return message


def bad_file(tmp_path: Path, loader: Loader, content: str | bytes) -> Path:
    path = tmp_path / "files" / loader.filename
    path.parent.mkdir()
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def refused_file(tmp_path: Path, loader: Loader, content: str | bytes) -> str:
    """The loader's message about a file holding `content`, checked to name the file."""
    path = bad_file(tmp_path, loader, content)
    message = refused(loader, path)
    assert str(path) in message, message
    return message


@pytest.mark.parametrize("loader", LOADERS, ids=str)
def test_a_file_that_is_not_utf8_is_refused_naming_the_file(loader: Loader, tmp_path: Path) -> None:
    assert "not UTF-8" in refused_file(tmp_path, loader, "name: café\n".encode("latin-1"))


@pytest.mark.parametrize("loader", LOADERS, ids=str)
def test_nesting_a_thousand_levels_deep_is_refused_naming_the_file(
    loader: Loader, tmp_path: Path
) -> None:
    # Block sequences for YAML: PyYAML scans deep flow ones ("[[[") slowly, if boundedly.
    json_file = loader.filename.endswith(".json")
    deep = '{"a": ' + "[" * 1000 + "]" * 1000 + "}" if json_file else "- " * 1000 + "x\n"
    assert "nested deeper than" in refused_file(tmp_path, loader, deep)


@pytest.mark.parametrize("loader", YAML_LOADERS, ids=str)
def test_a_self_referencing_alias_is_refused_naming_the_file(
    loader: Loader, tmp_path: Path, time_limit: TimeLimit
) -> None:
    with time_limit(10):
        message = refused_file(tmp_path, loader, SELF_REFERENCE)
    assert "not valid YAML: line 1, column 8: recursive alias *a" in message


@pytest.mark.parametrize("loader", YAML_LOADERS, ids=str)
def test_a_repeated_key_is_refused_naming_the_file_the_key_and_its_lines(
    loader: Loader, tmp_path: Path
) -> None:
    message = refused_file(tmp_path, loader, REPEATED_KEY)
    assert "not valid YAML: line 3, column 1: duplicate key 'a' (first on line 1)" in message


@pytest.mark.parametrize("loader", LOADERS, ids=str)
def test_an_empty_file_is_refused_saying_what_was_expected(loader: Loader, tmp_path: Path) -> None:
    assert "empty; expected" in refused_file(tmp_path, loader, "")


@pytest.mark.parametrize("loader", LOADERS, ids=str)
def test_a_directory_where_a_file_belongs_is_refused_naming_it(
    loader: Loader, tmp_path: Path
) -> None:
    path = tmp_path / "files" / loader.filename
    path.mkdir(parents=True)
    if loader.name == "rules":  # a rules directory is read; a directory inside one is not
        (path / "nested.yaml").mkdir()
        path = path / "nested.yaml"
    assert str(path) in refused(loader, path.parent if loader.name == "rules" else path)


@pytest.mark.parametrize("loader", LOADERS, ids=str)
def test_a_missing_file_is_refused_naming_it(loader: Loader, tmp_path: Path) -> None:
    path = tmp_path / "gone" / loader.filename
    message = refused(loader, path)
    assert str(path.parent if loader.in_directory else path) in message


@pytest.mark.parametrize("loader", LOADERS, ids=str)
def test_a_field_of_the_wrong_type_is_refused_naming_the_file_and_the_field(
    loader: Loader, tmp_path: Path
) -> None:
    text, field = loader.wrong_type
    assert field in refused_file(tmp_path, loader, text)


@pytest.mark.parametrize("value", ["[1, 2]", "null", "true"])
@pytest.mark.parametrize("loader", [loader for loader in LOADERS if loader.name in DURATIONS],
                         ids=str)  # fmt: skip
def test_a_duration_that_is_not_a_number_or_text_is_refused_naming_the_field(
    loader: Loader, value: str, tmp_path: Path
) -> None:
    text, field = DURATIONS[loader.name]
    message = refused_file(tmp_path, loader, text.replace("V", value))
    assert f"field {field}: expected a duration" in message


@pytest.mark.parametrize("loader", LOADERS, ids=str)
def test_a_megabyte_value_is_quoted_cut_short(loader: Loader, tmp_path: Path) -> None:
    text, field = loader.huge
    # A megabyte where parsing is quick (JSON), a quarter of one where PyYAML's pure-Python
    # scanner would take seconds: either way thousands of times what a message may quote.
    size = 1_000_000 if loader.filename.endswith(".json") else 250_000
    assert field in refused_file(tmp_path, loader, text.replace("HUGE", "h" * size))


def test_a_thousand_problems_are_summed_up_after_the_first_few(tmp_path: Path) -> None:
    experiments = next(loader for loader in LOADERS if loader.name == "experiments")
    probes = "".join("  - {probe: nonsense}\n" for _ in range(1000))
    assert "more problems" in refused_file(tmp_path, experiments, "steady_state:\n" + probes)


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("control", "api: http://127.0.0.1:1\ncontrol: redis://127.0.0.1:notaport\n"),
        ("control", "api: http://127.0.0.1:1\ncontrol: redis://127.0.0.1:99999\n"),
        ("control", "api: http://127.0.0.1:1\ncontrol: redis://127.0.0.1:0\n"),
        ("control", "api: http://127.0.0.1:1\ncontrol: redis://\n"),
        ("api", "api: http://127.0.0.1:notaport\ncontrol: redis://127.0.0.1:1\n"),
        ("api", "api: http://127.0.0.1:99999\ncontrol: redis://127.0.0.1:1\n"),
        ("lazarus.0", "api: http://x\ncontrol: redis://x\nlazarus: ['http://:8080']\n"),
    ],
)  # fmt: skip
def test_a_target_url_with_a_bad_port_or_no_host_is_refused_at_load_naming_the_field(
    field: str, text: str, tmp_path: Path
) -> None:
    message = refused_file(tmp_path, loader_named("targets"), text)
    assert f"field '{field}'" in message and "not a usable" in message


# -- the command lines --------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A command line that reads a file: its app, its arguments around the file, the exit code
    for a bad one, and the loader whose files it reads."""

    name: str
    app: typer.Typer
    args: Callable[[Path], list[str]]
    exit_code: int
    loader: str

    def __str__(self) -> str:
        return self.name


SERVE = ["serve", "--node-id", "n1", "--control", "redis://127.0.0.1:1/0",
         "--api-token", "a-token-of-sixteen-chars"]  # fmt: skip
# fmt: off
COMMANDS = [
    Command("chaos validate", chaos_app, lambda p: ["validate", str(p)], 1, "experiments"),
    Command("chaos run", chaos_app, lambda p: ["run", str(p), "--journal-dir",
            str(p.parent / "journals")], 2, "experiments"),
    Command("chaos run --target", chaos_app, lambda p: ["run", str(SCENARIO), "--target", str(p),
            "--journal-dir", str(p.parent / "journals")], 2, "targets"),
    Command("chaos run --target testbed.json", chaos_app, lambda p: ["run", str(SCENARIO),
            "--target", str(p), "--journal-dir", str(p.parent / "journals")], 2,
            "testbed.json as a target"),
    Command("chaos agent --targets", chaos_app, lambda p: ["agent", "--targets", str(p),
            "--allow", "n", "--port", "1"], 2, "agent targets"),
    Command("chaos testbed status", chaos_app, lambda p: ["testbed", "status", "--dir",
            str(p.parent)], 1, "testbed state"),
    Command("lazarus rules validate", lazarus_app, lambda p: ["rules", "validate", str(p)], 1,
            "rules"),
    Command("lazarus serve --rules", lazarus_app, lambda p: [*SERVE, "--rules", str(p)], 2,
            "rules"),
    Command("lazarus serve --workflows", lazarus_app,
            lambda p: [*SERVE, "--workflows", str(p.parent)], 2, "workflows"),
    Command("lazarus serve --services", lazarus_app,
            lambda p: [*SERVE, "--services", str(p.parent)], 2, "profiles"),
    Command("lazarus serve --notifications", lazarus_app,
            lambda p: [*SERVE, "--notifications", str(p)], 2, "notifications"),
    Command("detection sensor --notifications", detection_app, lambda p: ["sensor", "--control",
            "redis://127.0.0.1:1/0", "--replica", "127.0.0.1:2", "--notifications", str(p)], 2,
            "notifications"),
]
# fmt: on


@pytest.fixture(autouse=True)
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that accepted its file would start serving or sensing: fail instead."""

    def started(*args: object, **kwargs: object) -> None:
        pytest.fail("the command accepted the bad file and started")

    monkeypatch.setattr("uvicorn.run", started)
    monkeypatch.setattr("detection.cli._run_sensor", started)
    monkeypatch.setenv("GREMLIN_API_KEY", "a-key")


def run_command(command: Command, path: Path) -> str:
    """The command's output about the bad file at `path`, checked to be a refusal (not a
    traceback), with whitespace removed: rich wraps long lines at any column."""
    result: Result = CliRunner().invoke(command.app, command.args(path))
    # CliRunner catches what escaped the command: anything but an exit is a traceback.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == command.exit_code, result.output
    assert "Traceback" not in result.output
    assert not (path.parent / "journals").exists()  # nothing was written
    return "".join(result.output.split())


def loader_named(name: str) -> Loader:
    return next(loader for loader in LOADERS if loader.name == name)


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_a_command_refuses_a_file_that_is_not_utf8_naming_it(
    command: Command, tmp_path: Path
) -> None:
    path = bad_file(tmp_path, loader_named(command.loader), b"name: caf\xe9\n")
    output = run_command(command, path)
    assert str(path) in output and "notUTF-8" in output


@pytest.mark.parametrize(
    "command", [c for c in COMMANDS if loader_named(c.loader) in YAML_LOADERS], ids=str
)
def test_a_command_refuses_a_self_referencing_alias_naming_the_file(
    command: Command, tmp_path: Path, time_limit: TimeLimit
) -> None:
    path = bad_file(tmp_path, loader_named(command.loader), SELF_REFERENCE)
    with time_limit(10):
        output = run_command(command, path)
    assert str(path) in output and "line1,column8:recursivealias*a" in output


@pytest.mark.parametrize(
    "command", [c for c in COMMANDS if loader_named(c.loader) in YAML_LOADERS], ids=str
)
def test_a_command_refuses_a_repeated_key_naming_the_file_and_the_key(
    command: Command, tmp_path: Path
) -> None:
    path = bad_file(tmp_path, loader_named(command.loader), REPEATED_KEY)
    output = run_command(command, path)
    assert str(path) in output and "line3,column1:duplicatekey'a'(firstonline1)" in output


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_a_command_refuses_a_directory_where_a_file_belongs_naming_it(
    command: Command, tmp_path: Path
) -> None:
    path = tmp_path / "files" / loader_named(command.loader).filename
    if command.loader == "rules":  # a rules directory is read; a directory inside one is not
        path = path / "nested.yaml"
    path.mkdir(parents=True)
    output = run_command(command, path.parent if command.loader == "rules" else path)
    # The agent reads a directory as a testbed's: it names the testbed.json it did not find.
    assert str(path) in output and ("isadirectory" in output or "/testbed.json:nosuch" in output)


def test_lazarus_serve_refuses_a_services_directory_it_cannot_read_naming_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / ("d" * 300)  # longer than a file name may be: the stat fails
    result = CliRunner().invoke(lazarus_app, [*SERVE, "--services", str(path)])
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    output = "".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in output, result.output
    assert str(tmp_path) in output and "cannotreadit:Filenametoolong" in output


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_a_command_refuses_a_field_of_the_wrong_type_naming_the_file_and_the_field(
    command: Command, tmp_path: Path
) -> None:
    loader = loader_named(command.loader)
    text, field = loader.wrong_type
    path = bad_file(tmp_path, loader, text)
    output = run_command(command, path)
    assert str(path) in output and "".join(field.split()) in output
