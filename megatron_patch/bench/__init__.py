"""Benchmarks: functions that measure and return structured results (tools/bench_*.py print them)."""
