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

@description('Id of the default pool, created here with its nodes\' identity; the deployed pipelines file names it.')
param poolId string = 'batchdrop-pool'

@description('VM size of the default pool, and of every pool the pipelines file leaves vm_size out of (BATCHDROP_POOL_VM_SIZE).')
param poolVmSize string = 'standard_d2s_v3'

@minValue(1)
@maxValue(1000)
@description('Most nodes of a pool whose scale the pipelines file leaves out (BATCHDROP_POOL_MAX_NODES).')
param poolMaxNodes int = 2

@description('Spot nodes instead of dedicated ones for such pools (BATCHDROP_POOL_USE_SPOT): cheaper, may be pre-empted.')
param poolUseSpot bool = false

@description('Autoscale such pools from 0 to poolMaxNodes (true: no node costs at idle), or keep poolMaxNodes nodes (false).')
param poolScaleToZero bool = true

@minValue(1)
@maxValue(256)
@description('Tasks per node of the default pool: must equal the pipelines file\'s task_slots_per_node for it.')
param poolTaskSlots int = 2

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
// Where Event Grid dead-letters (shared/status.py EVENT_DEAD_LETTER_CONTAINER reads it; the local Event Grid uses it).
var deadLetterContainer = 'eventgrid-deadletter'
// The prefix of the tasks' staging containers (BATCHDROP_STAGING_PREFIX): the task-finished subscription filters on it.
var stagingPrefix = 'staging'
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

// The Batch account's own identity (it manages application packages in auto-storage) and its nodes' identity (they
// read the packages): separate from the app's, each with only the storage role it needs.
module batchIdentity 'app/identity.bicep' = {
  name: 'identity-batch'
  scope: rg
  params: {
    name: 'id-batch-${resourceToken}'
    location: location
    tags: tags
  }
}

module nodeIdentity 'app/identity.bicep' = {
  name: 'identity-nodes'
  scope: rg
  params: {
    name: 'id-nodes-${resourceToken}'
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
    containers: [inputContainer, appsContainer, resultsContainer, deadLetterContainer, deploymentContainer]
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
    // The account reaches its auto-storage with its identity: the role comes first.
    storageRoles
  ]
  params: {
    name: last(batchIdParts)
    create: empty(existingBatchAccountId)
    location: location
    tags: tags
    allowSharedKey: allowBatchSharedKey
    storageAccountId: storage.outputs.id
    accountIdentityId: batchIdentity.outputs.id
    nodeIdentityId: nodeIdentity.outputs.id
    poolId: poolId
    poolVmSize: poolVmSize
    poolMaxNodes: poolMaxNodes
    poolUseSpot: poolUseSpot
    poolScaleToZero: poolScaleToZero
    poolTaskSlots: poolTaskSlots
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
    stagingPrefix: stagingPrefix
    poolVmSize: poolVmSize
    poolMaxNodes: poolMaxNodes
    poolUseSpot: poolUseSpot
    poolScaleToZero: poolScaleToZero
  }
}

// The same module three times, once per resource it grants on, so that each assignment is scoped to its resource
// (possibly in a reused account's own resource group); the role table lives only in roles.bicep. The storage one also
// grants the deploying principal its blob role and the Batch account's and nodes' identities theirs.
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
    batchAccountPrincipalId: batchIdentity.outputs.principalId
    nodesPrincipalId: nodeIdentity.outputs.principalId
    eventGridPrincipalId: eventGrid.outputs.principalId
    deadLetterContainerName: deadLetterContainer
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
output BATCHDROP_STAGING_PREFIX string = stagingPrefix
output BATCHDROP_EVENT_DEADLETTER_CONTAINER string = deadLetterContainer
output AZURE_BATCH_ACCOUNT_NAME string = batch.outputs.name
output AZURE_BATCH_ACCOUNT_ENDPOINT string = batch.outputs.endpoint
output BATCHDROP_POOL_VM_SIZE string = poolVmSize
output BATCHDROP_POOL_MAX_NODES int = poolMaxNodes
output BATCHDROP_POOL_USE_SPOT bool = poolUseSpot
output BATCHDROP_POOL_SCALE_TO_ZERO bool = poolScaleToZero
output BATCHDROP_POOL_ID string = batch.outputs.poolId
