// The app identity's roles, each on the one resource it is needed for, and the deploying principal's blob role. Deployed once per resource (main.bicep):
// give the name of the storage account, the Batch account or the Application Insights component, and only that
// resource's assignments are made. This is the only table of role definition ids in the template.
@description('Principal (object) id of the app\'s user-assigned managed identity.')
param principalId string

@description('Principal (object) id of whoever runs azd (AZURE_PRINCIPAL_ID): granted Storage Blob Data Contributor on the storage account for the postdeploy hook\'s upload; empty grants nothing.')
param deployerPrincipalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
])
@description('Kind of principal deployerPrincipalId is: User for a person, ServicePrincipal for a CI pipeline.')
param deployerPrincipalType string = 'User'

@description('Principal (object) id of the Batch account\'s identity: Storage Blob Data Contributor on the storage account (its auto-storage: application packages); empty grants nothing.')
param batchAccountPrincipalId string = ''

@description('Principal (object) id of the pool nodes\' identity: Storage Blob Data Reader on the storage account (they download application packages); empty grants nothing.')
param nodesPrincipalId string = ''

@description('Principal (object) id of the Event Grid system topic\'s identity: Storage Blob Data Contributor on the dead-letter container only; empty grants nothing.')
param eventGridPrincipalId string = ''

@description('Blob container of the storage account that Event Grid dead-letters into.')
param deadLetterContainerName string = 'eventgrid-deadletter'

@description('Storage account in this resource group to grant the storage roles on; empty for none.')
param storageAccountName string = ''

@description('Batch account in this resource group to grant the Batch role on; empty for none.')
param batchAccountName string = ''

@description('Application Insights component in this resource group to grant the metrics role on; empty for none.')
param appInsightsName string = ''

// Built-in role definition ids (learn.microsoft.com/azure/role-based-access-control/built-in-roles).
var roles = {
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe' // Storage Blob Data Contributor
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1' // Storage Blob Data Reader
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88' // Storage Queue Data Contributor
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // Storage Table Data Contributor
  storageBlobDelegator: 'db58b8e5-c6ad-4a2a-8342-4190687cbf4a' // Storage Blob Delegator
  batchDataContributor: '6aaa78f1-f7de-44ca-8722-c64a23943cae' // Azure Batch Data Contributor
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb' // Monitoring Metrics Publisher
}

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = if (!empty(storageAccountName)) {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = if (!empty(storageAccountName)) {
  name: 'default'
  parent: storageAccount
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = if (!empty(storageAccountName)) {
  name: deadLetterContainerName
  parent: blobService
}

resource batchAccount 'Microsoft.Batch/batchAccounts@2024-07-01' existing = if (!empty(batchAccountName)) {
  name: batchAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = if (!empty(appInsightsName)) {
  name: appInsightsName
}

// Blobs: inputs, app files, staging and results, and the Functions host's own blobs and the Flex package.
resource blobDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(storageAccountName)) {
  name: guid(storageAccount.id, principalId, roles.storageBlobDataContributor)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// The completions queue and its poison queue, and the host's queues (blob trigger receipts).
resource queueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(storageAccountName)) {
  name: guid(storageAccount.id, principalId, roles.storageQueueDataContributor)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// The ledger table.
resource tableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(storageAccountName)) {
  name: guid(storageAccount.id, principalId, roles.storageTableDataContributor)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Get User Delegation Key: the tasks' short-lived SAS URLs are signed with it (Azure grants it at account scope).
resource blobDelegator 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(storageAccountName)) {
  name: guid(storageAccount.id, principalId, roles.storageBlobDelegator)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDelegator)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// The deploying principal (a person, or a CI pipeline's service principal): the postdeploy hook uploads apps/ to the
// apps container as it (--auth-mode login; shared keys are off). Only when its id is given.
resource deployerBlobDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(storageAccountName) && !empty(deployerPrincipalId)) {
  name: guid(storageAccount.id, deployerPrincipalId, roles.storageBlobDataContributor)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
  }
}

// The Batch account's identity manages its auto-storage: the containers Batch keeps application packages in.
resource batchAccountBlobDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(storageAccountName) && !empty(batchAccountPrincipalId)) {
  name: guid(storageAccount.id, batchAccountPrincipalId, roles.storageBlobDataContributor)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: batchAccountPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The nodes' identity (the auto-storage nodeIdentityReference) only reads: application packages.
resource nodesBlobDataReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(storageAccountName) && !empty(nodesPrincipalId)) {
  name: guid(storageAccount.id, nodesPrincipalId, roles.storageBlobDataReader)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
    principalId: nodesPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Event Grid writes the events it could not deliver as blobs into the dead-letter container, and nowhere else.
resource eventGridDeadLetterWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(storageAccountName) && !empty(eventGridPrincipalId)) {
  name: guid(deadLetterContainer.id, eventGridPrincipalId, roles.storageBlobDataContributor)
  scope: deadLetterContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: eventGridPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Pools (create, resize, autoscale), jobs and tasks; Azure Batch Job Submitter cannot write pools.
resource batchDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(batchAccountName)) {
  name: guid(batchAccount.id, principalId, roles.batchDataContributor)
  scope: batchAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.batchDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Telemetry with Entra auth (the component's local auth is off).
resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(appInsightsName)) {
  name: guid(appInsights.id, principalId, roles.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
