# azd postdeploy hook (windows, pwsh): the twin of infra/hooks/postdeploy.sh, same steps in the same order.
#   1. the blob extension's system key of the function app (never printed)
#   2. the Event Grid subscription input -> ingest's blob-trigger webhook (created once, updated after)
#   3. apps/ into the apps container, and each application package onto the Batch account
#   4. where to drop files and where to watch
# Keep the `az` commands the same as the sh script's, in the same order (tests/infra/test_hooks.py checks it).
# Every value is passed as one argument; nothing goes through Invoke-Expression.
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

$SubscriptionName = 'batchdrop-input'
# The blob trigger with source EventGrid in shared/triggers/ingest.py is registered as "ingest".
$FunctionName = 'ingest'
$Required = @(
  'AZURE_SUBSCRIPTION_ID', 'AZURE_RESOURCE_GROUP', 'AZURE_FUNCTION_APP_NAME', 'AZURE_FUNCTION_APP_URL',
  'AZURE_STORAGE_ACCOUNT_NAME', 'AZURE_STORAGE_BLOB_ENDPOINT', 'AZURE_EVENTGRID_SYSTEM_TOPIC_NAME',
  'BATCHDROP_INPUT_CONTAINER', 'BATCHDROP_APPS_CONTAINER', 'AZURE_BATCH_ACCOUNT_NAME'
)
# The host creates the blobs_extension key when it first loads the blob trigger, which can lag the deploy.
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
$subjectPrefix = "/blobServices/default/containers/$($env:BATCHDROP_INPUT_CONTAINER)/blobs/"
$root = (Resolve-Path (Join-Path $PSScriptRoot '../..')).Path
$appsDir = Join-Path $root 'apps'
$python = if (Get-Command python3 -ErrorAction SilentlyContinue) { 'python3' } else { 'python' }
$workdir = Join-Path ([IO.Path]::GetTempPath()) ("batchdrop-postdeploy-" + [Guid]::NewGuid().ToString('N'))
New-Item -ItemType Directory -Path $workdir | Out-Null
$env:PYTHONDONTWRITEBYTECODE = '1'

try {
  # 1. The key goes from az's stdout into a variable and then into one argument; never written out.
  Write-Output "postdeploy: reading the blob extension key of $($env:AZURE_FUNCTION_APP_NAME)"
  $key = ''
  for ($attempt = 1; ; $attempt++) {
    $key = (az functionapp keys list --subscription $env:AZURE_SUBSCRIPTION_ID --resource-group $env:AZURE_RESOURCE_GROUP --name $env:AZURE_FUNCTION_APP_NAME --query systemKeys.blobs_extension --output tsv)
    Assert-Ok 'az functionapp keys list'
    $key = "$key".Trim()
    if ($key -or $attempt -ge $KeyAttempts) { break }
    Write-Output "postdeploy: no blobs_extension key yet (the host has not loaded the blob trigger); retrying in ${KeyDelay}s"
    Start-Sleep -Seconds $KeyDelay
  }
  if (-not $key) {
    Fail "$($env:AZURE_FUNCTION_APP_NAME) has no blobs_extension system key after $KeyAttempts attempts: check that the deploy succeeded and the app started, then run 'azd hooks run postdeploy'"
  }
  $endpoint = "https://$appHost/runtime/webhooks/blobs?functionName=Host.Functions.$FunctionName&code=$key"

  # 2. show, then create or update: a second run leaves one subscription with the same settings, and
  # update refreshes the key should it have been rotated.
  az eventgrid system-topic event-subscription show --subscription $env:AZURE_SUBSCRIPTION_ID --resource-group $env:AZURE_RESOURCE_GROUP --system-topic-name $env:AZURE_EVENTGRID_SYSTEM_TOPIC_NAME --name $SubscriptionName --output none 2>$null | Out-Null
  $verb = if ($LASTEXITCODE -eq 0) { 'update' } else { 'create' }
  Write-Output "postdeploy: $verb Event Grid subscription $SubscriptionName (BlobCreated under $subjectPrefix -> $FunctionName)"
  az eventgrid system-topic event-subscription $verb --subscription $env:AZURE_SUBSCRIPTION_ID --resource-group $env:AZURE_RESOURCE_GROUP --system-topic-name $env:AZURE_EVENTGRID_SYSTEM_TOPIC_NAME --name $SubscriptionName --endpoint-type webhook --endpoint $endpoint --included-event-types Microsoft.Storage.BlobCreated --subject-begins-with $subjectPrefix --output none
  Assert-Ok "az eventgrid system-topic event-subscription $verb"
  $key = ''
  $endpoint = ''

  # 3. Application files, then application packages (each apps/<name>/build.py builds one).
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

  # 4. Where to go next; no key, no SAS.
  Write-Output 'postdeploy: done'
  Write-Output "  drop files into:  $blobEndpoint/$($env:BATCHDROP_INPUT_CONTAINER)/  (az storage blob upload --auth-mode login --account-name $($env:AZURE_STORAGE_ACCOUNT_NAME) -c $($env:BATCHDROP_INPUT_CONTAINER) -f FILE)"
  Write-Output "  status:           $appUrl/api/status  (needs a function key: BATCHDROP_FUNCTION_KEY=<key> batchdrop status --url $appUrl)"
}
finally {
  Remove-Item -Recurse -Force -Path $workdir -ErrorAction SilentlyContinue
}
