"""Registered experiments: what a claim runs on its models (``experiment: {name: args}``)."""
