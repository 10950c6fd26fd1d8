"""The emulated Batch account behind local/batch/service.py: one module per concern over a shared State."""
