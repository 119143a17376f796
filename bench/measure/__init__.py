"""How things are measured: timing, memory, FLOPs (what is measured lives in bench/cell.py and bench/train.py)."""
