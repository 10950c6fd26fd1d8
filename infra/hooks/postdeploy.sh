#!/bin/sh
# azd postdeploy hook (posix): what needs the deployed app, in this order.
#   1. every Event Grid subscription that local/eventgrid/subscriptions.json declares (the same file the local
#      Event Grid delivers from), on the storage account's system topic, each to its endpoint on the deployed app
#      with the key that endpoint takes (never printed), dead letters into the dead-letter container
#   2. apps/ into the apps container, and each application package onto the Batch account
#   3. where to drop files and where to watch
# It reads azd's environment (main.bicep's outputs); infra/hooks/postdeploy.ps1 is its twin: keep the two
# calling the same `az` commands in the same order (tests/infra/test_hooks.py checks it).
# No value from the environment or from a file name reaches eval or an unquoted expansion.
set -eu

SUBSCRIPTIONS=local/eventgrid/subscriptions.json
REQUIRED="AZURE_SUBSCRIPTION_ID AZURE_RESOURCE_GROUP AZURE_FUNCTION_APP_NAME AZURE_FUNCTION_APP_URL
AZURE_STORAGE_ACCOUNT_NAME AZURE_STORAGE_ACCOUNT_ID AZURE_STORAGE_BLOB_ENDPOINT AZURE_EVENTGRID_SYSTEM_TOPIC_NAME
BATCHDROP_INPUT_CONTAINER BATCHDROP_APPS_CONTAINER BATCHDROP_STAGING_PREFIX BATCHDROP_EVENT_DEADLETTER_CONTAINER
AZURE_BATCH_ACCOUNT_NAME"
# The host creates its keys when it first loads the functions, which can lag the deploy.
KEY_ATTEMPTS=${BATCHDROP_HOOK_KEY_ATTEMPTS:-12}
KEY_DELAY=${BATCHDROP_HOOK_KEY_DELAY_SECONDS:-10}

fail() {
  echo "postdeploy: $*" >&2
  exit 1
}

command -v az >/dev/null 2>&1 || fail "the Azure CLI (az) is not on PATH; install it and run 'az login'"

# azd passes its environment to hooks; run by hand (sh infra/hooks/postdeploy.sh), fill the gaps from
# `azd env get-values`. printenv reads a variable by name without eval.
azd_values=""
for name in $REQUIRED; do
  if [ -z "$(printenv "$name" || true)" ] && [ -z "$azd_values" ] && command -v azd >/dev/null 2>&1; then
    azd_values=$(azd env get-values 2>/dev/null || true)
  fi
  if [ -z "$(printenv "$name" || true)" ] && [ -n "$azd_values" ]; then
    # KEY="value" lines; the name is one of ours, never input.
    value=$(printf '%s\n' "$azd_values" | sed -n "s/^$name=\"\{0,1\}\([^\"]*\)\"\{0,1\}\$/\1/p" | head -n 1)
    if [ -n "$value" ]; then
      export "$name=$value"
    fi
  fi
done
missing=""
for name in $REQUIRED; do
  if [ -z "$(printenv "$name" || true)" ]; then
    missing="$missing $name"
  fi
done
[ -z "$missing" ] || fail "missing environment variable(s):$missing (outputs of infra/main.bicep; run 'azd provision' first)"

case "$AZURE_FUNCTION_APP_URL" in
  https://*) ;;
  *) fail "AZURE_FUNCTION_APP_URL must start with https:// (got '$AZURE_FUNCTION_APP_URL')" ;;
esac
app_url=${AZURE_FUNCTION_APP_URL%/}
app_host=${app_url#https://}
app_host=${app_host%%/*}
blob_endpoint=${AZURE_STORAGE_BLOB_ENDPOINT%/}
root=$(cd "$(dirname "$0")/../.." && pwd)
apps_dir="$root/apps"
deadletter="${AZURE_STORAGE_ACCOUNT_ID%/}/blobServices/default/containers/$BATCHDROP_EVENT_DEADLETTER_CONTAINER"
# Fields are split on the unit separator (a tab is IFS white space: an empty field would vanish).
separator_char=$(printf '\037')
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT INT TERM

# The key an endpoint takes ($query: the host's default function key for an HTTP function (/api/...), the Event
# Grid or blob extension's system key for their webhooks). It goes from az's stdout into a variable, never echoed.
read_key() {
  attempt=1
  while :; do
    found=$(az functionapp keys list --subscription "$AZURE_SUBSCRIPTION_ID" --resource-group "$AZURE_RESOURCE_GROUP" --name "$AZURE_FUNCTION_APP_NAME" --query "$query" --output tsv)
    if [ -n "$found" ] || [ "$attempt" -ge "$KEY_ATTEMPTS" ]; then
      break
    fi
    echo "postdeploy: no $query yet (the host has not loaded its functions); retrying in ${KEY_DELAY}s" >&2
    attempt=$((attempt + 1))
    sleep "$KEY_DELAY"
  done
  [ -n "$found" ] || fail "$AZURE_FUNCTION_APP_NAME has no $query after $KEY_ATTEMPTS attempts: check that the deploy succeeded and the app started, then run 'azd hooks run postdeploy'"
  printf '%s' "$found"
}

# 1. One line per subscription: name, endpoint path, event types (space-separated), subject begins
# and ends with, max events per batch, preferred batch KB, max delivery attempts, time to live in minutes; the
# file's {BATCHDROP_INPUT_CONTAINER} and {BATCHDROP_STAGING_PREFIX} filled from the environment. Missing numbers
# take Event Grid's defaults, as local/eventgrid/subscriptions.py does.
plan=$(PYTHONDONTWRITEBYTECODE=1 python3 - "$root/$SUBSCRIPTIONS" "$BATCHDROP_INPUT_CONTAINER" "$BATCHDROP_STAGING_PREFIX" <<'PY'
import json, sys
path, input_container, staging_prefix = sys.argv[1:4]
values = {"{BATCHDROP_INPUT_CONTAINER}": input_container, "{BATCHDROP_STAGING_PREFIX}": staging_prefix}
with open(path, encoding="utf-8") as file:
    entries = json.load(file)["subscriptions"]
for entry in entries:
    fields = [
        entry["name"], entry["endpoint"], " ".join(entry.get("included_event_types", ["Microsoft.Storage.BlobCreated"])),
        entry.get("subject_begins_with", ""), entry.get("subject_ends_with", ""), entry.get("max_events_per_batch", 1),
        entry.get("preferred_batch_size_kb", 64), entry.get("max_delivery_attempts", 30),
        entry.get("event_ttl_minutes", 1440),
    ]
    line = "\x1f".join(str(field) for field in fields)
    for placeholder, value in values.items():
        line = line.replace(placeholder, value)
    if "{" in line or "\n" in line or line.count("\x1f") != 8:
        sys.exit(f"postdeploy: {path}: {entry.get('name')!r} has an unknown placeholder or a control character")
    print(line)
PY
) || fail "could not read $SUBSCRIPTIONS"

# `create` is a PUT: run again, each subscription is replaced by the same settings (and a rotated key), so the
# result is the same. Event Grid validates each endpoint with its handshake before it accepts the subscription.
while IFS="$separator_char" read -r name path types begins ends batch kilobytes attempts ttl; do
  case "$path" in
    /api/*) query=functionKeys.default ;;
    /runtime/webhooks/EventGrid\?*) query=systemKeys.eventgrid_extension ;;
    /runtime/webhooks/blobs\?*) query=systemKeys.blobs_extension ;;
    *) fail "$SUBSCRIPTIONS: $name: endpoint $path is none of /api/..., /runtime/webhooks/EventGrid?..., /runtime/webhooks/blobs?..." ;;
  esac
  case "$path" in
    *\?*) separator='&' ;;
    *) separator='?' ;;
  esac
  echo "postdeploy: Event Grid subscription $name: $types, subject '$begins'...'$ends' -> $path"
  key=$(read_key)
  # An empty ends-with filter is left out (pwsh drops an empty argument, so the twin does the same).
  if [ -n "$ends" ]; then
    set -- --subject-ends-with "$ends"
  else
    set --
  fi
  endpoint="https://$app_host$path${separator}code=$key"
  # $types is a space-separated list of event type names from our own file: split on purpose.
  # shellcheck disable=SC2086
  az eventgrid system-topic event-subscription create --subscription "$AZURE_SUBSCRIPTION_ID" --resource-group "$AZURE_RESOURCE_GROUP" --system-topic-name "$AZURE_EVENTGRID_SYSTEM_TOPIC_NAME" --name "$name" --endpoint-type webhook --endpoint "$endpoint" --included-event-types $types --subject-begins-with "$begins" "$@" --max-events-per-batch "$batch" --preferred-batch-size-in-kilobytes "$kilobytes" --max-delivery-attempts "$attempts" --event-ttl "$ttl" --deadletter-identity systemassigned --deadletter-identity-endpoint "$deadletter" --output none
  key=""
  endpoint=""
done <<EOF
$plan
EOF

# 2. Application files, then application packages (each apps/<name>/build.py builds one).
echo "postdeploy: uploading apps/ to $AZURE_STORAGE_ACCOUNT_NAME/$BATCHDROP_APPS_CONTAINER"
az storage blob upload-batch --subscription "$AZURE_SUBSCRIPTION_ID" --auth-mode login --account-name "$AZURE_STORAGE_ACCOUNT_NAME" --destination "$BATCHDROP_APPS_CONTAINER" --source "$apps_dir" --overwrite --output none

# Batch stores application packages in the account's auto-storage account; without one, say so and go on.
auto_storage=$(az batch account show --subscription "$AZURE_SUBSCRIPTION_ID" --resource-group "$AZURE_RESOURCE_GROUP" --name "$AZURE_BATCH_ACCOUNT_NAME" --query autoStorage.storageAccountId --output tsv)
if [ -z "$auto_storage" ]; then
  echo "postdeploy: note: Batch account $AZURE_BATCH_ACCOUNT_NAME has no auto-storage account, so application packages were not uploaded (pipelines that use {package:...} need one)"
else
  for build in "$apps_dir"/*/build.py; do
    [ -f "$build" ] || continue
    module="apps.$(basename "$(dirname "$build")").build"
    package="$workdir/package.zip"
    identity=$(cd "$root" && PYTHONDONTWRITEBYTECODE=1 python3 -c 'import importlib, sys; m = importlib.import_module(sys.argv[1]); print(m.APPLICATION_ID, m.VERSION)' "$module")
    application=${identity%% *}
    version=${identity#* }
    case "$application$version" in
      *[!A-Za-z0-9._-]*|'') fail "$module gives an unusable package id or version" ;;
    esac
    state=$(az batch application package show --subscription "$AZURE_SUBSCRIPTION_ID" --resource-group "$AZURE_RESOURCE_GROUP" --name "$AZURE_BATCH_ACCOUNT_NAME" --application-name "$application" --version-name "$version" --query state --output tsv 2>/dev/null || true)
    if [ "$state" = "Active" ]; then
      # build.py makes the same bytes from the same sources: an active version is this one.
      echo "postdeploy: application package $application $version is already active"
    else
      echo "postdeploy: building and uploading application package $application $version"
      (cd "$root" && PYTHONDONTWRITEBYTECODE=1 python3 -m "$module" --output "$package" >/dev/null)
      az batch application package create --subscription "$AZURE_SUBSCRIPTION_ID" --resource-group "$AZURE_RESOURCE_GROUP" --name "$AZURE_BATCH_ACCOUNT_NAME" --application-name "$application" --version-name "$version" --package-file "$package" --output none
    fi
    az batch application set --subscription "$AZURE_SUBSCRIPTION_ID" --resource-group "$AZURE_RESOURCE_GROUP" --name "$AZURE_BATCH_ACCOUNT_NAME" --application-name "$application" --default-version "$version" --output none
  done
fi

# 3. Where to go next; no key, no SAS.
echo "postdeploy: done"
echo "  drop files into:  $blob_endpoint/$BATCHDROP_INPUT_CONTAINER/  (az storage blob upload --auth-mode login --account-name $AZURE_STORAGE_ACCOUNT_NAME -c $BATCHDROP_INPUT_CONTAINER -f FILE)"
echo "  status:           $app_url/api/status  (needs a function key: BATCHDROP_FUNCTION_KEY=<key> batchdrop status --url $app_url)"
