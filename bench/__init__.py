"""Benchmarks: the service over HTTP side by side with its peers, on four cases."""
