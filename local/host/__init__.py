"""The dev host: runs a v2-model `azure.functions.FunctionApp` unchanged, from its own bindings.

    python -m local.host --app function_app:app --host 127.0.0.1 --port 0 --state-dir DIR
        [--settings local.settings.json] [--webhook-key KEY] [--blob-scan-seconds N]

prints `READY http://127.0.0.1:<port>` once serving and stops on SIGTERM. In process:
`DevHost(app, HostConfig(state_dir=...), AppSettings(os.environ)).start()` / `.stop()`.

What it does, and where it differs from the Functions host:

- Settings: the environment, plus `Values` of the settings file for names it does not set (exported
  to the environment). `%NAME%` in binding attributes resolves from them; a missing one, a bad
  schedule, an unknown binding or a missing connection stops the host at startup, naming it.
  host.json is read from the app module's directory (else the current one).
- Connections: setting `<connection>` holds a connection string, or `<connection>__blobServiceUri`
  and `__queueServiceUri` name the services (DefaultAzureCredential).
- Blob triggers: the container is listed every --blob-scan-seconds, except with source=EventGrid,
  which is push-only as on Azure (the local Event Grid, local/eventgrid, pushes). A new blob version gets a receipt
  `azure-webjobs-hosts/blobreceipts/<hostId>/Host.Functions.<name>/<"etag">/<container>/<blob>` and
  a message on `azure-webjobs-blobtrigger-<hostId>`; that queue runs the function (5 tries, then
  `webjobs-blobtrigger-poison`), all in the trigger's own storage account. The host id is the
  setting AzureFunctionsWebHost__hostid, else the machine name plus a digest of --state-dir (so a
  restart with the same state directory keeps its receipts; hosts sharing an id share the work).
  The function gets a `func.blob.InputStream` that downloads only as it is read.
  `POST /runtime/webhooks/blobs?functionName=Host.Functions.<name>` takes Event Grid pushes.
- Queue triggers: batches of host.json batchSize, invisible 30 s and renewed while running; a
  failure comes back after visibilityTimeout (host.json; if unset 1, 2, 4 ... 60 s, where Azure
  retries at once); after maxDequeueCount (5) dequeues, or if it is not in messageEncoding
  (base64 unless host.json says none), it moves to `<queue>-poison`. Polls about every second idle.
- Timers: NCRONTAB (6 or 5 fields) or TimeSpan, UTC, never overlapping; run_on_startup; a tick
  missed while down (schedules a minute apart or more) runs at startup with past_due. Status
  under --state-dir/timers. `POST /admin/functions/<timer>` runs one now.
- `GET /admin/host/progress` (the dev host's own): counters that only grow (blob scans, queue polls,
  in-flight messages, timer ticks), so a test waits for the host to have had its chance to act.
- HTTP: `/<routePrefix>/<route>` with methods and route parameters; no keys enforced (as
  `func start`), loopback addresses only.
- Event Grid triggers: `POST /runtime/webhooks/EventGrid?functionName=<name>` (+ `code=` with
  --webhook-key): validation handshake, one invocation per event, 500 when one fails.
- Queue output bindings (`func.Out[str]`, or `$return`) are sent after the function succeeds.
"""

from .devhost import DevHost, HostConfig, run
from .settings import AppSettings, HostOptions, StartupError

__all__ = ["AppSettings", "DevHost", "HostConfig", "HostOptions", "StartupError", "run"]
