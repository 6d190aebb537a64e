"""Benchmarks of the seed study: the service over HTTP side by side with its peers."""
