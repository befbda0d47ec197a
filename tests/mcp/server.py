"""An MCP server for the gateway's tests, written with the Python `mcp` SDK.

It speaks MCP over stdio and records what reached it, one JSON object a line,
into the file named by `MCP_TEST_RECORD` (nothing is recorded without it):

- `{"event": "message", "method": ..., "id": ..., "t": ...}` for every
  request and notification read from stdin, as it arrives;
- `{"event": "cancelled", "request_id": ..., "t": ...}` for every
  `notifications/cancelled`, as it arrives;
- `{"event": "call", "tool": ..., "arguments": ..., "request_id": ...}` when
  a tool starts.

`t` is `time.time()` (seconds since the epoch, the wall clock the benchmark
program reads too). The record is written and flushed line by line, so a
reader sees each line as soon as it is written.

Tools: `read_file(path)` returns a fixed text naming the path;
`delete_file(path)` says it deleted it; `slow(path,
seconds)` sleeps (to be cancelled mid-call); `echo(text)` has no path.
Resource: `docs://guide/intro`. Prompt: `summarize(topic)`.
"""

import json
import os
import threading
import time

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.stdio import stdio_server
from mcp.shared._context_streams import create_context_streams

RECORD = os.environ.get("MCP_TEST_RECORD")
_lock = threading.Lock()


def record(entry: dict) -> None:
    if not RECORD:
        return
    entry.setdefault("t", time.time())
    line = json.dumps(entry, default=str)
    with _lock, open(RECORD, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()


server = MCPServer("files")


@server.tool()
def read_file(path: str) -> str:
    """Returns the content of a file (a fixed text naming it)."""
    return f"content of {path}"


@server.tool()
async def slow(path: str, seconds: float, ctx: Context) -> str:
    """Works on a file for `seconds`, then returns."""
    record({"event": "call", "tool": "slow", "arguments": {"path": path}, "request_id": ctx.request_id})
    await anyio.sleep(seconds)
    return f"slow work on {path} done"


@server.tool()
def delete_file(path: str) -> str:
    """Deletes a file (only says so)."""
    return f"deleted {path}"


@server.tool()
def echo(text: str) -> str:
    """Returns its text."""
    return text


@server.resource("docs://guide/intro")
def guide_intro() -> str:
    """The introduction of the guide."""
    return "the guide's introduction"


@server.prompt()
def summarize(topic: str) -> str:
    """Asks for a summary of a topic."""
    return f"Summarize {topic}."


def _plain(message) -> dict:
    """The JSON-RPC message as a dict (requests, notifications, replies)."""
    try:
        return message.model_dump(by_alias=True, mode="json", exclude_none=True)
    except AttributeError:
        return {}


async def main() -> None:
    async with stdio_server() as (read_stream, write_stream):
        # Every message read from stdin is recorded before the SDK sees it.
        tee_writer, tee_reader = create_context_streams(0)

        async def tee() -> None:
            async with tee_writer:
                async for item in read_stream:
                    if not isinstance(item, Exception):
                        m = _plain(item.message)
                        method = m.get("method")
                        if method == "notifications/cancelled":
                            params = m.get("params") or {}
                            record({"event": "cancelled", "request_id": params.get("requestId")})
                        elif method is not None:
                            record({"event": "message", "method": method, "id": m.get("id")})
                            if method == "tools/call":
                                params = m.get("params") or {}
                                record(
                                    {
                                        "event": "tools/call",
                                        "tool": params.get("name"),
                                        "arguments": params.get("arguments"),
                                        "request_id": m.get("id"),
                                    }
                                )
                    await tee_writer.send(item)

        low = server._lowlevel_server
        async with anyio.create_task_group() as tg:
            tg.start_soon(tee)
            await low.run(tee_reader, write_stream, low.create_initialization_options())
            tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main)
