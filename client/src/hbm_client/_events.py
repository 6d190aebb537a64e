"""Server-Sent Events, read line by line (the parts of the WHATWG format the service uses:
``event``, ``data``, ``id``, comments)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Event:
    """One event: its name (``message`` unless named), its data, its id if it has one."""

    name: str
    data: str
    id: str | None


@dataclass
class EventParser:
    """Collects lines into events: ``feed`` answers an event at each blank line that ends one."""

    _name: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None

    def feed(self, line: str) -> Event | None:
        """Take one line (without its end); the event it completes, if it completes one."""
        if not line:
            if not self._data:
                self._name = ""
                return None
            event = Event(self._name or "message", "\n".join(self._data), self._id)
            self._name, self._data = "", []
            return event
        if line.startswith(":"):  # a comment: the service's heartbeat
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._name = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None
