"""The dev host: runs a v2-model `azure.functions.FunctionApp` from its own binding declarations.

`python -m local.host --app function_app:app --port 0 --state-dir DIR` (see __main__.py), or
in-process: `DevHost(app, HostConfig(state_dir=...), AppSettings(os.environ)).start()`.
"""

from .devhost import DevHost, HostConfig, run
from .settings import AppSettings, HostOptions, StartupError

__all__ = ["AppSettings", "DevHost", "HostConfig", "HostOptions", "StartupError", "run"]
