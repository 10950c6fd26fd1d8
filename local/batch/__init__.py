"""A local Azure Batch emulator: the Batch REST API subset batchdrop uses, tasks run as local processes.

Run it with `python -m local.batch --port 0 --state-dir DIR`; see docs/emulator.md.
"""
