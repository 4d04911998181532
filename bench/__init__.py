"""Benchmarks: `make bench` (python -m bench.run) measures spendgate against a bare forwarder."""
