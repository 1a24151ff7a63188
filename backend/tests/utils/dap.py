"""The smallest Debug Adapter Protocol client that attaches like VS Code does:
one session per debugged process (debugpy announces each child process of
`fastapi dev`'s reloader with a `debugpyAttach` event, answered by a new
connection that attaches with the event's configuration)."""

import json
import socket
from typing import Any

Message = dict[str, Any]


class DapSession:
    def __init__(self, port: int, timeout: float = 30) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        self.seq = 0
        self.events: list[Message] = []

    def close(self) -> None:
        self.sock.close()

    def send(self, command: str, **arguments: Any) -> int:
        self.seq += 1
        body = json.dumps(
            {"seq": self.seq, "type": "request", "command": command,
             "arguments": arguments}
        ).encode()  # fmt: skip
        self.sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        return self.seq

    def read(self) -> Message:
        while b"\r\n\r\n" not in self.buffer:
            self.receive()
        header, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        length = int(header.split(b":")[1])
        while len(self.buffer) < length:
            self.receive()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        message: Message = json.loads(body)
        if message["type"] == "event":
            self.events.append(message)
        return message

    def receive(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the debug adapter closed the connection")
        self.buffer += chunk

    def response(self, seq: int) -> Message:
        while True:
            message = self.read()
            if message["type"] == "response" and message["request_seq"] == seq:
                assert message["success"], message
                return message

    def event(self, name: str, timeout: float | None = None) -> Message | None:
        """The next `name` event; None if none comes within `timeout` seconds."""
        for seen in self.events:
            if seen["event"] == name:
                self.events.remove(seen)
                return seen
        previous = self.sock.gettimeout()
        self.sock.settimeout(timeout if timeout is not None else previous)
        try:
            while True:
                message = self.read()
                if message["type"] == "event" and message["event"] == name:
                    self.events.remove(message)
                    return message
        except TimeoutError:
            return None
        finally:
            self.sock.settimeout(previous)

    def attach(
        self, breakpoints: dict[str, list[int]], **configuration: Any
    ) -> Message:
        """initialize, attach, breakpoints, configurationDone: like VS Code."""
        self.response(
            self.send("initialize", adapterID="debugpy", clientID="vscode",
                      linesStartAt1=True, columnsStartAt1=True, pathFormat="path")
        )  # fmt: skip
        attached = self.send("attach", **configuration)
        assert self.event("initialized") is not None
        for path, lines in breakpoints.items():
            answer = self.response(
                self.send("setBreakpoints", source={"path": path},
                          breakpoints=[{"line": line} for line in lines])
            )  # fmt: skip
            assert answer["body"]["breakpoints"], answer
        self.response(self.send("configurationDone"))
        return self.response(attached)
