"""vitbench: benchmark runner for ViTs vs CNNs (python -m bench)."""
