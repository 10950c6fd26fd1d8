"""App settings, host.json options and reading an app's bindings: what starts, and what fails naming why."""

from __future__ import annotations

import json
from pathlib import Path

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage as FunctionsQueueMessage

from local.host.bindings import BlobTrigger, HttpTrigger, QueueTrigger, TimerTrigger, read_functions
from local.host.devhost import DevHost, HostConfig, default_host_id
from local.host.invocation import Invoker
from local.host.settings import AppSettings, HostOptions, StartupError, read_settings_file
from local.host.storage import StorageAccounts
from tests.host import sample_app

SAMPLE_SETTINGS = {
    "SAMPLE_CONTAINER": "drop",
    "SAMPLE_QUEUE": "work",
    "SAMPLE_SCHEDULE": "*/5 * * * * *",
    "SampleStorage": "UseDevelopmentStorage=true",
    "SAMPLE_RECORD_DIR": "/nonexistent",
}


def write_settings(path: Path, values: dict[str, object]) -> Path:
    path.write_text(json.dumps({"IsEncrypted": False, "Values": values}), encoding="utf-8")
    return path


def test_environment_wins_over_the_settings_file(tmp_path: Path) -> None:
    values = read_settings_file(
        write_settings(tmp_path / "local.settings.json", {"A": "from-file", "B": "from-file", "FLAG": True, "N": 3})
    )
    settings = AppSettings({"A": "from-env"}, values)
    environ = {"A": "from-env"}
    settings.export_to(environ)
    assert dict(settings) == {"A": "from-env", "B": "from-file", "FLAG": "true", "N": "3"}
    assert environ == {"A": "from-env", "B": "from-file", "FLAG": "true", "N": "3"}


def test_settings_file_problems_are_named(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="does not exist"):
        read_settings_file(tmp_path / "missing.json")
    with pytest.raises(StartupError, match=r"Values.NESTED must be a string"):
        read_settings_file(write_settings(tmp_path / "bad.json", {"NESTED": {"a": 1}}))


def test_setting_references_resolve_and_a_missing_one_is_named() -> None:
    settings = AppSettings({"CONTAINER": "input"})
    assert settings.resolve("%CONTAINER%/{name}", "path") == "input/{name}"
    with pytest.raises(StartupError, match=r"blob path refers to app setting %NOPE%, which is not set"):
        settings.resolve("%NOPE%/{name}", "blob path")


def test_host_json_options() -> None:
    options = HostOptions.from_document(
        {
            "extensions": {
                "queues": {
                    "maxDequeueCount": 3,
                    "batchSize": 4,
                    "visibilityTimeout": "00:00:02",
                    "maxPollingInterval": "00:00:30",
                },
                "http": {"routePrefix": ""},
            }
        }
    )
    assert (options.max_dequeue_count, options.batch_size, options.new_batch_threshold) == (3, 4, 2)
    assert options.retry_delay(1) == options.retry_delay(3) == 2.0
    assert options.max_polling_interval == 1.0  # capped: idle polling stays about once a second
    assert options.route_prefix == ""
    defaults = HostOptions.from_document({"version": "2.0"})
    assert (defaults.route_prefix, defaults.max_dequeue_count, defaults.message_encoding) == ("api", 5, "base64")
    assert [defaults.retry_delay(n) for n in (1, 2, 3, 4, 10)] == [1, 2, 4, 8, 60]
    with pytest.raises(StartupError, match="batchSize must be 1-32"):
        HostOptions.from_document({"extensions": {"queues": {"batchSize": 64}}})
    with pytest.raises(StartupError, match=r"host\.json: invalid literal"):
        HostOptions.from_document({"extensions": {"queues": {"maxDequeueCount": "five"}}})
    with pytest.raises(StartupError, match="is not a TimeSpan"):
        HostOptions.from_document({"extensions": {"queues": {"visibilityTimeout": "5s"}}})


def test_sample_app_bindings_are_read_with_settings_resolved() -> None:
    functions = {spec.name: spec for spec in read_functions(sample_app.build_app(), AppSettings(SAMPLE_SETTINGS))}
    assert functions["on_blob"].trigger == BlobTrigger("blob", "drop", "{name}", "SampleStorage", event_grid=False)
    assert functions["on_pushed_blob"].trigger == BlobTrigger("blob", "drop", "{name}", "SampleStorage",
                                                             event_grid=True)
    assert functions["on_blob"].full_name == "Host.Functions.on_blob"
    assert functions["on_message"].trigger == QueueTrigger("message", "work", "SampleStorage")
    assert [output.queue_name for output in functions["on_message"].queue_outputs] == ["work-out"]
    timer = functions["tick"].trigger
    assert isinstance(timer, TimerTrigger) and timer.run_on_startup
    assert timer.schedule.describe() == "*/5 * * * * *"
    assert functions["echo"].trigger == HttpTrigger(
        "req", "items/{id:int}/{*rest}", frozenset({"GET", "POST"}), "function"
    )


def test_a_missing_setting_in_a_binding_names_function_and_setting() -> None:
    settings = {name: value for name, value in SAMPLE_SETTINGS.items() if name != "SAMPLE_QUEUE"}
    with pytest.raises(StartupError, match=r"function 'on_message'.*%SAMPLE_QUEUE%"):
        read_functions(sample_app.build_app(), AppSettings(settings))


def test_a_bad_schedule_names_the_function() -> None:
    with pytest.raises(StartupError, match=r"function 'tick'.*expected 6 fields"):
        read_functions(sample_app.build_app(), AppSettings({**SAMPLE_SETTINGS, "SAMPLE_SCHEDULE": "* *"}))


def test_unsupported_bindings_are_refused() -> None:
    app = func.FunctionApp()

    @app.queue_trigger(arg_name="message", queue_name="jobs", connection="Storage")
    @app.table_output(arg_name="row", table_name="rows", connection="Storage")
    def store(message: func.QueueMessage, row: func.Out[str]) -> None: ...

    with pytest.raises(StartupError, match=r"function 'store'.*does not support binding\(s\) table \(row\)"):
        read_functions(app, AppSettings({}))


def test_a_missing_connection_fails_at_startup(tmp_path: Path) -> None:
    settings = {name: value for name, value in SAMPLE_SETTINGS.items() if name != "SampleStorage"}
    with pytest.raises(StartupError, match=r"connection 'SampleStorage'.*SampleStorage__blobServiceUri"):
        DevHost(sample_app.build_app(), HostConfig(state_dir=tmp_path), AppSettings(settings))


def test_host_id_is_the_setting_or_stable_per_state_directory(tmp_path: Path) -> None:
    configured = AppSettings({"AzureFunctionsWebHost__hostid": "My_Laptop.Local"})
    assert default_host_id(configured, tmp_path) == "mylaptoplocal"
    assert default_host_id(AppSettings({"AzureFunctionsWebHost__hostid": "a" * 40}), tmp_path) == "a" * 32
    derived = default_host_id(AppSettings({}), tmp_path / "one")
    assert derived == default_host_id(AppSettings({}), tmp_path / "one")
    assert derived != default_host_id(AppSettings({}), tmp_path / "two")
    assert len(derived) <= 32 and derived.replace("-", "").isalnum() and derived.islower()


def test_bindings_and_parameters_must_agree() -> None:
    app = func.FunctionApp()

    @app.queue_trigger(arg_name="msg", queue_name="jobs", connection="Storage")
    def misnamed(message: func.QueueMessage) -> None: ...

    with pytest.raises(StartupError, match=r"function 'misnamed': binding 'msg' has no parameter"):
        read_functions(app, AppSettings({}))
    other = func.FunctionApp()

    @other.queue_trigger(arg_name="message", queue_name="jobs", connection="Storage")
    def extra(message: func.QueueMessage, unbound: str) -> None: ...

    with pytest.raises(StartupError, match=r"function 'extra': parameter 'unbound' has no binding"):
        read_functions(other, AppSettings({}))


def test_a_trigger_parameter_annotated_str_gets_the_body(tmp_path: Path) -> None:
    app = func.FunctionApp()

    @app.queue_trigger(arg_name="message", queue_name="jobs", connection="Storage")
    def shout(message: str) -> str:
        return message.upper()

    [spec] = read_functions(app, AppSettings({}))
    invoker = Invoker(StorageAccounts(AppSettings({})), "base64")
    message = FunctionsQueueMessage(id="1", body=b"hello")  # type: ignore[no-untyped-call]
    assert invoker.invoke(spec, message, reason="test") == "HELLO"


def test_the_host_binds_loopback_only(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="binds a loopback address only"):
        DevHost(sample_app.build_app(), HostConfig(state_dir=tmp_path, host="0.0.0.0"), AppSettings(SAMPLE_SETTINGS))


def test_the_libraries_own_indexing_errors_stop_the_host() -> None:
    app = func.FunctionApp()

    @app.route(route="a")
    def twice(req: func.HttpRequest) -> str:
        return "a"

    app.get_functions()  # a second call raises inside azure.functions
    with pytest.raises(StartupError, match="the app's functions cannot be read"):
        read_functions(app, AppSettings({}))


def test_async_functions_are_awaited() -> None:
    app = func.FunctionApp()

    @app.route(route="hello")
    async def hello(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse(f"hello {req.params['who']}")

    [spec] = read_functions(app, AppSettings({}))
    invoker = Invoker(StorageAccounts(AppSettings({})), "base64")
    request = func.HttpRequest(method="GET", url="http://127.0.0.1/api/hello?who=you", params={"who": "you"}, body=b"")
    assert invoker.invoke(spec, request, reason="test").get_body() == b"hello you"


def test_blob_paths_with_patterns_match_their_blobs_only() -> None:
    trigger = BlobTrigger("blob", "input", "raw/{name}.csv", "Storage", event_grid=False)
    assert trigger.prefix == "raw/"
    assert trigger.matches("raw/a.csv") and trigger.matches("raw/dir/b c.csv")
    assert not trigger.matches("raw/a.txt") and not trigger.matches("cooked/a.csv")
    everything = BlobTrigger("blob", "input", "{name}", "Storage", event_grid=False)
    assert everything.prefix == "" and everything.matches("any/thing ü;$(x)")
