// The Event Grid system topic of the storage account. Its BlobCreated subscription to the app's blob-trigger
// webhook needs the deployed function's key, so the postdeploy hook creates it (infra/hooks/).
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
  properties: {
    source: account.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

output name string = topic.name
