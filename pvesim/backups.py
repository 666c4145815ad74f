"""Backup jobs (vzdump): their schedules, and runs that lock one guest at a
time.

A job fires at each match of its calendar schedule (or when started by
hand or by a scenario event) and runs one `vzdump` task per node that has
guests in it. The task takes its guests in vmid order, holds the `backup`
lock on each for `seconds_per_guest`, and logs a locked guest as an error
instead of waiting; the task ends with `job errors` if any guest failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pvesim.protocol import SimError
from pvesim.schedule import next_run
from pvesim.state import BackupJob, Task
from pvesim.tasks import ROOT, Tasks
from pvesim.world import World


@dataclass
class BackupRun:
    job: str
    node: str
    task: Task
    queue: list[int]
    current: int | None = None
    current_end: float = 0.0
    per: float = 60.0  # seconds per guest
    errors: list[str] = field(default_factory=list)


class Backups:
    def __init__(self, world: World, tasks: Tasks) -> None:
        self.w = world
        self.tasks = tasks
        self.jobs: list[BackupJob] = []
        self._next: dict[str, float] = {}
        self._runs: list[BackupRun] = []

    def add_job(self, job: BackupJob) -> None:
        self.jobs.append(job)
        self._next[job.id] = next_run(job.schedule, self.w.now)

    def next_run(self, job_id: str) -> float:
        return self._next[job_id]

    def start(self, job_id: str | None = None, node: str | None = None) -> list[str]:
        """Run a backup job now (or an ad-hoc vzdump of every guest on
        `node`); returns the vzdump UPIDs, one per node."""
        w = self.w
        job = None
        if job_id is not None:
            job = next((j for j in self.jobs if j.id == job_id), None)
            if job is None:
                raise SimError(f"backup job '{job_id}' does not exist", 404)
        upids = []
        for n in w.nodes.values():
            if not n.reachable:
                continue
            if (node and n.name != node) or (job and job.node and n.name != job.node):
                continue
            vmids = sorted(
                g.vmid
                for g in w.guests_on(n.name)
                if not g.template and (job is None or job.vmids is None or g.vmid in job.vmids)
            )
            if not vmids:
                continue
            task = self.tasks.new(n.name, "vzdump", "", ROOT)
            task.log.append(f"INFO: starting new backup job: vzdump {' '.join(map(str, vmids))}")
            per = job.seconds_per_guest if job else 60.0
            run = BackupRun(job.id if job else "", n.name, task, vmids, None, w.now, per)
            self._runs.append(run)
            self._step(run)
            upids.append(task.upid)
        return upids

    def _step(self, run: BackupRun) -> None:
        w = self.w
        per = run.per
        if run.current is not None:
            g = w.guests.get(run.current)
            if g is not None and g.lock == "backup":
                g.lock = None
            run.task.log.append(f"INFO: Finished Backup of VM {run.current}")
            run.current = None
        while run.queue:
            vmid = run.queue.pop(0)
            g = w.guests.get(vmid)
            if g is None or g.node != run.node:
                continue
            if g.lock:
                run.errors.append(vmid_err := f"VM {vmid} - VM is locked ({g.lock})")
                run.task.log.append(f"ERROR: Backup of VM {vmid} failed - {vmid_err}")
                continue
            g.lock = "backup"
            run.current = vmid
            run.current_end = w.now + per
            run.task.log.append(f"INFO: Starting Backup of VM {vmid} (qemu)")
            return
        self._runs.remove(run)
        self.tasks.end(run.task, "job errors" if run.errors else "OK")

    def drop_node(self, node: str) -> None:
        """`node` lost power: its runs are gone (their tasks end with it)."""
        self._runs = [r for r in self._runs if r.node != node]

    def wakes(self) -> list[float]:
        out = list(self._next.values())
        out.extend(r.current_end for r in self._runs)
        return out

    def due(self, t: float) -> None:
        """Start the jobs whose schedule fires by `t`, then move each run on
        to its next guest when the current one is done."""
        eps = 1e-9
        for job in self.jobs:
            nxt = self._next[job.id]
            if nxt <= t + eps:
                self._next[job.id] = next_run(job.schedule, nxt)
                if job.enabled:
                    self.start(job.id)
        for run in list(self._runs):
            if run.current_end <= t + eps:
                self._step(run)
