"""The cluster's task list: UPIDs as PVE builds them, the end of a task with
its exit status and log line, and the history kept.

Every operation that PVE runs as a worker (migrations, HA requests, guest
starts, backups) gets a task here, so a client following a UPID sees what it
would see on PVE. Finished tasks beyond `task_history` are forgotten in
batches, oldest first; running ones are always kept.
"""

from __future__ import annotations

from pvesim.state import Task
from pvesim.world import World

HZ = 100  # kernel clock ticks per second (pstart is in ticks since boot)
ROOT = "root@pam"  # the user of what the cluster starts by itself


class Tasks:
    def __init__(self, world: World) -> None:
        self.w = world
        self.items: list[Task] = []  # oldest first
        self._index: dict[str, Task] = {}

    def find(self, upid: str) -> Task | None:
        return self._index.get(upid)

    def new(self, node: str, ttype: str, tid: str, user: str) -> Task:
        w = self.w
        n = w.nodes[node]
        start = int(w.now)
        pid = w.new_pid()
        pstart = int((w.now - n.boot_time) * HZ) & 0xFFFFFFFF
        upid = f"UPID:{node}:{pid:08X}:{pstart:08X}:{start:08X}:{ttype}:{tid}:{user}:"
        while upid in self._index:  # same second, same pid: PVE cannot collide either
            pid += 1
            upid = f"UPID:{node}:{pid:08X}:{pstart:08X}:{start:08X}:{ttype}:{tid}:{user}:"
        task = Task(upid, node, ttype, tid, user, pid, pstart, start)
        self.items.append(task)
        self._index[upid] = task
        if len(self.items) > w.params.task_history * 2:
            keep_from = len(self.items) - w.params.task_history
            old = [x for x in self.items[:keep_from] if not x.running]
            for x in old:
                self._index.pop(x.upid, None)
            olds = {id(x) for x in old}
            self.items = [x for x in self.items if id(x) not in olds]
        return task

    def end(self, task: Task, status: str) -> None:
        if task.running:
            task.endtime = max(int(self.w.now), task.starttime)
            task.exitstatus = status
            if status == "OK":
                task.log.append("TASK OK")
            else:
                task.log.append(f"TASK ERROR: {status}")

    def end_running_on(self, node: str, status: str) -> None:
        """The node died: its running workers end with `status`."""
        for t in self.items:
            if t.running and t.node == node:
                self.end(t, status)
