// The Event Grid system topic of the storage account. Its subscriptions (local/eventgrid/subscriptions.json) need
// the deployed functions' keys, so the postdeploy hook creates them (infra/hooks/). The topic's own identity
// dead-letters what it cannot deliver into the dead-letter container (its only role, on that container).
@description('Name of the system topic.')
param name string

@description('Name of the storage account whose events the topic carries (in this resource group).')
param storageAccountName string

@description('Tags of the topic.')
param tags object

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: name
  // A storage account's system topic lives in the account's region.
  location: account.location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: account.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

output name string = topic.name
output principalId string = topic.identity.principalId
