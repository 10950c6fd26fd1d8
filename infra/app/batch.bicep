// The Batch account: Batch-service pool allocation (nodes in Batch's subscription, billed per node), data plane
// through Entra ID only unless allowSharedKey. No pool here: the app creates each pool the pipelines file names.
@description('Name of the Batch account (3-24 lowercase letters and digits).')
param name string

@description('Create the account (true), or use the existing account of that name in this resource group (false).')
param create bool = true

@description('Azure region of a new account.')
param location string

@description('Tags of a new account.')
param tags object

@description('Also allow SharedKey (account key) auth; false leaves AAD as the only authentication mode.')
param allowSharedKey bool = false

resource newAccount 'Microsoft.Batch/batchAccounts@2024-07-01' = if (create) {
  name: name
  location: location
  tags: tags
  properties: {
    poolAllocationMode: 'BatchService'
    allowedAuthenticationModes: allowSharedKey ? ['AAD', 'SharedKey'] : ['AAD']
    publicNetworkAccess: 'Enabled'
  }
}

resource account 'Microsoft.Batch/batchAccounts@2024-07-01' existing = {
  name: name
}

output name string = account.name
// The host name without a scheme, e.g. <name>.<region>.batch.azure.com.
output endpoint string = account.properties.accountEndpoint
