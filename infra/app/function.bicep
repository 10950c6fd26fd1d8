// The Function App on Flex Consumption (FC1): Linux, Python 3.11, the user-assigned identity for everything.
// Storage is reached through identity-based connections (AzureWebJobsStorage__* for the host,
// BatchdropStorage__* for the app's triggers and its own clients), Batch through the same identity; there is no
// FUNCTIONS_WORKER_RUNTIME (Flex refuses it; the runtime is functionAppConfig.runtime).
@description('Name of the Function App (its host name is <name>.azurewebsites.net).')
param name string

@description('Name of the Flex Consumption plan.')
param planName string

@description('Azure region.')
param location string

@description('Tags of every resource.')
param tags object

@description('Resource id of the app\'s user-assigned managed identity.')
param identityId string

@description('Client id of that identity: the bindings, DefaultAzureCredential and Application Insights pick it by this.')
param identityClientId string

@description('Name of the Application Insights component in this resource group.')
param appInsightsName string

@description('Blob service URL of the storage account, ending in /.')
param blobEndpoint string

@description('Queue service URL of the storage account.')
param queueEndpoint string

@description('Table service URL of the storage account.')
param tableEndpoint string

@description('Blob container Flex deploys the app package into.')
param deploymentContainer string

@description('Batch account URL, https://<account>.<region>.batch.azure.com.')
param batchUrl string

@description('Path of the pipelines file inside the deployed app.')
param pipelinesFile string

@description('Container that inputs are dropped into.')
param inputContainer string

@description('Container of the application files.')
param appsContainer string

@description('Container of the published results.')
param resultsContainer string

@description('Prefix of the tasks\' staging containers (the task-finished event subscription filters on it).')
param stagingPrefix string

@description('VM size of the pools the pipelines file leaves vm_size out of.')
param poolVmSize string

@description('Most nodes of the pools the pipelines file leaves scale out of.')
param poolMaxNodes int

@description('Spot nodes for those pools.')
param poolUseSpot bool

@description('Autoscale those pools from 0 (true) or keep poolMaxNodes nodes (false).')
param poolScaleToZero bool

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  // azd finds the service's target by this tag (azure.yaml: services.api).
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${blobEndpoint}${deploymentContainer}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: 40
        instanceMemoryMB: 2048
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  name: 'appsettings'
  parent: site
  properties: {
    // The Functions host's own storage (leases, timers, blob receipts), through the identity.
    AzureWebJobsStorage__credential: 'managedidentity'
    AzureWebJobsStorage__clientId: identityClientId
    AzureWebJobsStorage__blobServiceUri: blobEndpoint
    AzureWebJobsStorage__queueServiceUri: queueEndpoint
    AzureWebJobsStorage__tableServiceUri: tableEndpoint
    // The app's connection: the blob and queue triggers read credential/clientId and the service URIs;
    // shared/settings.py reads the three service URIs and, with BatchdropStorage itself unset, uses the identity.
    BatchdropStorage__credential: 'managedidentity'
    BatchdropStorage__clientId: identityClientId
    BatchdropStorage__blobServiceUri: blobEndpoint
    BatchdropStorage__queueServiceUri: queueEndpoint
    BatchdropStorage__tableServiceUri: tableEndpoint
    // DefaultAzureCredential() in shared/gateways.py and shared/batch.py picks the user-assigned identity by this.
    AZURE_CLIENT_ID: identityClientId
    APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
    // Local auth is off on the component: telemetry is sent with the identity's Entra token.
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
    // No BATCHDROP_BATCH_ACCOUNT_NAME/KEY: without them the app authenticates to Batch with the identity.
    BATCHDROP_BATCH_URL: batchUrl
    BATCHDROP_PIPELINES_FILE: pipelinesFile
    BATCHDROP_SWEEP_SCHEDULE: '0 */5 * * * *'
    BATCHDROP_POLL_SCHEDULE: '0 */5 * * * *'
    BATCHDROP_SCHEDULES_SCHEDULE: '0 * * * * *'
    BATCHDROP_INPUT_CONTAINER: inputContainer
    BATCHDROP_APPS_CONTAINER: appsContainer
    BATCHDROP_RESULTS_CONTAINER: resultsContainer
    BATCHDROP_STAGING_PREFIX: stagingPrefix
    // The postdeploy hook subscribes task_finished to the staging containers' stderr logs: the poll is the net.
    BATCHDROP_COMPLETION_EVENTS: 'true'
    // What the pipelines file's pools leave out (shared/pools.py PoolDefaults): main.bicep's pool parameters.
    BATCHDROP_POOL_VM_SIZE: poolVmSize
    BATCHDROP_POOL_MAX_NODES: string(poolMaxNodes)
    BATCHDROP_POOL_USE_SPOT: string(poolUseSpot)
    BATCHDROP_POOL_SCALE_TO_ZERO: string(poolScaleToZero)
  }
}

output name string = site.name
output defaultHostName string = site.properties.defaultHostName
