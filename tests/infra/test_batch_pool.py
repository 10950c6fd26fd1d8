"""The Batch account's auto-storage and default pool in infra/app/batch.bicep, checked against the app's own code.

The app creates pools from the pipelines file and corrects an existing pool's formula and counts when they drift
from the file. The default pool is declared in Bicep (only the management plane gives a pool the identity its nodes
need for application packages), so it must be the pool the app would make from the deployed file with the
deployment's pool defaults: same image, slots and autoscale formula, character for character.
"""

import json
import re
from pathlib import Path

import pytest

from shared.pipelines import load_pipelines
from shared.pools import DEFAULT_IMAGE, PoolDefaults, pending_tasks_formula
from tests.infra.bicep_model import Expr, load, template_sources, text, walk

ROOT = Path(__file__).resolve().parents[2]
BATCH = "infra/app/batch.bicep"
MAIN = "infra/main.bicep"
TERNARY = re.compile(r"^(\w+) \? '([^']*)' : '([^']*)'$")


def bicep_formula(source: str, max_nodes: int, spot: bool, slots: int) -> str:
    """batch.bicep's poolFormula for these parameters, its interpolations evaluated."""
    bicep = load({BATCH: source})[BATCH]
    params = {"poolMaxNodes": str(max_nodes), "poolTaskSlots": str(slots), "poolUseSpot": spot}
    values: dict[str, str] = {}
    for var in bicep.of("var"):
        if isinstance(var.value, (str, int)):
            values[var.name] = str(var.value)
        elif isinstance(var.value, Expr) and (found := TERNARY.match(var.value.text)):
            condition, when_true, when_false = found.groups()
            values[var.name] = when_true if params[condition] else when_false
    formula = bicep.get("var", "poolFormula").value
    assert isinstance(formula, Expr) and formula.text.startswith("join(["), "poolFormula must be join([...], '\\n')"
    assert formula.text.rstrip().endswith("], '\\n')"), "poolFormula's lines must be joined with '\\n'"
    names = {**values, "poolMaxNodes": str(max_nodes), "poolTaskSlots": str(slots)}
    lines = []
    for node in walk(formula.node):
        if node.type == "array":
            for item in node.named_children:
                assert item.type == "string", f"poolFormula line {text(item)!r} is not a string"
                line = text(item)[1:-1]
                lines.append(re.sub(r"\$\{(\w+)\}", lambda m: names[m.group(1)], line))
            break
    return "\n".join(lines)


@pytest.mark.parametrize(("max_nodes", "spot", "slots"), [(2, False, 2), (40, True, 8), (1, False, 1)])
def test_the_pools_formula_is_the_one_the_app_generates(max_nodes: int, spot: bool, slots: int) -> None:
    source = template_sources()[BATCH]
    assert bicep_formula(source, max_nodes, spot, slots) == pending_tasks_formula(0, max_nodes, spot, 10, slots)


def test_a_changed_formula_line_is_caught() -> None:
    source = template_sources()[BATCH].replace("ceil($pending / ${poolTaskSlots})", "ceil($pending / 2)")
    assert bicep_formula(source, 3, False, 4) != pending_tasks_formula(0, 3, False, 10, 4)


def check_pool(sources: dict[str, str]) -> None:
    files = load({path: s for path, s in sources.items() if path.endswith(".bicep")})
    batch, main = files[BATCH], files[MAIN]
    (account,) = [r for r in batch.resources("Microsoft.Batch/batchAccounts") if not r.existing]
    auto_storage = account.value["properties"].get("autoStorage")
    assert isinstance(auto_storage, dict), "a new Batch account links the storage account as auto-storage"
    assert auto_storage.get("authenticationMode") == "BatchAccountManagedIdentity", (
        "auto-storage through the account's identity: storage keys are off"
    )
    assert auto_storage.get("storageAccountId") == Expr("storageAccountId", account.node), "auto-storage account"
    assert auto_storage.get("nodeIdentityReference") == {"resourceId": Expr("nodeIdentityId", account.node)}, (
        "nodes reach auto-storage with the node identity"
    )
    assert account.value["identity"] == {
        "type": "UserAssigned",
        "userAssignedIdentities": {"'${accountIdentityId}'": {}},
    }, "the account has its own user-assigned identity"
    (pool,) = batch.resources("Microsoft.Batch/batchAccounts/pools")
    assert pool.value["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {"'${nodeIdentityId}'": {}}}, (
        "the default pool carries the node identity that auto-storage names"
    )
    properties = pool.value["properties"]
    machine = properties["deploymentConfiguration"]["virtualMachineConfiguration"]
    image = machine["imageReference"]
    assert (image["publisher"], image["offer"], image["sku"], machine["nodeAgentSkuId"]) == DEFAULT_IMAGE, (
        "the pool's image is the one the app gives a pool without containers"
    )
    # main.bicep's defaults are those of the deployed pipelines file's pool.
    params = {p.name: p for p in main.of("param")}
    pipelines_file = ROOT / params["pipelinesFile"].value
    pipelines = load_pipelines(pipelines_file, PoolDefaults())
    pool_ids = {p.pool.id for p in pipelines.pipelines}
    assert params["poolId"].value in pool_ids, f"poolId {params['poolId'].value!r} is not a pool of {pipelines_file}"
    (spec,) = {p.pool for p in pipelines.pipelines if p.pool.id == params["poolId"].value}
    assert spec.task_slots_per_node == params["poolTaskSlots"].value, "poolTaskSlots = the file's task_slots_per_node"
    raw = json.loads(pipelines_file.read_text())
    for pipeline in raw["pipelines"]:
        if pipeline["pool"]["id"] == params["poolId"].value:
            left_out = {"vm_size", "scale", "dedicated_nodes", "low_priority_nodes"} & pipeline["pool"].keys()
            assert not left_out, f"{pipeline['name']}: the deployment's pool parameters cannot reach {sorted(left_out)}"
    assert params["poolScaleToZero"].value is True, "no node costs at idle by default"


def test_the_default_pool_and_auto_storage() -> None:
    check_pool(template_sources())


@pytest.mark.parametrize(
    ("file", "old", "new"),
    [
        (BATCH, "authenticationMode: 'BatchAccountManagedIdentity'", "authenticationMode: 'StorageKeys'"),
        (BATCH, "      nodeIdentityReference: {\n        resourceId: nodeIdentityId\n      }\n", ""),
        (
            BATCH,
            "      '${nodeIdentityId}': {}\n    }\n  }\n  properties: {\n    vmSize",
            "      '${accountIdentityId}': {}\n    }\n  }\n  properties: {\n    vmSize",
        ),
        (BATCH, "offer: 'ubuntu-24_04-lts'", "offer: 'ubuntu-22_04-lts'"),
        (MAIN, "param poolTaskSlots int = 2", "param poolTaskSlots int = 4"),
        (MAIN, "param poolScaleToZero bool = true", "param poolScaleToZero bool = false"),
        (MAIN, "param poolId string = 'batchdrop-pool'", "param poolId string = 'other-pool'"),
    ],
)
def test_each_pool_check_fails_on_a_broken_template(file: str, old: str, new: str) -> None:
    sources = template_sources()
    assert sources[file].count(old) == 1, f"anchor must occur once in {file}: {old!r}"
    sources[file] = sources[file].replace(old, new)
    with pytest.raises(AssertionError):
        check_pool(sources)
