"""Blueprints: thin adapters from Functions bindings to the use cases."""
