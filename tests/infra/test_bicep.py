"""Structural checks of the azd template (azure.yaml, infra/*.bicep, infra/main.parameters.json), from parse trees.

No Bicep compiler and no Azure here: each check reads what tree-sitter's Bicep grammar parsed, and each is shown to
fail on a deliberately broken copy of the template (MUTATIONS, at the end).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from typing import Any, Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.settings import STORAGE_CONNECTION, Settings
from tests.infra.bicep_model import ROOT, BicepFile, Expr, load, template_sources, walk

MAIN = "infra/main.bicep"
FUNCTION = "infra/app/function.bicep"
STORAGE = "infra/app/storage.bicep"
BATCH = "infra/app/batch.bicep"
ROLES = "infra/app/roles.bicep"
AZURE_YAML = "azure.yaml"
PARAMETERS = "infra/main.parameters.json"

# Every resource type@apiVersion the template may use, each looked up in Azure/bicep-types-az (the type definitions
# the Bicep compiler checks against), at the path given.
PINNED_API_VERSIONS = {
    "Microsoft.Resources/resourceGroups@2024-03-01": "generated/resources/microsoft.resources/2024-03-01/types.json",
    "Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31": (
        "generated/msi/microsoft.managedidentity/2023-01-31/types.json"
    ),
    "Microsoft.OperationalInsights/workspaces@2023-09-01": (
        "generated/operationalinsights/microsoft.operationalinsights/2023-09-01/types.json"
    ),
    "Microsoft.Insights/components@2020-02-02": (
        "generated/applicationinsights/microsoft.insights/2020-02-02/types.json"
    ),
    "Microsoft.Storage/storageAccounts@2023-05-01": "generated/storage/microsoft.storage/2023-05-01/types.json",
    "Microsoft.Storage/storageAccounts/blobServices@2023-05-01": (
        "generated/storage/microsoft.storage/2023-05-01/types.json"
    ),
    "Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01": (
        "generated/storage/microsoft.storage/2023-05-01/types.json"
    ),
    "Microsoft.Web/serverfarms@2024-04-01": "generated/web/microsoft.web/2024-04-01/types.json",
    "Microsoft.Web/sites@2024-04-01": "generated/web/microsoft.web/2024-04-01/types.json",
    "Microsoft.Web/sites/config@2024-04-01": "generated/web/microsoft.web/2024-04-01/types.json",
    "Microsoft.Batch/batchAccounts@2024-07-01": "generated/batch/microsoft.batch/2024-07-01/types.json",
    "Microsoft.Batch/batchAccounts/pools@2024-07-01": "generated/batch/microsoft.batch/2024-07-01/types.json",
    "Microsoft.EventGrid/systemTopics@2022-06-15": "generated/eventgrid/microsoft.eventgrid/2022-06-15/types.json",
    "Microsoft.Authorization/roleAssignments@2022-04-01": (
        "generated/authorization/microsoft.authorization/2022-04-01/types.json"
    ),
}

# Built-in role ids (learn.microsoft.com/azure/role-based-access-control/built-in-roles): what roles.bicep must hold,
# each assigned exactly once. Azure Batch Data Contributor, not Job Submitter: the app creates and resizes pools.
EXPECTED_ROLES = {
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Storage Blob Delegator": "db58b8e5-c6ad-4a2a-8342-4190687cbf4a",
    "Azure Batch Data Contributor": "6aaa78f1-f7de-44ca-8722-c64a23943cae",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "Storage Blob Data Reader": "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
}
# What the app's identity holds, each once.
APP_ROLES = set(EXPECTED_ROLES) - {"Storage Blob Data Reader"}
# The resource type each role must be scoped to.
ROLE_SCOPE_TYPES = {
    "Storage Blob Data Contributor": "Microsoft.Storage/storageAccounts",
    "Storage Queue Data Contributor": "Microsoft.Storage/storageAccounts",
    "Storage Table Data Contributor": "Microsoft.Storage/storageAccounts",
    "Storage Blob Delegator": "Microsoft.Storage/storageAccounts",
    "Azure Batch Data Contributor": "Microsoft.Batch/batchAccounts",
    "Monitoring Metrics Publisher": "Microsoft.Insights/components",
    "Storage Blob Data Reader": "Microsoft.Storage/storageAccounts",
}
# The Batch account's identity manages its auto-storage (application packages); the nodes' identity reads them;
# the Event Grid system topic's identity writes dead letters into their container only. Each gets one role, from
# roles.bicep's param of that name, which main.bicep feeds from the module's principalId output.
BATCH_IDENTITY_ROLES = {
    "batchAccountPrincipalId": ("Storage Blob Data Contributor", "batchIdentity", "Microsoft.Storage/storageAccounts"),
    "nodesPrincipalId": ("Storage Blob Data Reader", "nodeIdentity", "Microsoft.Storage/storageAccounts"),
    "eventGridPrincipalId": (
        "Storage Blob Data Contributor", "eventGrid", "Microsoft.Storage/storageAccounts/blobServices/containers"
    ),
}

# The deploying principal (whoever runs azd) gets this one role on the storage account, from roles.bicep's
# deployerPrincipalId, which main.bicep's principalId (${AZURE_PRINCIPAL_ID}) feeds.
DEPLOYER_ROLE = "Storage Blob Data Contributor"
DEPLOYER_PRINCIPAL = "deployerPrincipalId"

# What azd puts in the environment by itself
# (learn.microsoft.com/azure/developer/azure-developer-cli/manage-environment-variables).
AZD_PROVIDED = {
    "AZURE_ENV_NAME",
    "AZURE_LOCATION",
    "AZURE_SUBSCRIPTION_ID",
    "AZURE_PRINCIPAL_ID",
    "AZURE_PRINCIPAL_TYPE",
}
# uniqueString() returns 13 characters, lowercase letters and digits.
RESOURCE_TOKEN = "abcdefghij123"
SECRET_NAME = re.compile(r"key|connectionstring|sas|secret|password|token", re.IGNORECASE)
GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


class Template:
    """The template's files parsed: Bicep files as models, azure.yaml and main.parameters.json as data."""

    def __init__(self, sources: dict[str, str]) -> None:
        self.sources = sources
        self.bicep: dict[str, BicepFile] = load({path: s for path, s in sources.items() if path.endswith(".bicep")})
        self.azure_yaml: Any = yaml.safe_load(sources[AZURE_YAML])
        self.parameters: Any = json.loads(sources[PARAMETERS])

    def app_settings(self) -> dict[str, Any]:
        site_config = [r for r in self.bicep[FUNCTION].resources("Microsoft.Web/sites/config")]
        assert len(site_config) == 1 and site_config[0].value["name"] == "appsettings", "one appsettings resource"
        settings = site_config[0].value["properties"]
        assert isinstance(settings, dict), "app settings must be a literal object"
        return settings


@pytest.fixture(scope="module")
def template() -> Template:
    return Template(template_sources())


# ---------------------------------------------------------------------------------------------------------------
# The checks: each takes a Template and raises AssertionError naming what is wrong.


def check_syntax(t: Template) -> None:
    for path, bicep in t.bicep.items():
        broken = [node for node in walk(bicep.root) if node.type == "ERROR" or node.is_missing]
        assert not broken, f"{path}: syntax error at line {broken[0].start_point[0] + 1}" if broken else ""


def settings_the_app_reads() -> tuple[set[str], set[str]]:
    """(required, optional) app setting names: Settings' aliases, and the %NAME% expressions in shared/triggers."""
    required, optional = set(), set()
    for field in Settings.model_fields.values():
        assert field.alias is not None
        (required if field.is_required() else optional).add(field.alias)
    for path in sorted((ROOT / "shared" / "triggers").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                required.update(re.findall(r"%([A-Za-z0-9_]+)%", node.value))
    return required, optional


def check_app_settings(t: Template) -> None:
    settings = t.app_settings()
    required, optional = settings_the_app_reads()
    missing = {name for name in required if name not in settings and not name.startswith(STORAGE_CONNECTION)}
    assert not missing, f"app settings the app needs are not set: {sorted(missing)}"
    unknown = {name for name in settings if name.startswith("BATCHDROP_") and name not in required | optional}
    assert not unknown, f"BATCHDROP_* settings the app does not read: {sorted(unknown)}"
    # On Azure the app runs on its identity: no connection string, no account key; Settings must accept what is set.
    for forbidden in (
        STORAGE_CONNECTION,
        "AzureWebJobsStorage",
        "BATCHDROP_BATCH_ACCOUNT_KEY",
        "BATCHDROP_BATCH_ACCOUNT_NAME",
    ):
        assert forbidden not in settings, f"{forbidden} is set: the deployed app must use its managed identity"
    # A computed setting (an Expr) gets a placeholder of the type the app parses it as.
    annotations = {field.alias: field.annotation for field in Settings.model_fields.values()}
    typed: dict[object, str] = {int: "1", bool: "true"}
    examples = {"BATCHDROP_POOL_VM_SIZE": "standard_d2s_v3", "BATCHDROP_STAGING_PREFIX": "staging"}  # no URLs
    placeholders = {
        name: (
            setting
            if isinstance(setting, str)
            else examples.get(name) or typed.get(annotations[name], "https://placeholder.example/")
        )
        for name, setting in settings.items()
        if name in required | optional
    }
    try:
        parsed = Settings(_env_file=None, **placeholders)  # type: ignore[call-arg]
    except ValidationError as error:
        raise AssertionError(f"the app would refuse these settings: {error}") from None
    assert parsed.uses_managed_identity, "the app must run on its managed identity"
    for connection in ("AzureWebJobsStorage", STORAGE_CONNECTION):
        assert settings.get(f"{connection}__credential") == "managedidentity", f"{connection}__credential"
        client_id = settings.get(f"{connection}__clientId")
        assert isinstance(client_id, Expr) and client_id.text == "identityClientId", f"{connection}__clientId"
        for service in ("blob", "queue", "table"):
            uri = settings.get(f"{connection}__{service}ServiceUri")
            assert isinstance(uri, Expr) and uri.text == f"{service}Endpoint", f"{connection}__{service}ServiceUri"
    # DefaultAzureCredential (shared/gateways.py, shared/batch.py) finds a user-assigned identity by AZURE_CLIENT_ID.
    assert isinstance(settings.get("AZURE_CLIENT_ID"), Expr), "AZURE_CLIENT_ID (the identity's client id)"
    auth = settings.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING")
    assert isinstance(auth, Expr) and "Authorization=AAD" in auth.text, "Application Insights with Entra auth"


def check_no_worker_runtime(t: Template) -> None:
    for path, bicep in t.bicep.items():
        for node in walk(bicep.root):
            if node.type in ("identifier", "string_content") and (node.text or b"") == b"FUNCTIONS_WORKER_RUNTIME":
                raise AssertionError(f"{path}: FUNCTIONS_WORKER_RUNTIME (Flex Consumption refuses it)")


def check_flex_plan_and_site(t: Template) -> None:
    bicep = t.bicep[FUNCTION]
    (plan,) = bicep.resources("Microsoft.Web/serverfarms")
    assert plan.value["sku"] == {"name": "FC1", "tier": "FlexConsumption"}, "plan sku FC1 / FlexConsumption"
    assert plan.value["properties"]["reserved"] is True, "plan reserved: true (Linux)"
    (site,) = bicep.resources("Microsoft.Web/sites")
    assert site.value["kind"] == "functionapp,linux", "site kind functionapp,linux"
    assert site.value["identity"]["type"] == "UserAssigned", "a user-assigned identity"
    assert site.value["properties"]["functionAppConfig"]["runtime"] == {"name": "python", "version": "3.11"}
    storage = site.value["properties"]["functionAppConfig"]["deployment"]["storage"]
    assert storage["authentication"]["type"] == "UserAssignedIdentity", "Flex pulls its package with the identity"


def check_storage(t: Template) -> None:
    (account,) = [r for r in t.bicep[STORAGE].resources("Microsoft.Storage/storageAccounts") if not r.existing]
    properties = account.value["properties"]
    assert properties.get("allowSharedKeyAccess") is False, "storage allowSharedKeyAccess must be false"
    assert properties.get("minimumTlsVersion") == "TLS1_2", "storage minimumTlsVersion TLS1_2"
    assert properties.get("allowBlobPublicAccess") is False, "storage allowBlobPublicAccess must be false"
    main = t.bicep[MAIN]
    storage_module = next(m for m in main.of("module") if m.type_text == "app/storage.bicep")
    containers = {
        item if isinstance(item, str) else main.get("var", item.text).value
        for item in storage_module.value["params"]["containers"]
    }
    for expected in ("input", "apps", "results"):
        assert expected in containers, f"container {expected} is not created"
    assert any(isinstance(c, Expr) and c.text.startswith("'app-package-") for c in containers), (
        "Flex deployment container"
    )


def check_batch(t: Template) -> None:
    (account,) = [r for r in t.bicep[BATCH].resources("Microsoft.Batch/batchAccounts") if not r.existing]
    properties = account.value["properties"]
    assert properties["poolAllocationMode"] == "BatchService", "Batch pool allocation BatchService"
    modes = properties["allowedAuthenticationModes"]
    assert isinstance(modes, Expr) and modes.text == "allowSharedKey ? ['AAD', 'SharedKey'] : ['AAD']", (
        "Batch auth must be AAD only unless allowSharedKey"
    )
    assert t.bicep[BATCH].get("param", "allowSharedKey").value is False, "allowSharedKey defaults to false"
    assert t.bicep[MAIN].get("param", "allowBatchSharedKey").value is False, "allowBatchSharedKey defaults to false"


def role_table(t: Template) -> dict[str, tuple[str, str]]:
    """roles.bicep's table: key -> (GUID, role name from the comment after it)."""
    var = t.bicep[ROLES].get("var", "roles")
    table = {}
    for prop in var.node.named_children[-1].named_children:
        if prop.type == "object_property":
            key = (prop.named_children[0].text or b"").decode()
            comment = prop.next_named_sibling
            name = (
                (comment.text or b"").decode().removeprefix("//").strip()
                if comment and comment.type == "comment"
                else ""
            )
            table[key] = (var.value[key], name)
    return table


def check_roles(t: Template) -> None:
    table = role_table(t)
    assert {name: guid for guid, name in table.values()} == EXPECTED_ROLES, "role table: GUIDs and role names"
    for path, bicep in t.bicep.items():
        if path != ROLES:
            assert not bicep.resources("Microsoft.Authorization/roleAssignments"), f"{path}: assignments outside roles"
            assert not GUID.search(bicep.source), f"{path}: a GUID outside the role table"
    bicep = t.bicep[ROLES]
    scopes = {r.name: r.type_text.split("@")[0] for r in bicep.of("resource") if r.existing}
    assigned: dict[str, int] = {}
    deployer: list[str] = []
    batch_identities: dict[str, str] = {}
    for assignment in bicep.resources("Microsoft.Authorization/roleAssignments"):
        body = assignment.value
        role_id = body["properties"]["roleDefinitionId"]
        match = re.search(r"roles\.(\w+)\)$", role_id.text if isinstance(role_id, Expr) else "")
        assert match and match.group(1) in table, f"{assignment.name}: roleDefinitionId not from the role table"
        role_name = table[match.group(1)][1]
        scope = body.get("scope")
        assert isinstance(scope, Expr) and scope.text in scopes, f"{assignment.name}: scope must be a resource"
        principal = body["properties"]["principalId"]
        principals = ("principalId", DEPLOYER_PRINCIPAL, *BATCH_IDENTITY_ROLES)
        assert isinstance(principal, Expr) and principal.text in principals, (
            f"{assignment.name}: principalId must be the app identity's, the deployer's or a Batch identity's"
        )
        if principal.text in BATCH_IDENTITY_ROLES:
            assert role_name == BATCH_IDENTITY_ROLES[principal.text][0], f"{assignment.name}: {role_name}"
            assert scopes[scope.text] == BATCH_IDENTITY_ROLES[principal.text][2], f"{assignment.name}: scope"
            assert f"!empty({principal.text})" in (assignment.condition or ""), (
                f"{assignment.name}: conditional on {principal.text} being given"
            )
            assert body["properties"]["principalType"] == "ServicePrincipal", f"{assignment.name}: principalType"
            batch_identities[principal.text] = role_name
            continue
        if principal.text == DEPLOYER_PRINCIPAL:
            # The deploying principal: the postdeploy hook's upload, only when azd gave its id.
            assert role_name == DEPLOYER_ROLE, f"{assignment.name}: the deployer gets {DEPLOYER_ROLE}, not {role_name}"
            assert scopes[scope.text] == ROLE_SCOPE_TYPES[DEPLOYER_ROLE], (
                f"{assignment.name}: deployer's role on {scopes[scope.text]}"
            )
            assert f"!empty({DEPLOYER_PRINCIPAL})" in (assignment.condition or ""), (
                f"{assignment.name}: the deployer's assignment must be conditional on its id being given"
            )
            principal_type = body["properties"]["principalType"]
            assert isinstance(principal_type, Expr) and principal_type.text == "deployerPrincipalType", (
                f"{assignment.name}: principalType from deployerPrincipalType"
            )
            deployer.append(assignment.name)
            continue
        assert scopes[scope.text] == ROLE_SCOPE_TYPES[role_name], (
            f"{assignment.name}: {role_name} on {scopes[scope.text]}"
        )
        assert body["properties"]["principalType"] == "ServicePrincipal", f"{assignment.name}: principalType"
        assigned[role_name] = assigned.get(role_name, 0) + 1
    assert assigned == dict.fromkeys(APP_ROLES, 1), f"each of the app's roles assigned once: {assigned}"
    assert batch_identities == {name: role for name, (role, _, _) in BATCH_IDENTITY_ROLES.items()}, (
        f"the Batch account's and nodes' roles: {batch_identities}"
    )
    assert len(deployer) == 1, f"exactly one assignment to the deploying principal: {deployer}"
    deployer_param = bicep.get("param", DEPLOYER_PRINCIPAL)
    assert deployer_param.value == "", f"roles.bicep: {DEPLOYER_PRINCIPAL} defaults to '' (grant nothing)"
    # main.bicep deploys roles.bicep for each of the three resources; the storage one also names the deployer.
    main = t.bicep[MAIN]
    role_modules = [m for m in main.of("module") if m.type_text == "app/roles.bicep"]
    deployer_params = {DEPLOYER_PRINCIPAL, "deployerPrincipalType", "deadLetterContainerName", *BATCH_IDENTITY_ROLES}
    given = {name for m in role_modules for name in m.value["params"] if name not in {"principalId", *deployer_params}}
    assert given == {"storageAccountName", "batchAccountName", "appInsightsName"}, f"roles granted on {given}"
    with_deployer = [m for m in role_modules if deployer_params & set(m.value["params"])]
    assert len(with_deployer) == 1 and "storageAccountName" in with_deployer[0].value["params"], (
        "the deployer's role is granted by the storage roles module only"
    )
    module_params = with_deployer[0].value["params"]
    for name, (_, identity_module, _) in BATCH_IDENTITY_ROLES.items():
        assert module_params.get(name) == Expr(f"{identity_module}.outputs.principalId", main.root), (
            f"{name} must be {identity_module}.outputs.principalId"
        )
    assert module_params.get(DEPLOYER_PRINCIPAL) == Expr("principalId", main.root), (
        f"{DEPLOYER_PRINCIPAL} must be main.bicep's principalId param"
    )
    assert module_params.get("deployerPrincipalType") == Expr("principalType", main.root), (
        "deployerPrincipalType must be main.bicep's principalType param"
    )
    main_params = {p.name: p for p in main.of("param")}
    assert "principalId" in main_params and main_params["principalId"].value == "", (
        "main.bicep: param principalId defaulting to '' (grant nothing)"
    )
    assert "principalType" in main_params and main_params["principalType"].value == "User", (
        "main.bicep: param principalType defaulting to 'User'"
    )
    # azd passes the signed-in principal's object id as AZURE_PRINCIPAL_ID; main.parameters.json must map it.
    mapped = t.parameters.get("parameters", {}).get("principalId", {}).get("value")
    assert mapped == "${AZURE_PRINCIPAL_ID}", f"{PARAMETERS}: principalId must be ${{AZURE_PRINCIPAL_ID}}, not {mapped}"


def check_no_secrets(t: Template) -> None:
    for path, bicep in t.bicep.items():
        for node in walk(bicep.root):
            if node.type == "call_expression" or node.type == "member_expression":
                name = (
                    (node.named_children[-1].text or b"").decode()
                    if node.type == "member_expression"
                    else ((node.named_children[0].text or b"").decode())
                )
                assert not re.match(r"list\w*$", name.split(".")[-1]), f"{path}: {name}() reads a key"
        for output in bicep.of("output"):
            source = (output.node.text or b"").decode()
            assert not SECRET_NAME.search(output.name), f"{path}: output {output.name} looks like a secret"
            assert not re.search(r"ConnectionString|InstrumentationKey|[kK]eys?\b", source), f"{path}: {output.name}"
        for param in bicep.of("param"):
            if param.type_text == "string" and SECRET_NAME.search(param.name):
                assert "secure" in param.decorators, f"{path}: param {param.name} carries a secret without @secure()"


def check_descriptions(t: Template) -> None:
    for path, bicep in t.bicep.items():
        for param in bicep.of("param"):
            description = param.decorators.get("description", [""])[0]
            assert isinstance(description, str) and description.strip(), (
                f"{path}: param {param.name} has no @description"
            )


def resolve_name(bicep: BicepFile, expression: Any) -> str:
    """A resource name built from string literals, interpolated vars and resourceToken, with resourceToken's shape."""
    if isinstance(expression, str):
        return expression
    node = expression.node
    if node.type == "identifier":
        name = expression.text
        return RESOURCE_TOKEN if name == "resourceToken" else resolve_name(bicep, bicep.get("var", name).value)
    assert node.type == "string", f"cannot evaluate the name {expression.text}"
    parts = []
    for part in node.named_children:
        if part.type == "string_content":
            parts.append((part.text or b"").decode())
        else:
            inner = part.named_children[0]
            parts.append(resolve_name(bicep, Expr((inner.text or b"").decode(), inner)))
    return "".join(parts)


def check_names(t: Template) -> None:
    main = t.bicep[MAIN]
    token = main.get("var", "resourceToken").value
    assert isinstance(token, Expr) and token.text.startswith("toLower(uniqueString("), "resourceToken is uniqueString"
    rules = {
        "newStorageAccountName": (r"[a-z0-9]{3,24}", "storage: 3-24 lowercase letters and digits"),
        "newBatchAccountName": (r"[a-z0-9]{3,24}", "Batch: 3-24 lowercase letters and digits"),
        # a host name label: 2-60 characters, letters digits and '-', not at either end
        "functionAppName": (r"[a-z0-9][a-z0-9-]{0,58}[a-z0-9]", "function app: a 2-60 character host name label"),
        "deploymentContainer": (r"(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", "container: 3-63 lowercase, digits, '-'"),
    }
    for var, (pattern, rule) in rules.items():
        name = resolve_name(main, main.get("var", var).value)
        assert re.fullmatch(pattern, name), f"{var} = {name!r} breaks the rule {rule}"
    for var in ("inputContainer", "appsContainer", "resultsContainer"):
        assert re.fullmatch(rules["deploymentContainer"][0], main.get("var", var).value), var
    # the new accounts are named by those vars
    assert "newStorageAccountName" in main.get("var", "newStorageAccountId").value.text
    assert "newBatchAccountName" in main.get("var", "newBatchAccountId").value.text
    function_module = next(m for m in main.of("module") if m.type_text == "app/function.bicep")
    assert function_module.value["params"]["name"] == Expr("functionAppName", function_module.node)


def check_api_versions(t: Template) -> None:
    for path, bicep in t.bicep.items():
        for resource in bicep.of("resource"):
            assert resource.type_text in PINNED_API_VERSIONS, f"{path}: {resource.type_text} is not in the pinned list"


def check_main(t: Template) -> None:
    main = t.bicep[MAIN]
    assert re.search(r"^targetScope = 'subscription'$", main.source, re.MULTILINE), "main.bicep at subscription scope"
    (group,) = main.resources("Microsoft.Resources/resourceGroups")
    assert group.value["tags"] == Expr("tags", group.node) and main.get("var", "tags").value == {
        "azd-env-name": Expr("environmentName", group.node)
    }, "resource group tagged azd-env-name"
    outputs = {o.name for o in main.of("output")}
    agreed = {
        "AZURE_LOCATION", "AZURE_TENANT_ID", "AZURE_RESOURCE_GROUP", "AZURE_FUNCTION_APP_NAME",
        "AZURE_FUNCTION_APP_URL", "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_ID",
        "AZURE_STORAGE_BLOB_ENDPOINT", "AZURE_EVENTGRID_SYSTEM_TOPIC_NAME", "BATCHDROP_INPUT_CONTAINER",
        "BATCHDROP_APPS_CONTAINER", "BATCHDROP_RESULTS_CONTAINER", "AZURE_BATCH_ACCOUNT_NAME",
        "AZURE_BATCH_ACCOUNT_ENDPOINT",
    }  # fmt: skip
    assert agreed <= outputs, f"outputs the hooks need are missing: {sorted(agreed - outputs)}"
    (site,) = t.bicep[FUNCTION].resources("Microsoft.Web/sites")
    service = next(iter(t.azure_yaml["services"]))
    tags = site.value["tags"]
    assert isinstance(tags, Expr) and f"'azd-service-name': '{service}'" in tags.text, "site tagged azd-service-name"
    (topic,) = t.bicep["infra/app/eventgrid.bicep"].resources("Microsoft.EventGrid/systemTopics")
    assert topic.value["properties"]["topicType"] == "Microsoft.Storage.StorageAccounts", "storage system topic"


# azure.yaml and main.parameters.json: the parts of azd's documented structures that this template uses.
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HookCommand(_Strict):
    shell: Literal["sh", "pwsh"]
    run: str
    continueOnError: bool = False
    interactive: bool = False


class Hook(_Strict):
    posix: HookCommand
    windows: HookCommand


class Service(_Strict):
    project: str
    language: Literal["python", "py"]
    host: Literal["function"]


class Infra(_Strict):
    provider: Literal["bicep"]
    path: str
    module: str


class Metadata(_Strict):
    template: str


class AzureYaml(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z][a-zA-Z0-9-]*$")
    metadata: Metadata | None = None
    infra: Infra
    services: dict[str, Service] = Field(min_length=1, max_length=1)
    hooks: dict[Literal["postdeploy", "postprovision", "preprovision", "predeploy", "postup"], Hook]


class ParameterValue(_Strict):
    value: Any


class ParametersFile(_Strict):
    schema_: str = Field(alias="$schema")
    contentVersion: str
    parameters: dict[str, ParameterValue]


def check_azd_files(t: Template) -> None:
    try:
        azure_yaml = AzureYaml.model_validate(t.azure_yaml)
        parameters = ParametersFile.model_validate(t.parameters)
    except ValidationError as error:
        raise AssertionError(str(error)) from None
    assert (ROOT / azure_yaml.infra.path / f"{azure_yaml.infra.module}.bicep").resolve() == (ROOT / MAIN).resolve()
    assert azure_yaml.hooks["postdeploy"].posix.run == "infra/hooks/postdeploy.sh", "posix postdeploy hook path"
    assert azure_yaml.hooks["postdeploy"].windows.run == "infra/hooks/postdeploy.ps1", "windows postdeploy hook"
    main = t.bicep[MAIN]
    params = {p.name: p for p in main.of("param")}
    assert set(parameters.parameters) <= set(params), f"unknown parameters: {set(parameters.parameters) - set(params)}"
    without_default = {name for name, p in params.items() if p.value is None}
    assert without_default <= set(parameters.parameters), f"parameters azd must give: {without_default}"
    outputs = {o.name for o in main.of("output")}
    documented = (ROOT / "docs" / "deploy.md").read_text()
    for path in (AZURE_YAML, PARAMETERS):
        for name, default in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(=[^}]*)?\}", t.sources[path]):
            # ${NAME=default} is a variable a user may set (`azd env set`): docs/deploy.md must name it
            ok = name in AZD_PROVIDED or name in outputs or (default and f"`{name}`" in documented)
            assert ok, f"{path}: ${{{name}}} is neither azd's, an output, nor a documented setting with a default"


CHECKS: dict[str, Callable[[Template], None]] = {
    "syntax": check_syntax,
    "app_settings": check_app_settings,
    "no_worker_runtime": check_no_worker_runtime,
    "flex": check_flex_plan_and_site,
    "storage": check_storage,
    "batch": check_batch,
    "roles": check_roles,
    "no_secrets": check_no_secrets,
    "descriptions": check_descriptions,
    "names": check_names,
    "api_versions": check_api_versions,
    "main": check_main,
    "azd_files": check_azd_files,
}


@pytest.mark.parametrize("check", CHECKS)
def test_template(template: Template, check: str) -> None:
    CHECKS[check](template)


def test_the_settings_list_comes_from_the_code() -> None:
    required, optional = settings_the_app_reads()
    assert {"BATCHDROP_BATCH_URL", "BATCHDROP_PIPELINES_FILE", "BATCHDROP_SWEEP_SCHEDULE"} <= required
    assert "BATCHDROP_LEDGER_TABLE" in optional


def test_azure_yaml_hooks_exist_once_the_hooks_are_in() -> None:
    hooks = ROOT / "infra" / "hooks"
    if not hooks.is_dir():
        pytest.skip("infra/hooks/ is not in this branch yet")
    for name in ("postdeploy.sh", "postdeploy.ps1"):
        assert (hooks / name).is_file(), f"azure.yaml runs infra/hooks/{name}"


# Each mutation breaks one thing in a copy of the template; the named check must then fail.
MUTATIONS: list[tuple[str, str, str, str, str]] = [
    # (id, file, old, new, check that must fail)
    ("break syntax", STORAGE, "properties: {\n    // Identity", "properties: {{\n    // Identity", "syntax"),
    (
        "missing brace",
        MAIN,
        "  scope: rg\n  params: {\n    name: 'id-${resourceToken}'",
        "  scope: rg\n  params: \n    name: 'id-${resourceToken}'",
        "syntax",
    ),
    (
        "add FUNCTIONS_WORKER_RUNTIME",
        FUNCTION,
        "    BATCHDROP_BATCH_URL:",
        "    FUNCTIONS_WORKER_RUNTIME: 'python'\n    BATCHDROP_BATCH_URL:",
        "no_worker_runtime",
    ),
    ("drop BATCHDROP_BATCH_URL", FUNCTION, "    BATCHDROP_BATCH_URL: batchUrl\n", "", "app_settings"),
    ("drop the sweep schedule", FUNCTION, "    BATCHDROP_SWEEP_SCHEDULE: '0 */5 * * * *'\n", "", "app_settings"),
    (
        "drop a storage service URI",
        FUNCTION,
        "    BatchdropStorage__tableServiceUri: tableEndpoint\n",
        "",
        "app_settings",
    ),
    (
        "drop the identity's client id",
        FUNCTION,
        "    BatchdropStorage__clientId: identityClientId\n",
        "",
        "app_settings",
    ),
    (
        "add an account key",
        FUNCTION,
        "    BATCHDROP_BATCH_URL:",
        "    BATCHDROP_BATCH_ACCOUNT_KEY: 'k'\n    BATCHDROP_BATCH_URL:",
        "app_settings",
    ),
    (
        "a setting the app does not read",
        FUNCTION,
        "    BATCHDROP_BATCH_URL:",
        "    BATCHDROP_BATCH_ULR: batchUrl\n    BATCHDROP_BATCH_URL:",
        "app_settings",
    ),
    (
        "bad container name",
        FUNCTION,
        "BATCHDROP_STAGING_PREFIX: stagingPrefix",
        "BATCHDROP_STAGING_PREFIX: 'Bad_Prefix'",
        "app_settings",
    ),
    ("plan Y1", FUNCTION, "name: 'FC1'", "name: 'Y1'", "flex"),
    ("plan not reserved", FUNCTION, "reserved: true", "reserved: false", "flex"),
    ("windows app", FUNCTION, "kind: 'functionapp,linux'", "kind: 'functionapp'", "flex"),
    ("flip allowSharedKeyAccess", STORAGE, "allowSharedKeyAccess: false", "allowSharedKeyAccess: true", "storage"),
    ("TLS 1.0", STORAGE, "minimumTlsVersion: 'TLS1_2'", "minimumTlsVersion: 'TLS1_0'", "storage"),
    ("public blobs", STORAGE, "allowBlobPublicAccess: false", "allowBlobPublicAccess: true", "storage"),
    (
        "no results container",
        MAIN,
        "containers: [inputContainer, appsContainer, resultsContainer,",
        "containers: [inputContainer, appsContainer,",
        "storage",
    ),
    (
        "Batch shared key always",
        BATCH,
        "allowSharedKey ? ['AAD', 'SharedKey'] : ['AAD']",
        "['AAD', 'SharedKey']",
        "batch",
    ),
    (
        "Batch shared key by default",
        MAIN,
        "param allowBatchSharedKey bool = false",
        "param allowBatchSharedKey bool = true",
        "batch",
    ),
    (
        "user subscription pool allocation",
        BATCH,
        "poolAllocationMode: 'BatchService'",
        "poolAllocationMode: 'UserSubscription'",
        "batch",
    ),
    ("drop a role assignment", ROLES, r"re:resource blobDelegator .*?\n}\n", "", "roles"),
    ("wrong GUID", ROLES, "db58b8e5-c6ad-4a2a-8342-4190687cbf4a", "db58b8e5-c6ad-4a2a-8342-4190687cbf4b", "roles"),
    ("wrong role name comment", ROLES, "// Azure Batch Data Contributor", "// Azure Batch Job Submitter", "roles"),
    ("scope to the resource group", ROLES, "  scope: batchAccount\n", "  scope: resourceGroup()\n", "roles"),
    ("role on the wrong resource", ROLES, "  scope: appInsights\n", "  scope: storageAccount\n", "roles"),
    (
        "a GUID outside the table",
        FUNCTION,
        "    AZURE_CLIENT_ID: identityClientId",
        "    AZURE_CLIENT_ID: '3913510d-42f4-4e42-8a64-420c390055eb'",
        "roles",
    ),
    ("no Batch role module", MAIN, "    batchAccountName: batch.outputs.name\n", "", "roles"),
    ("drop the deployer's assignment", ROLES, r"re:resource deployerBlobDataContributor .*?\n}\n", "", "roles"),
    (
        "deployer's role on the resource group",
        ROLES,
        "deployerPrincipalId, roles.storageBlobDataContributor)\n  scope: storageAccount\n",
        "deployerPrincipalId, roles.storageBlobDataContributor)\n  scope: resourceGroup()\n",
        "roles",
    ),
    (
        "deployer given another role",
        ROLES,
        "roles.storageBlobDataContributor)\n    principalId: deployerPrincipalId\n",
        "roles.storageQueueDataContributor)\n    principalId: deployerPrincipalId\n",
        "roles",
    ),
    (
        "deployer's assignment unconditional",
        ROLES,
        "if (!empty(storageAccountName) && !empty(deployerPrincipalId))",
        "if (!empty(storageAccountName))",
        "roles",
    ),
    (
        "deployer's assignment as a service principal always",
        ROLES,
        "    principalType: deployerPrincipalType\n",
        "    principalType: 'ServicePrincipal'\n",
        "roles",
    ),
    ("deployer granted by default", MAIN, "param principalId string = ''", "param principalId string = 'x'", "roles"),
    ("deployer not passed on", MAIN, "    deployerPrincipalId: principalId\n", "", "roles"),
    (
        "parameters: no principalId",
        PARAMETERS,
        '    "principalId": {\n      "value": "${AZURE_PRINCIPAL_ID}"\n    },\n',
        "",
        "roles",
    ),
    (
        "output a key",
        "infra/app/batch.bicep",
        "output name string = account.name",
        "output name string = account.listKeys().primary",
        "no_secrets",
    ),
    (
        "output a connection string",
        FUNCTION,
        "output name string = site.name",
        "output name string = appInsights.properties.ConnectionString",
        "no_secrets",
    ),
    (
        "plain param for a key",
        "infra/app/identity.bicep",
        "param name string\n",
        "param name string\n\n@description('a key')\nparam accountKey string\n",
        "no_secrets",
    ),
    (
        "param without description",
        "infra/app/eventgrid.bicep",
        "@description('Name of the system topic.')\n",
        "",
        "descriptions",
    ),
    (
        "storage name too long",
        MAIN,
        "var newStorageAccountName = 'st${resourceToken}'",
        "var newStorageAccountName = 'storage${resourceToken}xxxxx'",
        "names",
    ),
    (
        "Batch name with a dash",
        MAIN,
        "var newBatchAccountName = 'ba${resourceToken}'",
        "var newBatchAccountName = 'ba-${resourceToken}'",
        "names",
    ),
    (
        "function app name with an underscore",
        MAIN,
        "var functionAppName = 'func-${resourceToken}'",
        "var functionAppName = 'func_${resourceToken}'",
        "names",
    ),
    (
        "unpinned apiVersion",
        "infra/app/identity.bicep",
        "userAssignedIdentities@2023-01-31",
        "userAssignedIdentities@2018-11-30",
        "api_versions",
    ),
    ("resource group not tagged", MAIN, "  'azd-env-name': environmentName", "  env: environmentName", "main"),
    ("an agreed output missing", MAIN, "output AZURE_STORAGE_ACCOUNT_ID string = storage.outputs.id\n", "", "main"),
    (
        "azure.yaml: unknown field",
        AZURE_YAML,
        "    host: function\n",
        "    host: function\n    docker: {}\n",
        "azd_files",
    ),
    ("azure.yaml: app service", AZURE_YAML, "    host: function\n", "    host: appservice\n", "azd_files"),
    ("azure.yaml: hook path", AZURE_YAML, "run: infra/hooks/postdeploy.sh", "run: scripts/postdeploy.sh", "azd_files"),
    ("parameters: unknown variable", PARAMETERS, "${AZURE_LOCATION}", "${MY_LOCATION}", "azd_files"),
    ("parameters: unknown parameter", PARAMETERS, '"poolVmSize"', '"poolVmSku"', "azd_files"),
    ("parameters: no environment name", PARAMETERS, '"environmentName"', '"environmentNameX"', "azd_files"),
]


@pytest.mark.parametrize(("file", "old", "new", "check"), [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_each_check_fails_on_a_broken_template(file: str, old: str, new: str, check: str) -> None:
    sources = template_sources()
    # an anchor "re:<pattern>" is a regular expression (across lines), any other a literal; either must match once
    pattern = re.compile(old.removeprefix("re:") if old.startswith("re:") else re.escape(old), re.DOTALL)
    assert len(pattern.findall(sources[file])) == 1, f"the mutation's anchor must occur once in {file}: {old!r}"
    sources[file] = pattern.sub(lambda _: new, sources[file])
    with pytest.raises(AssertionError):
        CHECKS[check](Template(sources))
