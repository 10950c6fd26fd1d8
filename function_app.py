"""batchdrop's Functions app: registers the blueprints, nothing else."""

import azure.functions as func

from shared.triggers import api, bulk, collector, finished, ingest, rerun, timers

app = func.FunctionApp()
for blueprint in (ingest.bp, bulk.bp, timers.bp, collector.bp, finished.bp, api.bp, rerun.bp):
    app.register_functions(blueprint)
