#!/bin/sh
# azd postdeploy hook (posix): what needs the deployed app, in this order.
#   1. the blob extension's system key of the function app (never printed)
#   2. the Event Grid subscription input -> ingest's blob-trigger webhook (created once, updated after)
#   3. apps/ into the apps container, and each application package onto the Batch account
#   4. where to drop files and where to watch
# It reads azd's environment (main.bicep's outputs); infra/hooks/postdeploy.ps1 is its twin: keep the two
# calling the same `az` commands in the same order (tests/infra/test_hooks.py checks it).
# No value from the environment or from a file name reaches eval or an unquoted expansion.
set -eu

SUBSCRIPTION_NAME=batchdrop-input
# The blob trigger with source EventGrid in shared/triggers/ingest.py is registered as "ingest".
FUNCTION_NAME=ingest
REQUIRED="AZURE_SUBSCRIPTION_ID AZURE_RESOURCE_GROUP AZURE_FUNCTION_APP_NAME AZURE_FUNCTION_APP_URL
AZURE_STORAGE_ACCOUNT_NAME AZURE_STORAGE_BLOB_ENDPOINT AZURE_EVENTGRID_SYSTEM_TOPIC_NAME
BATCHDROP_INPUT_CONTAINER BATCHDROP_APPS_CONTAINER AZURE_BATCH_ACCOUNT_NAME"
# The host creates the blobs_extension key when it first loads the blob trigger, which can lag the deploy.
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
subject_prefix="/blobServices/default/containers/$BATCHDROP_INPUT_CONTAINER/blobs/"
root=$(cd "$(dirname "$0")/../.." && pwd)
apps_dir="$root/apps"
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT INT TERM

# 1. The key goes from az's stdout into a variable and then into one argument; never echoed.
echo "postdeploy: reading the blob extension key of $AZURE_FUNCTION_APP_NAME"
key=""
attempt=1
while :; do
  key=$(az functionapp keys list --subscription "$AZURE_SUBSCRIPTION_ID" --resource-group "$AZURE_RESOURCE_GROUP" --name "$AZURE_FUNCTION_APP_NAME" --query systemKeys.blobs_extension --output tsv)
  if [ -n "$key" ] || [ "$attempt" -ge "$KEY_ATTEMPTS" ]; then
    break
  fi
  echo "postdeploy: no blobs_extension key yet (the host has not loaded the blob trigger); retrying in ${KEY_DELAY}s"
  attempt=$((attempt + 1))
  sleep "$KEY_DELAY"
done
[ -n "$key" ] || fail "$AZURE_FUNCTION_APP_NAME has no blobs_extension system key after $KEY_ATTEMPTS attempts: check that the deploy succeeded and the app started, then run 'azd hooks run postdeploy'"
endpoint="https://$app_host/runtime/webhooks/blobs?functionName=Host.Functions.$FUNCTION_NAME&code=$key"

# 2. show, then create or update: a second run leaves one subscription with the same settings, and
# update refreshes the key should it have been rotated.
if az eventgrid system-topic event-subscription show --subscription "$AZURE_SUBSCRIPTION_ID" --resource-group "$AZURE_RESOURCE_GROUP" --system-topic-name "$AZURE_EVENTGRID_SYSTEM_TOPIC_NAME" --name "$SUBSCRIPTION_NAME" --output none >/dev/null 2>&1; then
  verb=update
else
  verb=create
fi
echo "postdeploy: $verb Event Grid subscription $SUBSCRIPTION_NAME (BlobCreated under $subject_prefix -> $FUNCTION_NAME)"
az eventgrid system-topic event-subscription "$verb" --subscription "$AZURE_SUBSCRIPTION_ID" --resource-group "$AZURE_RESOURCE_GROUP" --system-topic-name "$AZURE_EVENTGRID_SYSTEM_TOPIC_NAME" --name "$SUBSCRIPTION_NAME" --endpoint-type webhook --endpoint "$endpoint" --included-event-types Microsoft.Storage.BlobCreated --subject-begins-with "$subject_prefix" --output none
key=""
endpoint=""

# 3. Application files, then application packages (each apps/<name>/build.py builds one).
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

# 4. Where to go next; no key, no SAS.
echo "postdeploy: done"
echo "  drop files into:  $blob_endpoint/$BATCHDROP_INPUT_CONTAINER/  (az storage blob upload --auth-mode login --account-name $AZURE_STORAGE_ACCOUNT_NAME -c $BATCHDROP_INPUT_CONTAINER -f FILE)"
echo "  status:           $app_url/api/status  (needs a function key: BATCHDROP_FUNCTION_KEY=<key> batchdrop status --url $app_url)"
