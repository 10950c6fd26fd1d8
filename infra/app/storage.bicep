// The storage account (new, or a reused one left as it is) and the containers batchdrop and Flex need. The
// queue `completions` and the table `ledger` are not declared here: the app creates them on first use
// (shared/ gateways), as it creates the per-task staging containers.
@description('Name of the storage account (3-24 lowercase letters and digits).')
param name string

@description('Create the account (true), or use the existing account of that name in this resource group (false).')
param create bool = true

@description('Azure region of a new account.')
param location string

@description('Tags of a new account.')
param tags object

@description('Blob containers to create: input, apps, results and the Flex deployment container.')
param containers array

resource newAccount 'Microsoft.Storage/storageAccounts@2023-05-01' = if (create) {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    // Identity only: no account key, no SAS signed with one; user-delegation SAS still works.
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    defaultToOAuthAuthentication: true
    accessTier: 'Hot'
  }
}

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: name
}

// Every account has this service: it is referenced, not declared, so a reused account's blob settings stay as they are.
resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  name: 'default'
  parent: account
}

resource container 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [
  for containerName in containers: {
    name: containerName
    parent: blobService
    dependsOn: [
      newAccount
    ]
    properties: {
      publicAccess: 'None'
    }
  }
]

output name string = account.name
output id string = account.id
output blobEndpoint string = account.properties.primaryEndpoints.blob
output queueEndpoint string = account.properties.primaryEndpoints.queue
output tableEndpoint string = account.properties.primaryEndpoints.table
