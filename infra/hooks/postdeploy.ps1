# azd postdeploy hook (windows, pwsh): the twin of infra/hooks/postdeploy.sh, same steps in the same order.
#   1. every Event Grid subscription that local/eventgrid/subscriptions.json declares (the same file the local
#      Event Grid delivers from), on the storage account's system topic, each to its endpoint on the deployed app
#      with the key that endpoint takes (never printed), dead letters into the dead-letter container
#   2. apps/ into the apps container, and each application package onto the Batch account
#   3. where to drop files and where to watch
# Keep the `az` commands the same as the sh script's, in the same order (tests/infra/test_hooks.py checks it).
# Every value is passed as one argument; nothing goes through Invoke-Expression.
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

$Subscriptions = 'local/eventgrid/subscriptions.json'
$Required = @(
  'AZURE_SUBSCRIPTION_ID', 'AZURE_RESOURCE_GROUP', 'AZURE_FUNCTION_APP_NAME', 'AZURE_FUNCTION_APP_URL',
  'AZURE_STORAGE_ACCOUNT_NAME', 'AZURE_STORAGE_ACCOUNT_ID', 'AZURE_STORAGE_BLOB_ENDPOINT',
  'AZURE_EVENTGRID_SYSTEM_TOPIC_NAME', 'BATCHDROP_INPUT_CONTAINER', 'BATCHDROP_APPS_CONTAINER',
  'BATCHDROP_STAGING_PREFIX', 'BATCHDROP_EVENT_DEADLETTER_CONTAINER', 'AZURE_BATCH_ACCOUNT_NAME'
)
# The host creates its keys when it first loads the functions, which can lag the deploy.
$KeyAttempts = if ($env:BATCHDROP_HOOK_KEY_ATTEMPTS) { [int]$env:BATCHDROP_HOOK_KEY_ATTEMPTS } else { 12 }
$KeyDelay = if ($env:BATCHDROP_HOOK_KEY_DELAY_SECONDS) { [int]$env:BATCHDROP_HOOK_KEY_DELAY_SECONDS } else { 10 }

function Fail([string]$Message) {
  [Console]::Error.WriteLine("postdeploy: $Message")
  exit 1
}

# A native command's failure stops the hook, as `set -e` does in the sh twin.
function Assert-Ok([string]$What) {
  if ($LASTEXITCODE -ne 0) { Fail "$What failed (exit $LASTEXITCODE)" }
}

if (-not (Get-Command az -ErrorAction SilentlyContinue)) { Fail "the Azure CLI (az) is not on PATH; install it and run 'az login'" }

# azd passes its environment to hooks; run by hand, fill the gaps from `azd env get-values`.
$azdValues = $null
foreach ($name in $Required) {
  if ([Environment]::GetEnvironmentVariable($name)) { continue }
  if ($null -eq $azdValues -and (Get-Command azd -ErrorAction SilentlyContinue)) {
    $azdValues = @(& azd env get-values 2>$null)
  }
  foreach ($line in @($azdValues)) {
    if ($line -match "^$name=`"?([^`"]*)`"?$") {
      [Environment]::SetEnvironmentVariable($name, $Matches[1])
      break
    }
  }
}
$missing = @($Required | Where-Object { -not [Environment]::GetEnvironmentVariable($_) })
if ($missing.Count -gt 0) {
  Fail "missing environment variable(s): $($missing -join ' ') (outputs of infra/main.bicep; run 'azd provision' first)"
}

if (-not $env:AZURE_FUNCTION_APP_URL.StartsWith('https://')) {
  Fail "AZURE_FUNCTION_APP_URL must start with https:// (got '$($env:AZURE_FUNCTION_APP_URL)')"
}
$appUrl = $env:AZURE_FUNCTION_APP_URL.TrimEnd('/')
$appHost = $appUrl.Substring('https://'.Length).Split('/')[0]
$blobEndpoint = $env:AZURE_STORAGE_BLOB_ENDPOINT.TrimEnd('/')
$deadletter = "$($env:AZURE_STORAGE_ACCOUNT_ID.TrimEnd('/'))/blobServices/default/containers/$($env:BATCHDROP_EVENT_DEADLETTER_CONTAINER)"
$root = (Resolve-Path (Join-Path $PSScriptRoot '../..')).Path
$appsDir = Join-Path $root 'apps'
$python = if (Get-Command python3 -ErrorAction SilentlyContinue) { 'python3' } else { 'python' }
$workdir = Join-Path ([IO.Path]::GetTempPath()) ("batchdrop-postdeploy-" + [Guid]::NewGuid().ToString('N'))
New-Item -ItemType Directory -Path $workdir | Out-Null
$env:PYTHONDONTWRITEBYTECODE = '1'

# The key an endpoint takes ($query: the host's default function key for an HTTP function (/api/...), the Event
# Grid or blob extension's system key for their webhooks). It goes from az's stdout into a variable, never written.
function Read-Key([string]$query) {
  for ($attempt = 1; ; $attempt++) {
    $found = (az functionapp keys list --subscription $env:AZURE_SUBSCRIPTION_ID --resource-group $env:AZURE_RESOURCE_GROUP --name $env:AZURE_FUNCTION_APP_NAME --query $query --output tsv)
    Assert-Ok 'az functionapp keys list'
    $found = "$found".Trim()
    if ($found -or $attempt -ge $KeyAttempts) { break }
    [Console]::Error.WriteLine("postdeploy: no $query yet (the host has not loaded its functions); retrying in ${KeyDelay}s")
    Start-Sleep -Seconds $KeyDelay
  }
  if (-not $found) {
    Fail "$($env:AZURE_FUNCTION_APP_NAME) has no $query after $KeyAttempts attempts: check that the deploy succeeded and the app started, then run 'azd hooks run postdeploy'"
  }
  return $found
}

# A field of a subscription, or its default (Event Grid's, as local/eventgrid/subscriptions.py has them), with the
# file's {BATCHDROP_INPUT_CONTAINER} and {BATCHDROP_STAGING_PREFIX} filled from the environment.
function Get-Field($entry, [string]$field, $default) {
  $value = if ($entry.PSObject.Properties[$field]) { $entry.$field } else { $default }
  if ($value -is [string]) {
    $value = $value.Replace('{BATCHDROP_INPUT_CONTAINER}', $env:BATCHDROP_INPUT_CONTAINER).Replace('{BATCHDROP_STAGING_PREFIX}', $env:BATCHDROP_STAGING_PREFIX)
    if ($value.Contains('{')) { Fail "$($Subscriptions): $($entry.name): unknown placeholder in $field" }
  }
  return $value
}

try {
  # 1. `create` is a PUT: run again, each subscription is replaced by the same settings (and a rotated key), so
  # the result is the same. Event Grid validates each endpoint with its handshake before it accepts it.
  $document = Get-Content -Raw -Path (Join-Path $root $Subscriptions) | ConvertFrom-Json
  foreach ($entry in @($document.subscriptions)) {
    $name = [string]$entry.name
    $path = [string](Get-Field $entry 'endpoint' '')
    $types = @(Get-Field $entry 'included_event_types' @('Microsoft.Storage.BlobCreated'))
    $begins = [string](Get-Field $entry 'subject_begins_with' '')
    $ends = [string](Get-Field $entry 'subject_ends_with' '')
    $batch = [string](Get-Field $entry 'max_events_per_batch' 1)
    $kilobytes = [string](Get-Field $entry 'preferred_batch_size_kb' 64)
    $attempts = [string](Get-Field $entry 'max_delivery_attempts' 30)
    $ttl = [string](Get-Field $entry 'event_ttl_minutes' 1440)
    $query = if ($path.StartsWith('/api/')) { 'functionKeys.default' }
    elseif ($path.StartsWith('/runtime/webhooks/EventGrid?')) { 'systemKeys.eventgrid_extension' }
    elseif ($path.StartsWith('/runtime/webhooks/blobs?')) { 'systemKeys.blobs_extension' }
    else { Fail "$($Subscriptions): $($name): endpoint $path is none of /api/..., /runtime/webhooks/EventGrid?..., /runtime/webhooks/blobs?..." }
    $separator = if ($path.Contains('?')) { '&' } else { '?' }
    Write-Output "postdeploy: Event Grid subscription $($name): $($types -join ' '), subject '$begins'...'$ends' -> $path"
    $key = Read-Key $query
    $endpoint = "https://$appHost$path${separator}code=$key"
    # An empty ends-with filter is left out (older pwsh drops an empty argument).
    $endsArgs = if ($ends) { @('--subject-ends-with', $ends) } else { @() }
    az eventgrid system-topic event-subscription create --subscription $env:AZURE_SUBSCRIPTION_ID --resource-group $env:AZURE_RESOURCE_GROUP --system-topic-name $env:AZURE_EVENTGRID_SYSTEM_TOPIC_NAME --name $name --endpoint-type webhook --endpoint $endpoint --included-event-types $types --subject-begins-with $begins @endsArgs --max-events-per-batch $batch --preferred-batch-size-in-kilobytes $kilobytes --max-delivery-attempts $attempts --event-ttl $ttl --deadletter-identity systemassigned --deadletter-identity-endpoint $deadletter --output none
    Assert-Ok "az eventgrid system-topic event-subscription create ($name)"
    $key = ''
    $endpoint = ''
  }

  # 2. Application files, then application packages (each apps/<name>/build.py builds one).
  Write-Output "postdeploy: uploading apps/ to $($env:AZURE_STORAGE_ACCOUNT_NAME)/$($env:BATCHDROP_APPS_CONTAINER)"
  az storage blob upload-batch --subscription $env:AZURE_SUBSCRIPTION_ID --auth-mode login --account-name $env:AZURE_STORAGE_ACCOUNT_NAME --destination $env:BATCHDROP_APPS_CONTAINER --source $appsDir --overwrite --output none
  Assert-Ok 'az storage blob upload-batch'

  # Batch stores application packages in the account's auto-storage account; without one, say so and go on.
  $autoStorage = (az batch account show --subscription $env:AZURE_SUBSCRIPTION_ID --resource-group $env:AZURE_RESOURCE_GROUP --name $env:AZURE_BATCH_ACCOUNT_NAME --query autoStorage.storageAccountId --output tsv)
  Assert-Ok 'az batch account show'
  if (-not "$autoStorage".Trim()) {
    Write-Output "postdeploy: note: Batch account $($env:AZURE_BATCH_ACCOUNT_NAME) has no auto-storage account, so application packages were not uploaded (pipelines that use {package:...} need one)"
  }
  else {
    foreach ($build in @(Get-ChildItem -Path $appsDir -Directory | ForEach-Object { Join-Path $_.FullName 'build.py' } | Where-Object { Test-Path $_ -PathType Leaf })) {
      $module = "apps.$(Split-Path (Split-Path $build -Parent) -Leaf).build"
      $package = Join-Path $workdir 'package.zip'
      Push-Location $root
      try {
        $identity = (& $python -c 'import importlib, sys; m = importlib.import_module(sys.argv[1]); print(m.APPLICATION_ID, m.VERSION)' $module)
        Assert-Ok "$module (package id and version)"
      }
      finally { Pop-Location }
      $application, $version = "$identity".Trim().Split(' ', 2)
      if (-not ("$application$version" -match '^[A-Za-z0-9._-]+$')) { Fail "$module gives an unusable package id or version" }
      $state = (az batch application package show --subscription $env:AZURE_SUBSCRIPTION_ID --resource-group $env:AZURE_RESOURCE_GROUP --name $env:AZURE_BATCH_ACCOUNT_NAME --application-name $application --version-name $version --query state --output tsv 2>$null)
      if ("$state".Trim() -eq 'Active') {
        # build.py makes the same bytes from the same sources: an active version is this one.
        Write-Output "postdeploy: application package $application $version is already active"
      }
      else {
        Write-Output "postdeploy: building and uploading application package $application $version"
        Push-Location $root
        try {
          & $python -m $module --output $package | Out-Null
          Assert-Ok "$module"
        }
        finally { Pop-Location }
        az batch application package create --subscription $env:AZURE_SUBSCRIPTION_ID --resource-group $env:AZURE_RESOURCE_GROUP --name $env:AZURE_BATCH_ACCOUNT_NAME --application-name $application --version-name $version --package-file $package --output none
        Assert-Ok 'az batch application package create'
      }
      az batch application set --subscription $env:AZURE_SUBSCRIPTION_ID --resource-group $env:AZURE_RESOURCE_GROUP --name $env:AZURE_BATCH_ACCOUNT_NAME --application-name $application --default-version $version --output none
      Assert-Ok 'az batch application set'
    }
  }

  # 3. Where to go next; no key, no SAS.
  Write-Output 'postdeploy: done'
  Write-Output "  drop files into:  $blobEndpoint/$($env:BATCHDROP_INPUT_CONTAINER)/  (az storage blob upload --auth-mode login --account-name $($env:AZURE_STORAGE_ACCOUNT_NAME) -c $($env:BATCHDROP_INPUT_CONTAINER) -f FILE)"
  Write-Output "  status:           $appUrl/api/status  (needs a function key: BATCHDROP_FUNCTION_KEY=<key> batchdrop status --url $appUrl)"
}
finally {
  Remove-Item -Recurse -Force -Path $workdir -ErrorAction SilentlyContinue
}
