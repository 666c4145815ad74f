"""Which cycle sentences reach the journal, and at which level.

Without this, a problem that lasts writes the same WARNING every cycle: an
API that is down for an hour at the default 5 s interval is 720 lines, a
bad token ~17,000 a day per node, and the one line that says when it began
scrolls away. The journal instead tells each problem as an *episode*:

- its first cycle is logged at its level (WARNING, or ERROR with the
  traceback of our own bug), once;
- the cycles that repeat it go to DEBUG (`-v`), with a counter;
- its end is one INFO line with the duration and the count, e.g.
  `PVE API reachable again after 4 min, 48 cycles failed` (for an API
  failure always; for other problems once they lasted two cycles or more,
  so a one-off event such as a failed migration is one line).

An episode is a run of consecutive problem cycles with the same *key*:
the wording of the sentence without its numbers (`sentence_kind`) and the
guest it is about (field `vmid`), or, for the API, "the API" as a whole,
so an outage whose failing request or cause changes on the way stays one
episode. A new cause within it (refused, then
a refused token) is logged once more, at WARNING, as it is news. A role
change reported in the same cycle (field `election`, the sentence's
prefix) is not part of the key.

Ordinary sentences (INFO) are logged when their wording changes and
repeated at most every `heartbeat` seconds; the rest go to DEBUG.

Pure: the daemon feeds each cycle's result and logs the lines it gets back.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

HEARTBEAT = 300.0
"""Seconds after which an unchanged INFO sentence is logged again."""


def sentence_kind(sentence: str) -> str:
    """The wording of a sentence without its numbers (for de-duplication)."""
    return re.sub(r"[-+]?\d[\d.:]*", "#", sentence)


def duration(seconds: float) -> str:
    """`45 s`, `4 min`, `2.5 h`: as an operator says it."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def cycles(n: int) -> str:
    return f"{n} cycle" if n == 1 else f"{n} cycles"


@dataclass(frozen=True)
class Line:
    """One journal entry to write."""

    level: int
    text: str
    fields: Mapping[str, object] = field(default_factory=dict)
    error: BaseException | None = None


@dataclass
class Episode:
    key: str
    since: float
    first: str
    end: str
    """How its end is told: a format with {duration}, {cycles}, {first}."""
    cycles: int = 1
    causes: set[str] = field(default_factory=set)
    end_after: int = 1
    """Cycles it must have lasted for its end to be told: a one-off event
    (a migration that failed) has no end worth a line; an outage has."""


API_END = "PVE API reachable again after {duration}, {cycles} failed"
PLAIN_END = "resolved after {duration} ({cycles}): {first}"


class Episodes:
    """The open episode of one stream of problems (cycle sentences, cycle
    overruns), and the lines that tell it."""

    def __init__(self) -> None:
        self.current: Episode | None = None

    def problem(self, now: float, sentence: str, level: int,
                fields: Mapping[str, object] | None = None,
                error: BaseException | None = None, *, key: str | None = None,
                cause: str | None = None, end: str = PLAIN_END,
                end_after: int = 2) -> list[Line]:
        """A cycle with a problem. `key` groups cycles into one episode
        (default: the sentence without numbers); `cause` (e.g. the kind of
        API failure) is logged again when it changes within the episode."""
        fields = dict(fields or {})
        key = key if key is not None else sentence_kind(sentence)
        ep = self.current
        if ep is not None and ep.key == key:
            ep.cycles += 1
            since = duration(now - ep.since)
            if cause is not None and cause not in ep.causes:
                ep.causes.add(cause)
                return [Line(level, f"{sentence} (for {since}, {cycles(ep.cycles)})", fields)]
            return [Line(logging.DEBUG, f"{sentence} (again: {cycles(ep.cycles)} in {since})",
                         fields)]
        out = self.clear(now, fields)
        self.current = Episode(key=key, since=now, first=sentence, end=end,
                               causes={cause} if cause is not None else set(),
                               end_after=end_after)
        out.append(Line(level, sentence, fields, error))
        return out

    def clear(self, now: float, fields: Mapping[str, object] | None = None) -> list[Line]:
        """A cycle without this problem: the end line if an episode was open."""
        ep = self.current
        if ep is None:
            return []
        self.current = None
        if ep.cycles < ep.end_after:
            return []
        text = ep.end.format(duration=duration(now - ep.since), cycles=cycles(ep.cycles),
                             first=ep.first)
        return [Line(logging.INFO, text, {**(fields or {}), "episode_cycles": ep.cycles})]


class CycleJournal:
    """The journal lines of each cycle's sentence (see the module docstring)."""

    def __init__(self, heartbeat: float = HEARTBEAT) -> None:
        self.heartbeat = heartbeat
        self.episodes = Episodes()
        self._last_kind = ""
        self._last_logged = float("-inf")

    def lines(self, now: float, sentence: str, level: int,
              fields: Mapping[str, object] | None = None,
              error: BaseException | None = None) -> list[Line]:
        fields = dict(fields or {})
        if level >= logging.WARNING:
            self._last_kind = ""  # the next ordinary sentence is news
            api = fields.get("problem")
            if isinstance(api, str) and api:
                return self.episodes.problem(now, sentence, level, fields, error, key="api",
                                             cause=api, end=API_END, end_after=1)
            # A role change of the same cycle ("became leader; ...") is not
            # part of the problem's wording.
            news = fields.get("election")
            own = sentence.removeprefix(f"{news}; ") if isinstance(news, str) else sentence
            # About one guest (a failed migration): another guest is another
            # event, even though only the numbers of the wording differ.
            guest = f" [vm {fields['vmid']}]" if "vmid" in fields else ""
            return self.episodes.problem(now, sentence, level, fields, error,
                                         key=sentence_kind(own) + guest)
        # A cycle that only read facts it had not yet (a term began, or a
        # slow API let it read one more) shows that the API answers, but
        # not that another problem ended (a spent time budget): such an
        # episode stays open until a cycle decides.
        ep = self.episodes.current
        reading = fields.get("result") == "reading"
        out = [] if reading and ep is not None and ep.key != "api" else \
            self.episodes.clear(now, {"role": fields.get("role")} if "role" in fields else {})
        kind = sentence_kind(sentence)
        if level == logging.INFO and not out and kind == self._last_kind and \
                now - self._last_logged < self.heartbeat:
            level = logging.DEBUG
        else:
            self._last_kind = kind
            self._last_logged = now
        out.append(Line(level, sentence, fields, error))
        return out
