"""batchdrop's Functions app: registers the blueprints, nothing else."""

import azure.functions as func

from shared.triggers import api, bulk, collector, ingest, timers

app = func.FunctionApp()
for blueprint in (ingest.bp, bulk.bp, timers.bp, collector.bp, api.bp):
    app.register_functions(blueprint)
