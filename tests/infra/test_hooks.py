"""The azd postdeploy hooks (infra/hooks/postdeploy.sh and its pwsh twin) against stub `az`/`azd` executables.

The stubs (tests/infra/stub_cli.py) record every call and keep the little state the hook reads back, so these
tests check what the hook would do on Azure: the exact event subscriptions, which must be those of
local/eventgrid/subscriptions.json (the file the local Event Grid delivers from) as its own loader reads it, the
uploads, idempotence on a second run, that no key reaches the hook's output, and that a missing azd output fails
by name. Each check is also run on broken copies of the script (the mutation tests at the end) to show that it
can fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from local.eventgrid.subscriptions import load_subscriptions

PROJECT = Path(__file__).resolve().parents[2]
HOOKS = PROJECT / "infra" / "hooks"
SH_HOOK = HOOKS / "postdeploy.sh"
PS_HOOK = HOOKS / "postdeploy.ps1"
STUB = Path(__file__).resolve().parent / "stub_cli.py"

# What the stub's `az functionapp keys list --query Q` answers, per query.
KEYS = {
    "functionKeys.default": "k3y-FUNCTION-default-0123456789abcdef==",
    "systemKeys.eventgrid_extension": "k3y-EVENTGRID-extension-0123456789ab==",
    "systemKeys.blobs_extension": "k3y-BLOBS-extension-0123456789abcdef==",
}
SUBSCRIPTIONS_FILE = PROJECT / "local" / "eventgrid" / "subscriptions.json"
APP_HOST = "func-batchdrop-abc123.azurewebsites.net"
ENV = {
    "AZURE_ENV_NAME": "dev",
    "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000001",
    "AZURE_LOCATION": "westeurope",
    "AZURE_TENANT_ID": "00000000-0000-0000-0000-000000000002",
    "AZURE_RESOURCE_GROUP": "rg-batchdrop-dev",
    "AZURE_FUNCTION_APP_NAME": "func-batchdrop-abc123",
    "AZURE_FUNCTION_APP_URL": f"https://{APP_HOST}/",
    "AZURE_STORAGE_ACCOUNT_NAME": "stbatchdropabc123",
    "AZURE_STORAGE_ACCOUNT_ID": "/subscriptions/s/resourceGroups/rg-batchdrop-dev/providers/Microsoft.Storage/"
    "storageAccounts/stbatchdropabc123",
    "AZURE_STORAGE_BLOB_ENDPOINT": "https://stbatchdropabc123.blob.core.windows.net/",
    "AZURE_EVENTGRID_SYSTEM_TOPIC_NAME": "evgt-batchdrop-abc123",
    "BATCHDROP_INPUT_CONTAINER": "input",
    "BATCHDROP_APPS_CONTAINER": "apps",
    "BATCHDROP_RESULTS_CONTAINER": "results",
    "BATCHDROP_STAGING_PREFIX": "stg",
    "BATCHDROP_EVENT_DEADLETTER_CONTAINER": "eventgrid-deadletter",
    "AZURE_BATCH_ACCOUNT_NAME": "batchdropabc123",
    "AZURE_BATCH_ACCOUNT_ENDPOINT": "https://batchdropabc123.westeurope.batch.azure.com",
}
REQUIRED = [
    "AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZURE_FUNCTION_APP_NAME", "AZURE_FUNCTION_APP_URL",
    "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_ID", "AZURE_STORAGE_BLOB_ENDPOINT",
    "AZURE_EVENTGRID_SYSTEM_TOPIC_NAME", "BATCHDROP_INPUT_CONTAINER", "BATCHDROP_APPS_CONTAINER",
    "BATCHDROP_STAGING_PREFIX", "BATCHDROP_EVENT_DEADLETTER_CONTAINER", "AZURE_BATCH_ACCOUNT_NAME",
]
AUTO_STORAGE = ENV["AZURE_STORAGE_ACCOUNT_ID"]
# The key each kind of endpoint takes: the host's function key for an HTTP function, the extension's system key.
KEY_OF_PATH = {
    "/api/": "functionKeys.default",
    "/runtime/webhooks/EventGrid": "systemKeys.eventgrid_extension",
    "/runtime/webhooks/blobs": "systemKeys.blobs_extension",
}
SUBSCRIPTION_VERB = ["eventgrid", "system-topic", "event-subscription"]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    calls: list[dict[str, list[str] | str]]  # this run's calls only
    state: dict[str, dict[str, object]]


class World:
    """A stub directory first on PATH, and a project root holding the hook under test (real or mutated)."""

    def __init__(self, root: Path, hook: Path, shell: list[str]) -> None:
        self.stubs = root / "stubs"
        self.stubs.mkdir()
        self.hook, self.shell = hook, shell
        for tool in ("az", "azd"):
            target = self.stubs / tool
            target.write_text(f"#!{sys.executable}\n" + STUB.read_text())
            target.chmod(0o755)
        self.configure()

    def configure(self, **config: object) -> None:
        (self.stubs / "config.json").write_text(json.dumps({"keys": KEYS, "auto_storage": AUTO_STORAGE, **config}))

    def run(self, env: dict[str, str] | None = None, timeout: float = 60) -> Run:
        log = self.stubs / "calls.jsonl"
        before = len(log.read_text().splitlines()) if log.exists() else 0
        environment = {
            "PATH": f"{self.stubs}{os.pathsep}{os.environ['PATH']}",
            "HOME": os.environ.get("HOME", "/tmp"),
            "BATCHDROP_HOOK_KEY_DELAY_SECONDS": "0",
            **(ENV if env is None else env),
        }
        done = subprocess.run([*self.shell, str(self.hook)], env=environment, capture_output=True, text=True,
                              timeout=timeout, check=False)
        lines = log.read_text().splitlines() if log.exists() else []
        state_file = self.stubs / "state.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        return Run(done.returncode, done.stdout, done.stderr, [json.loads(line) for line in lines[before:]], state)


def sh_world(root: Path, hook_text: str | None = None) -> World:
    """The sh hook; a mutated copy lives at root/infra/hooks with apps/ linked, as the real one does."""
    if hook_text is None:
        return World(root, SH_HOOK, ["sh"])
    (root / "infra" / "hooks").mkdir(parents=True)
    (root / "apps").symlink_to(PROJECT / "apps")
    hook = root / "infra" / "hooks" / "postdeploy.sh"
    hook.write_text(hook_text)
    return World(root, hook, ["sh"])


def options(argv: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    words: list[str] = []
    found: dict[str, list[str]] = {}
    current: str | None = None
    for token in argv:
        if token.startswith("--"):
            current = token
            found[current] = []
            if token == "--overwrite":
                current = None
        elif current is None:
            words.append(token)
        else:
            found[current].append(token)
    return words, found


def az_calls(run: Run, *words: str) -> list[dict[str, list[str]]]:
    """The option maps of this run's `az <words...>` calls."""
    picked = []
    for call in run.calls:
        if call["tool"] == "az":
            command, found = options(list(call["argv"]))
            if command == list(words):
                picked.append(found)
    return picked


# ---- the checks (each a function, so the mutation tests can show it failing) ----


def check_succeeded(run: Run) -> None:
    assert run.returncode == 0, f"hook failed ({run.returncode}):\n{run.stdout}\n{run.stderr}"


def expected_subscriptions(subscriptions_file: Path = SUBSCRIPTIONS_FILE) -> dict[str, dict[str, list[str]]]:
    """What each subscription of the local Event Grid's file must become on Azure: its options as az is given them."""
    settings = {name: ENV[name] for name in ("BATCHDROP_INPUT_CONTAINER", "BATCHDROP_STAGING_PREFIX")}
    deadletter = f"{ENV['AZURE_STORAGE_ACCOUNT_ID']}/blobServices/default/containers/eventgrid-deadletter"
    expected = {}
    for subscription in load_subscriptions(subscriptions_file, settings):
        [query] = [query for prefix, query in KEY_OF_PATH.items() if subscription.endpoint.startswith(prefix)]
        separator = "&" if "?" in subscription.endpoint else "?"
        expected[subscription.name] = {
            "--subscription": [ENV["AZURE_SUBSCRIPTION_ID"]],
            "--resource-group": [ENV["AZURE_RESOURCE_GROUP"]],
            "--system-topic-name": [ENV["AZURE_EVENTGRID_SYSTEM_TOPIC_NAME"]],
            "--endpoint-type": ["webhook"],
            "--endpoint": [f"https://{APP_HOST}{subscription.endpoint}{separator}code={KEYS[query]}"],
            "--included-event-types": list(subscription.included_event_types),
            "--subject-begins-with": [subscription.subject_begins_with],
            "--max-events-per-batch": [str(subscription.max_events_per_batch)],
            "--preferred-batch-size-in-kilobytes": [str(subscription.preferred_batch_size_kb)],
            "--max-delivery-attempts": [str(subscription.max_delivery_attempts)],
            "--event-ttl": [str(subscription.event_ttl_minutes)],
            "--deadletter-identity": ["systemassigned"],
            "--deadletter-identity-endpoint": [deadletter],
        }
        if subscription.subject_ends_with:
            expected[subscription.name]["--subject-ends-with"] = [subscription.subject_ends_with]
    return expected


def check_subscription(run: Run) -> None:
    """Every subscription of the local Event Grid's file, created on the system topic exactly as it is declared."""
    writes = az_calls(run, *SUBSCRIPTION_VERB, "create") + az_calls(run, *SUBSCRIPTION_VERB, "update")
    expected = expected_subscriptions()
    assert len(writes) == len(expected), f"expected {len(expected)} creates, got {writes}"
    sent = {write["--name"][0]: {k: v for k, v in write.items() if k not in ("--name", "--output")} for write in writes}
    assert sent == expected
    for name, options in sent.items():
        url = urlsplit(options["--endpoint"][0])
        assert url.scheme == "https" and url.netloc == APP_HOST, f"{name}: {url}"
        assert set(parse_qs(url.query, strict_parsing=True)) <= {"functionName", "code"}, f"{name}: {url.query}"


def check_key_kept_quiet(run: Run) -> None:
    """No key is in the hook's output, nor in any az argument but a webhook endpoint."""
    for key in KEYS.values():
        assert key not in run.stdout and key not in run.stderr, "a key reached the hook's output"
        for call in run.calls:
            for position, token in enumerate(call["argv"]):
                if key in token:
                    assert call["argv"][position - 1] == "--endpoint", f"the key went to {call['argv'][:4]}"


def check_uploads(run: Run) -> None:
    [upload] = az_calls(run, "storage", "blob", "upload-batch")
    assert upload["--auth-mode"] == ["login"]
    assert upload["--account-name"] == [ENV["AZURE_STORAGE_ACCOUNT_NAME"]]
    assert upload["--destination"] == ["apps"]
    assert Path(upload["--source"][0]).resolve() == PROJECT / "apps"
    assert "--overwrite" in upload
    assert run.state["packages"] == {"csvstats/1.0": {"entries": ["csvstats.py", "lib/colstats.py"]}}
    assert run.state["defaults"] == {"csvstats": "1.0"}


def check_prints_where_to_go(run: Run) -> None:
    assert "https://stbatchdropabc123.blob.core.windows.net/input/" in run.stdout
    assert f"https://{APP_HOST}/api/status" in run.stdout
    assert "sig=" not in run.stdout and "code=" not in run.stdout


def check_idempotent(first: Run, second: Run) -> None:
    """A second run puts the same subscriptions again (create is a PUT), uploads no package again, and ends in
    the same state."""
    check_succeeded(second)
    check_subscription(second)
    assert az_calls(second, "batch", "application", "package", "create") == [], "the package was uploaded again"
    assert second.state == first.state


def check_missing(run: Run, name: str) -> None:
    assert run.returncode != 0
    assert name in run.stderr, f"the error does not name {name}: {run.stderr!r}"
    assert [call for call in run.calls if call["tool"] == "az"] == [], "az ran before the environment was checked"


def without(*names: str) -> dict[str, str]:
    return {name: value for name, value in ENV.items() if name not in names}


# ---- the sh hook ----


def test_first_run_creates_the_event_subscriptions_uploads_apps_and_prints_no_key(tmp_path: Path) -> None:
    run = sh_world(tmp_path).run()

    check_succeeded(run)
    check_subscription(run)
    assert len(az_calls(run, *SUBSCRIPTION_VERB, "create")) == len(expected_subscriptions()) == 2
    check_key_kept_quiet(run)
    check_uploads(run)
    check_prints_where_to_go(run)
    subscriptions = run.state["subscriptions"]
    assert subscriptions["batchdrop-input"]["--endpoint"] == [
        f"https://{APP_HOST}/api/events/input?code={KEYS['functionKeys.default']}"]
    assert subscriptions["batchdrop-task-finished"]["--endpoint"] == [
        f"https://{APP_HOST}/runtime/webhooks/EventGrid?functionName=task_finished"
        f"&code={KEYS['systemKeys.eventgrid_extension']}"]
    staging = subscriptions["batchdrop-task-finished"]["--subject-begins-with"]
    assert staging == ["/blobServices/default/containers/stg-"]


def test_second_run_is_idempotent(tmp_path: Path) -> None:
    world = sh_world(tmp_path)
    first = world.run()
    check_succeeded(first)

    second = world.run()

    check_idempotent(first, second)
    check_subscription(second)
    check_key_kept_quiet(second)


@pytest.mark.parametrize("name", REQUIRED)
def test_a_missing_output_fails_naming_it(tmp_path: Path, name: str) -> None:
    run = sh_world(tmp_path).run(env=without(name))

    check_missing(run, name)


def test_outputs_missing_from_the_environment_come_from_azd_env(tmp_path: Path) -> None:
    world = sh_world(tmp_path)
    world.configure(azd_values={name: ENV[name] for name in ("AZURE_RESOURCE_GROUP", "AZURE_FUNCTION_APP_URL")})

    run = world.run(env=without("AZURE_RESOURCE_GROUP", "AZURE_FUNCTION_APP_URL"))

    check_succeeded(run)
    check_subscription(run)
    assert [call["argv"] for call in run.calls if call["tool"] == "azd"] == [["env", "get-values"]]


def test_a_key_that_appears_late_is_waited_for(tmp_path: Path) -> None:
    world = sh_world(tmp_path)
    world.configure(empty_keys=2)

    run = world.run()

    check_succeeded(run)
    assert len(az_calls(run, "functionapp", "keys", "list")) == 2 + len(expected_subscriptions())
    check_subscription(run)


def test_no_key_at_all_fails_clearly_before_any_subscription(tmp_path: Path) -> None:
    world = sh_world(tmp_path)
    world.configure(empty_keys=100)

    run = world.run(env={**ENV, "BATCHDROP_HOOK_KEY_ATTEMPTS": "3"})

    assert run.returncode != 0
    assert "no functionKeys.default after 3 attempts" in run.stderr
    assert az_calls(run, *SUBSCRIPTION_VERB, "create") == []


def test_without_auto_storage_packages_are_skipped_with_a_note(tmp_path: Path) -> None:
    world = sh_world(tmp_path)
    world.configure(auto_storage="")

    run = world.run()

    check_succeeded(run)
    check_subscription(run)
    assert "no auto-storage account, so application packages were not uploaded" in run.stdout
    assert az_calls(run, "batch", "application", "package", "create") == []
    assert len(az_calls(run, "storage", "blob", "upload-batch")) == 1


def test_sh_hooks_pass_bash_n_and_shellcheck() -> None:
    scripts = sorted(HOOKS.glob("*.sh"))
    assert SH_HOOK in scripts
    for script in scripts:
        for checker in (["bash", "-n"], ["sh", "-n"]):
            done = subprocess.run([*checker, str(script)], capture_output=True, text=True, check=False)
            assert done.returncode == 0, f"{' '.join(checker)} {script.name}: {done.stderr}"
    shellcheck = shutil.which("shellcheck")
    # Missing shellcheck fails, never skips: `make install` installs it (apt-get) where it can.
    assert shellcheck is not None, "shellcheck is not installed: run `make install` (or apt-get install shellcheck)"
    done = subprocess.run([shellcheck, "--shell=sh", *map(str, scripts)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


# ---- the pwsh twin ----

AZ_CALL = re.compile(r"(?:^\s*|^\s*if\s+|\$\(|=\s*\()az\s+(?P<rest>.*)$")
OPTION = re.compile(r"--(?P<name>[a-z][a-z-]*)(?:\s+(?!--)(?P<value>[^\s)|]+))?")


def normalise(value: str) -> str:
    """`"$AZURE_X"`, `$env:AZURE_X`, `$subject_prefix` and `$subjectPrefix` all read the same."""
    value = value.strip("'\"").replace("$env:", "$")
    return value.lower().replace("_", "") if value.startswith("$") else value


def az_commands(text: str) -> list[tuple[tuple[str, ...], tuple[tuple[str, str], ...]]]:
    """Each `az` call of a script, in order: its command words and its (option, normalised value) pairs."""
    found = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        match = AZ_CALL.search(line)
        if match is None:
            continue
        rest = match.group("rest")
        head = rest.split(" --", 1)[0]
        words = tuple(normalise(word) for word in head.split())
        pairs = tuple((m.group("name"), normalise(m.group("value") or "")) for m in OPTION.finditer(rest))
        found.append((words, pairs))
    return found


def check_twins_agree(sh_text: str, ps_text: str) -> None:
    sh_calls, ps_calls = az_commands(sh_text), az_commands(ps_text)
    assert len(sh_calls) >= 7, f"found only {len(sh_calls)} az calls in the sh hook: the parser lost them"
    assert sh_calls == ps_calls, "postdeploy.sh and postdeploy.ps1 call different az commands:\n" + "\n".join(
        f"sh: {a}\nps: {b}" for a, b in zip(sh_calls, ps_calls, strict=False) if a != b)


def test_sh_and_pwsh_hooks_call_the_same_az_commands_in_the_same_order() -> None:
    check_twins_agree(SH_HOOK.read_text(), PS_HOOK.read_text())


def test_pwsh_hook_against_the_stubs(tmp_path: Path) -> None:
    pwsh = shutil.which("pwsh")
    if pwsh is None:
        pytest.skip("pwsh is not installed here; the az-command parity test above keeps the twin in step")
    sh_run = sh_world(tmp_path / "sh").run()
    (tmp_path / "ps").mkdir()
    world = World(tmp_path / "ps", PS_HOOK, [pwsh, "-NoProfile", "-NonInteractive", "-File"])
    first = world.run()
    check_succeeded(first)
    check_subscription(first)
    check_key_kept_quiet(first)
    check_uploads(first)
    check_prints_where_to_go(first)
    assert [(c["tool"], options(list(c["argv"]))[0]) for c in first.calls] == [
        (c["tool"], options(list(c["argv"]))[0]) for c in sh_run.calls]
    check_idempotent(first, world.run())
    check_missing(world.run(env=without("AZURE_BATCH_ACCOUNT_NAME")), "AZURE_BATCH_ACCOUNT_NAME")


# ---- the checks fail on broken hooks ----

Mutation = tuple[str, str, Callable[[World], None]]


def run_first(world: World) -> None:
    run = world.run()
    check_succeeded(run)
    check_subscription(run)
    check_key_kept_quiet(run)
    check_uploads(run)
    check_prints_where_to_go(run)


def run_twice(world: World) -> None:
    first = world.run()
    check_idempotent(first, world.run())


def run_missing(world: World) -> None:
    check_missing(world.run(env=without("AZURE_EVENTGRID_SYSTEM_TOPIC_NAME")), "AZURE_EVENTGRID_SYSTEM_TOPIC_NAME")


SH_MUTATIONS: dict[str, Mutation] = {
    "no subject filter": (' --subject-begins-with "$begins"', "", run_first),
    "no end filter": ('set -- --subject-ends-with "$ends"', "set --", run_first),
    "another staging prefix": (
        '"$BATCHDROP_INPUT_CONTAINER" "$BATCHDROP_STAGING_PREFIX" <<',
        '"$BATCHDROP_INPUT_CONTAINER" staging <<',
        run_first,
    ),
    "no batching": (' --max-events-per-batch "$batch"', "", run_first),
    "batch size fixed": ('--max-events-per-batch "$batch"', "--max-events-per-batch 1", run_first),
    "no dead letters": (' --deadletter-identity systemassigned', "", run_first),
    "every event type": (
        "--included-event-types $types",
        "--included-event-types $types Microsoft.Storage.BlobDeleted",
        run_first,
    ),
    "wrong key for webhooks": ("query=systemKeys.eventgrid_extension", "query=functionKeys.default", run_first),
    "one subscription only": ("for entry in entries:", "for entry in entries[:1]:", run_first),
    "no endpoint type": (" --endpoint-type webhook", "", run_first),
    "key printed": ('  key=""\n  endpoint=""', '  echo "endpoint: $endpoint"\n  key=""\n  endpoint=""', run_first),
    "key on stderr": ('  key=""\n  endpoint=""', '  echo "$key" >&2\n  key=""\n  endpoint=""', run_first),
    "package uploaded each time": ('if [ "$state" = "Active" ]; then', "if false; then", run_twice),
    "key auth for the upload": (
        '--auth-mode login --account-name "$AZURE', '--auth-mode key --account-name "$AZURE', run_first),
    "variable left unchecked": (" AZURE_EVENTGRID_SYSTEM_TOPIC_NAME\n", "\n", run_missing),
}


@pytest.mark.parametrize("mutation", sorted(SH_MUTATIONS))
def test_the_checks_fail_on_a_broken_sh_hook(tmp_path: Path, mutation: str) -> None:
    old, new, scenario = SH_MUTATIONS[mutation]
    text = SH_HOOK.read_text()
    assert text.count(old) == 1, f"mutation {mutation!r} no longer applies: {old!r} is not in the hook once"
    world = sh_world(tmp_path, text.replace(old, new))

    with pytest.raises(AssertionError):
        scenario(world)


PS_MUTATIONS = {
    "option dropped": (" --subject-begins-with $begins", ""),
    "another dead-letter identity": ("--deadletter-identity systemassigned", "--deadletter-identity none"),
    "another container": (
        "--destination $env:BATCHDROP_APPS_CONTAINER",
        "--destination $env:BATCHDROP_INPUT_CONTAINER",
    ),
    "upload moved last": ("", ""),  # the test moves the upload line after the packages' lines
}


@pytest.mark.parametrize("mutation", sorted(PS_MUTATIONS))
def test_the_parity_check_fails_on_a_drifted_pwsh_twin(mutation: str) -> None:
    text = PS_HOOK.read_text()
    if mutation == "upload moved last":
        lines = text.splitlines()
        [upload] = [i for i, line in enumerate(lines) if line.lstrip().startswith("az storage blob upload-batch")]
        moved = lines[:upload] + lines[upload + 1:]
        [last] = [i for i, line in enumerate(moved) if line.lstrip().startswith("az batch application set")]
        moved.insert(last + 1, lines[upload])
        broken = "\n".join(moved)
    else:
        old, new = PS_MUTATIONS[mutation]
        assert text.count(old) == 1, f"mutation {mutation!r} no longer applies"
        broken = text.replace(old, new)

    with pytest.raises(AssertionError):
        check_twins_agree(SH_HOOK.read_text(), broken)
