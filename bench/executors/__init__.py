"""Executors decide where cells run (this machine's subprocesses, or Ray tasks); all run the same pure cell
function and hand its rows back to the driver, the only writer of the run dir."""
