"""How things are measured (timing, memory, FLOPs, machine load, energy): tools only, importing nothing else of
bench. What is measured lives in bench/tasks/."""
