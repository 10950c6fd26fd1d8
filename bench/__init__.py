"""Benchmark: batchdrop against a naive baseline, on Azurite and the Batch emulator."""
