"""batchdrop's Functions app: registers the blueprints, nothing else."""

import azure.functions as func

from shared.triggers import api, collector, finished, ingest, timers

app = func.FunctionApp()
for blueprint in (ingest.bp, timers.bp, collector.bp, finished.bp, api.bp):
    app.register_functions(blueprint)
