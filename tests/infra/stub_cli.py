"""Stub `az` and `azd` for the deploy hooks: the CLI boundary of a script, with no Azure behind it.

Installed as executables named `az` and `azd` in a directory put first on PATH. Every call appends
{"tool", "argv"} as one JSON line to calls.jsonl beside them; the few commands the hooks use answer from
state.json there (an event subscription exists once created, a package once uploaded), so a second run sees
what the first one made. Any other command exits 64: a hook that starts calling something new fails here
until the stub (and this test's idea of the hook) learns it.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLAGS = {"--overwrite"}
NOT_FOUND = 3


def parse(argv: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(command words, {option: values}); an option takes every value up to the next option."""
    words: list[str] = []
    options: dict[str, list[str]] = {}
    current: str | None = None
    for token in argv:
        if token.startswith("--"):
            current = token
            options[current] = []
            if token in FLAGS:
                current = None
        elif current is None:
            words.append(token)
        else:
            options[current].append(token)
    return words, options


def one(options: dict[str, list[str]], name: str) -> str:
    values = options.get(name, [])
    if len(values) != 1:
        sys.exit(f"stub az: {name} needs exactly one value, got {values}")
    return values[0]


def az(argv: list[str], config: dict[str, object], state: dict[str, dict[str, object]]) -> int:
    words, options = parse(argv)
    command = " ".join(words)
    if command == "functionapp keys list":
        keys: dict[str, str] = config["keys"]  # type: ignore[assignment]
        query = one(options, "--query")
        if query not in keys or one(options, "--output") != "tsv":
            sys.exit(f"stub az: the hook asked for {query!r}; it may ask for one of {sorted(keys)} as tsv")
        empty = int(state["counters"].get("empty_keys", config.get("empty_keys", 0)))  # type: ignore[call-overload]
        state["counters"]["empty_keys"] = max(empty - 1, 0)
        print("" if empty > 0 else keys[query])
        return 0
    if command.startswith("eventgrid system-topic event-subscription "):
        verb = words[-1]
        name = one(options, "--name")
        existing = state["subscriptions"].get(name)
        if verb == "show":
            if existing is None:
                print(f"(ResourceNotFound) event subscription {name} not found", file=sys.stderr)
                return NOT_FOUND
            print(json.dumps(existing))
            return 0
        if verb not in ("create", "update"):
            return unexpected(argv)
        # As on Azure: create is a PUT (it replaces an existing subscription), update needs one to exist.
        if verb == "update" and existing is None:
            print(f"(ResourceNotFound) event subscription {name} not found", file=sys.stderr)
            return NOT_FOUND
        record = dict(existing or {}) if verb == "update" else {}
        record.update({option: values for option, values in options.items() if option not in ("--name", "--output")})
        state["subscriptions"][name] = record
        return 0
    if command == "storage blob upload-batch":
        if not Path(one(options, "--source")).is_dir():
            sys.exit("stub az: upload-batch --source is not a directory")
        return 0
    if command == "batch account show":
        print(config.get("auto_storage", ""))
        return 0
    if command.startswith("batch application "):
        key = f"{one(options, '--application-name')}/{one(options, '--version-name')}" if "--version-name" in options \
            else one(options, "--application-name")
        if command == "batch application package show":
            if key not in state["packages"]:
                print(f"(ApplicationPackageNotFound) {key}", file=sys.stderr)
                return NOT_FOUND
            print("Active")
            return 0
        if command == "batch application package create":
            with zipfile.ZipFile(one(options, "--package-file")) as archive:
                state["packages"][key] = {"entries": sorted(archive.namelist())}
            return 0
        if command == "batch application set":
            state["defaults"][key] = one(options, "--default-version")
            return 0
    return unexpected(argv)


def unexpected(argv: list[str]) -> int:
    print(f"stub az: unexpected command {argv}", file=sys.stderr)
    return 64


def azd(argv: list[str], config: dict[str, object]) -> int:
    if argv != ["env", "get-values"]:
        print(f"stub azd: unexpected command {argv}", file=sys.stderr)
        return 64
    for name, value in dict(config.get("azd_values", {})).items():  # type: ignore[call-overload]
        print(f'{name}="{value}"')
    return 0


def main() -> int:
    tool = Path(sys.argv[0]).name
    argv = sys.argv[1:]
    with (HERE / "calls.jsonl").open("a", encoding="utf-8") as log:
        log.write(json.dumps({"tool": tool, "argv": argv}) + "\n")
    config = json.loads((HERE / "config.json").read_text())
    state_file = HERE / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {
        "subscriptions": {}, "packages": {}, "defaults": {}, "counters": {}}
    status = az(argv, config, state) if tool == "az" else azd(argv, config)
    state_file.write_text(json.dumps(state, indent=1, sort_keys=True))
    return status


if __name__ == "__main__":
    sys.exit(main())
