// The Batch account: Batch-service pool allocation (nodes in Batch's subscription, billed per node), data plane
// through Entra ID only unless allowSharedKey. A new account gets the storage account as its auto-storage, reached
// with its own user-assigned identity (no storage key: shared keys are off), so that application packages work.
// The default pool is declared here because only the management plane can give a pool an identity, and its nodes
// need one (nodeIdentityReference) to download application packages from auto-storage; the app creates every
// other pool its pipelines file names, and keeps this one's formula and counts in step with the file.
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

@description('Resource id of the storage account a new Batch account uses as its auto-storage (application packages).')
param storageAccountId string

@description('Resource id of the user-assigned identity the Batch account reaches its auto-storage with.')
param accountIdentityId string

@description('Resource id of the user-assigned identity of the pool\'s nodes (reads application packages from auto-storage).')
param nodeIdentityId string

@description('Id of the default pool: the pool id the deployed pipelines file gives its pipelines.')
param poolId string

@description('VM size of the default pool (BATCHDROP_POOL_VM_SIZE).')
param poolVmSize string

@minValue(1)
@maxValue(1000)
@description('Most nodes of the default pool (BATCHDROP_POOL_MAX_NODES).')
param poolMaxNodes int

@description('Spot nodes instead of dedicated ones (BATCHDROP_POOL_USE_SPOT).')
param poolUseSpot bool

@description('Autoscale the default pool between 0 and poolMaxNodes (true), or keep poolMaxNodes nodes (false).')
param poolScaleToZero bool

@minValue(1)
@maxValue(256)
@description('Tasks each node runs at once: the deployed pipelines file\'s task_slots_per_node for the pool.')
param poolTaskSlots int

resource newAccount 'Microsoft.Batch/batchAccounts@2024-07-01' = if (create) {
  name: name
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${accountIdentityId}': {}
    }
  }
  properties: {
    poolAllocationMode: 'BatchService'
    allowedAuthenticationModes: allowSharedKey ? ['AAD', 'SharedKey'] : ['AAD']
    publicNetworkAccess: 'Enabled'
    autoStorage: {
      storageAccountId: storageAccountId
      authenticationMode: 'BatchAccountManagedIdentity'
      nodeIdentityReference: {
        resourceId: nodeIdentityId
      }
    }
  }
}

resource account 'Microsoft.Batch/batchAccounts@2024-07-01' existing = {
  name: name
}

// The formula shared/pools.py pending_tasks_formula(0, poolMaxNodes, poolUseSpot, 10, poolTaskSlots) generates,
// line for line (tests/infra checks it), so the app finds no drift to correct.
var idleMinutes = 10
var targetNodes = poolUseSpot ? '$TargetLowPriorityNodes' : '$TargetDedicatedNodes'
var otherNodes = poolUseSpot ? '$TargetDedicatedNodes' : '$TargetLowPriorityNodes'
var nodeKind = poolUseSpot ? 'Spot' : 'dedicated'
// The formula's first line is a comment; a string literal starting with two slashes trips tree-sitter's Bicep grammar.
var formulaComment = '/'
var poolFormula = join([
  '${formulaComment}${formulaComment} batchdrop: 0 to ${poolMaxNodes} ${nodeKind} nodes, ${poolTaskSlots} tasks per node; back to 0 after ${idleMinutes} minutes without tasks'
  '$samples = $PendingTasks.GetSamplePercent(TimeInterval_Minute * ${idleMinutes});'
  '$pending = $samples < 70 ? max($PendingTasks.GetSample(1)) : max($PendingTasks.GetSample(TimeInterval_Minute * ${idleMinutes}));'
  '$wanted = $pending > 0 ? ceil($pending / ${poolTaskSlots}) : 0;'
  '${targetNodes} = max(0, min(${poolMaxNodes}, $wanted));'
  '${otherNodes} = 0;'
  '$NodeDeallocationOption = taskcompletion;'
], '\n')

resource pool 'Microsoft.Batch/batchAccounts/pools@2024-07-01' = {
  name: poolId
  parent: account
  dependsOn: [
    newAccount
  ]
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${nodeIdentityId}': {}
    }
  }
  properties: {
    vmSize: poolVmSize
    taskSlotsPerNode: poolTaskSlots
    // shared/pools.py DEFAULT_IMAGE: the image the app gives a pool without containers.
    deploymentConfiguration: {
      virtualMachineConfiguration: {
        imageReference: {
          publisher: 'canonical'
          offer: 'ubuntu-24_04-lts'
          sku: 'server'
          version: 'latest'
        }
        nodeAgentSkuId: 'batch.node.ubuntu 24.04'
      }
    }
    scaleSettings: poolScaleToZero
      ? {
          autoScale: {
            formula: poolFormula
            evaluationInterval: 'PT5M'
          }
        }
      : {
          fixedScale: {
            targetDedicatedNodes: poolUseSpot ? 0 : poolMaxNodes
            targetLowPriorityNodes: poolUseSpot ? poolMaxNodes : 0
          }
        }
  }
}

output name string = account.name
// The host name without a scheme, e.g. <name>.<region>.batch.azure.com.
output endpoint string = account.properties.accountEndpoint
output poolId string = pool.name
