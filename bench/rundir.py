"""The run directory: its lock, its environment record, its code version, and its per-cell result files. Its
layout is bench/paths.py's RunPaths."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from .env import ENVIRONMENT_KEYS, code_version, collect_env
from .paths import RunPaths
from .results import CellRecord, ResultsError, write_atomic, write_results_csv
from .spec import CellSpec, SpecError


class RunDirError(ValueError):
    """A run dir that cannot be used; the message is one line."""


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.paths = RunPaths(self.path)
        self.records: dict[str, CellRecord] = {}
        self.notes: list[str] = []  # things the runner should tell the user (taken-over lock, damaged files)

    # ------------------------------------------------------------------------------------ opening

    @contextlib.contextmanager
    def open(self, suite_name: str, suite_text: str, device: str, command: list[str],
             allow_mixed_versions: bool = False) -> Iterator["RunDir"]:
        """Create or resume the run dir and hold its lock until the block ends."""
        self._make()
        with self._lock():
            self._write_env(suite_name, suite_text, device, command, allow_mixed_versions)
            self._load_records()
            self._rewrite_results()
            yield self

    def _make(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"--run-dir {self.path}: exists and is not a directory")
        try:
            self.paths.cells_dir.mkdir(parents=True, exist_ok=True)
            probe = self.paths.write_test
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise RunDirError(f"--run-dir {self.path}: cannot write there ({err.strerror or err})") from None

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """flock on .lock: released by the kernel when the holder dies, so a lock left by a killed runner is
        simply taken over; a live holder's pid is named."""
        fd = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown"
                raise RunDirError(f"--run-dir {self.path}: in use by another runner ({holder}); wait for it to "
                                  "finish or use another --run-dir") from None
            previous = os.pread(fd, 512, 0).decode(errors="replace").strip()
            if previous:
                self.notes.append(f"took over the lock left by a runner that is no longer running ({previous})")
            info = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
            os.ftruncate(fd, 0)
            os.pwrite(fd, info.encode(), 0)
            os.fsync(fd)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # releases the flock

    def _write_env(self, suite_name: str, suite_text: str, device: str, command: list[str],
                   allow_mixed_versions: bool) -> None:
        path = self.paths.env_json
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        version, _ = code_version()
        current = collect_env(device, command, suite_text)
        if not path.exists():
            current.update(suite=suite_name, started=now)
            write_atomic(path, json.dumps(current, indent=2, default=str) + "\n")
            return
        try:
            env = json.loads(path.read_text())
            started_with = env["code_version"]
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
            raise RunDirError(f"{path}: unreadable environment record ({type(err).__name__}); this run dir was not "
                              "written by this vitbench version: use a new --run-dir") from None
        if env.get("suite") != suite_name:
            raise RunDirError(f"--run-dir {self.path}: holds suite {env.get('suite')!r}, not {suite_name!r}; "
                              "use another --run-dir")
        versions = {started_with, *(r.get("code_version") for r in env.get("resumed", []))}
        if versions != {version} and not allow_mixed_versions:
            raise RunDirError(f"--run-dir {self.path}: started with code version {started_with}, this is {version}; "
                              "resuming would mix results of two code versions (pass --allow-mixed-versions to do "
                              "it anyway: every row records its code version), or use a new --run-dir")
        changed = [f"{key} {env.get(key)} -> {current.get(key)}" for key in ENVIRONMENT_KEYS
                   if str(env.get(key)) != str(current.get(key))]
        if changed and not allow_mixed_versions:
            raise RunDirError(f"--run-dir {self.path}: started in another environment ({'; '.join(changed)}); "
                              "resuming would mix two environments in one run (pass --allow-mixed-versions to do it "
                              "anyway: the report marks such runs), or use a new --run-dir")
        env.setdefault("resumed", []).append({"timestamp": now, "command": command, "code_version": version,
                                              **{key: current.get(key) for key in ENVIRONMENT_KEYS}})
        write_atomic(path, json.dumps(env, indent=2, default=str) + "\n")

    def _load_records(self) -> None:
        files = sorted(self.paths.cells_dir.glob("*.json"))
        if not files and self.paths.results_csv.exists() and self.paths.results_csv.stat().st_size:
            raise RunDirError(f"--run-dir {self.path}: has a results.csv but no per-cell records (cells/): written "
                              "by an older vitbench or copied without cells/, so it cannot be resumed; use a new "
                              "--run-dir")
        for file in files:
            try:
                record = CellRecord.from_json(file.read_text())
                if file.stem != record.spec.cell_id:
                    raise ResultsError("file name does not match the cell id")
            except (OSError, ValueError, KeyError, TypeError, RecursionError, SpecError) as err:
                file.replace(file.with_name(file.name + ".damaged"))
                self.notes.append(f"cells/{file.name} was damaged ({type(err).__name__}: {str(err)[:120]}); moved "
                                  "aside, that cell runs again")
                continue
            self.records[record.spec.cell_id] = record

    # ------------------------------------------------------------------------------------ recording

    def done_ids(self, retry_failed: bool = False) -> set[str]:
        return {cid for cid, r in self.records.items() if not (retry_failed and r.failed)}

    def record(self, spec: CellSpec, rows: list[dict]) -> CellRecord:
        """A finished cell: its own file first, then the derived results.csv."""
        record = CellRecord(spec, rows)
        write_atomic(self.paths.cell_record(spec.cell_id), record.to_json())
        self.records[spec.cell_id] = record
        self._rewrite_results()
        return record

    def _rewrite_results(self) -> None:
        rows = [row for record in self.records.values() for row in record.rows]
        if rows or self.paths.results_csv.exists():
            write_results_csv(self.paths.results_csv, rows)
