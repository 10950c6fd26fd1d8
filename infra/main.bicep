// batchdrop on Azure: one resource group with monitoring, storage, a Flex Consumption Function App, a Batch
// account and an Event Grid system topic; the app's user-assigned identity holds the roles below and no key exists
// anywhere in the deployment. `azd up` deploys it; infra/hooks/ does what needs the deployed app.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; seeds the unique suffix of every resource name and the azd-env-name tag.')
param environmentName string

@minLength(1)
@description('Azure region of every resource (pick one with Batch core quota, see docs/deploy.md).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Path of the pipelines file inside the deployed app (BATCHDROP_PIPELINES_FILE); .funcignore must keep it.')
param pipelinesFile string = 'samples/pipelines.json'

@description('Resource id of an existing storage account to reuse instead of creating one; empty creates a new one.')
param existingStorageAccountId string = ''

@description('Resource id of an existing Batch account to reuse instead of creating one; empty creates a new one.')
param existingBatchAccountId string = ''

@description('VM size for the pool (exported as BATCHDROP_POOL_VM_SIZE; the pool itself is what the pipelines file says).')
param poolVmSize string = 'standard_d2s_v3'

@minValue(1)
@maxValue(1000)
@description('Most nodes the pool may scale to (exported as BATCHDROP_POOL_MAX_NODES for the pipelines file).')
param poolMaxNodes int = 2

@description('Whether the pool should use Spot nodes (exported as BATCHDROP_POOL_USE_SPOT for the pipelines file).')
param poolUseSpot bool = false

@description('Also allow SharedKey (account key) auth on a new Batch account; false keeps Entra ID (AAD) as the only way in.')
param allowBatchSharedKey bool = false

@description('Principal (object) id of whoever runs azd (azd passes AZURE_PRINCIPAL_ID): granted Storage Blob Data Contributor on the storage account so the postdeploy hook can upload apps/; empty grants nothing.')
param principalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
])
@description('Kind of principal principalId is: User for a person running azd, ServicePrincipal for a CI pipeline.')
param principalType string = 'User'

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var inputContainer = 'input'
var appsContainer = 'apps'
var resultsContainer = 'results'
var functionAppName = 'func-${resourceToken}'
// Flex Consumption pulls the app package from this container (container names: 3-63 lowercase, digits, '-').
var deploymentContainer = 'app-package-${resourceToken}'
var newStorageAccountName = 'st${resourceToken}'
var newBatchAccountName = 'ba${resourceToken}'
var resourceGroupName = 'rg-${environmentName}'
// A reused account is addressed by its own subscription, resource group and name; a new one by the ids it will
// have. Splitting an id that always exists keeps every index below in range whichever branch is taken.
var newStorageAccountId = '${subscription().id}/resourceGroups/${resourceGroupName}/providers/Microsoft.Storage/storageAccounts/${newStorageAccountName}'
var newBatchAccountId = '${subscription().id}/resourceGroups/${resourceGroupName}/providers/Microsoft.Batch/batchAccounts/${newBatchAccountName}'
var storageIdParts = split(empty(existingStorageAccountId) ? newStorageAccountId : existingStorageAccountId, '/')
var batchIdParts = split(empty(existingBatchAccountId) ? newBatchAccountId : existingBatchAccountId, '/')

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: resourceGroupName
  location: location
  tags: tags
}

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    appInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: resourceGroup(storageIdParts[2], storageIdParts[4])
  dependsOn: [
    rg
  ]
  params: {
    name: last(storageIdParts)
    create: empty(existingStorageAccountId)
    location: location
    tags: tags
    containers: [inputContainer, appsContainer, resultsContainer, deploymentContainer]
  }
}

module eventGrid 'app/eventgrid.bicep' = {
  name: 'eventgrid'
  scope: resourceGroup(storageIdParts[2], storageIdParts[4])
  dependsOn: [
    rg
  ]
  params: {
    name: 'evgt-${resourceToken}'
    storageAccountName: storage.outputs.name
    tags: tags
  }
}

module batch 'app/batch.bicep' = {
  name: 'batch'
  scope: resourceGroup(batchIdParts[2], batchIdParts[4])
  dependsOn: [
    rg
  ]
  params: {
    name: last(batchIdParts)
    create: empty(existingBatchAccountId)
    location: location
    tags: tags
    allowSharedKey: allowBatchSharedKey
  }
}

module functionApp 'app/function.bicep' = {
  name: 'function'
  scope: rg
  params: {
    name: functionAppName
    planName: 'plan-${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    appInsightsName: monitoring.outputs.appInsightsName
    blobEndpoint: storage.outputs.blobEndpoint
    queueEndpoint: storage.outputs.queueEndpoint
    tableEndpoint: storage.outputs.tableEndpoint
    deploymentContainer: deploymentContainer
    batchUrl: 'https://${batch.outputs.endpoint}'
    pipelinesFile: pipelinesFile
    inputContainer: inputContainer
    appsContainer: appsContainer
    resultsContainer: resultsContainer
  }
}

// The same module three times, once per resource it grants on, so that each assignment is scoped to its resource
// (possibly in a reused account's own resource group); the role table lives only in roles.bicep. The storage one also
// grants the deploying principal its blob role.
module storageRoles 'app/roles.bicep' = {
  name: 'roles-storage'
  scope: resourceGroup(storageIdParts[2], storageIdParts[4])
  dependsOn: [
    rg
  ]
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    deployerPrincipalId: principalId
    deployerPrincipalType: principalType
  }
}

module batchRoles 'app/roles.bicep' = {
  name: 'roles-batch'
  scope: resourceGroup(batchIdParts[2], batchIdParts[4])
  dependsOn: [
    rg
  ]
  params: {
    principalId: identity.outputs.principalId
    batchAccountName: batch.outputs.name
  }
}

module monitoringRoles 'app/roles.bicep' = {
  name: 'roles-monitoring'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    appInsightsName: monitoring.outputs.appInsightsName
  }
}

// What azd writes into the environment for the hooks and the CLI: names and URLs, never a key.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_FUNCTION_APP_URL string = 'https://${functionApp.outputs.defaultHostName}'
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_STORAGE_ACCOUNT_ID string = storage.outputs.id
output AZURE_STORAGE_BLOB_ENDPOINT string = storage.outputs.blobEndpoint
output AZURE_EVENTGRID_SYSTEM_TOPIC_NAME string = eventGrid.outputs.name
output BATCHDROP_INPUT_CONTAINER string = inputContainer
output BATCHDROP_APPS_CONTAINER string = appsContainer
output BATCHDROP_RESULTS_CONTAINER string = resultsContainer
output AZURE_BATCH_ACCOUNT_NAME string = batch.outputs.name
output AZURE_BATCH_ACCOUNT_ENDPOINT string = batch.outputs.endpoint
output BATCHDROP_POOL_VM_SIZE string = poolVmSize
output BATCHDROP_POOL_MAX_NODES int = poolMaxNodes
output BATCHDROP_POOL_USE_SPOT bool = poolUseSpot
