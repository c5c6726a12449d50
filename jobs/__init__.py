"""Manifests, the batch driver and the command line."""
