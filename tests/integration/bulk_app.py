"""A Functions app holding only the bulk Event Grid endpoint (as function_app.py registers it), so a test's dev
host runs no timer or blob trigger that would submit on its own."""

import azure.functions as func

from shared.triggers import bulk

app = func.FunctionApp()
app.register_functions(bulk.bp)
