"""A Functions app holding the bulk Event Grid endpoint and the timers (as function_app.py registers them): a test
sets the sweep and the poll to once a year, so only the schedules timer runs on its own."""

import azure.functions as func

from shared.triggers import bulk, timers

app = func.FunctionApp()
for blueprint in (bulk.bp, timers.bp):
    app.register_functions(blueprint)
