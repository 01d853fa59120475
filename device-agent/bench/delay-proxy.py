#!/usr/bin/env python3
"""A TCP proxy for client-bench.sh: 127.0.0.1:LISTEN to 127.0.0.1:UPSTREAM, every byte from the
server delivered DELAY_MS later, in order (a link with that round trip; requests go through at
once). Standard library only.

    delay-proxy.py LISTEN UPSTREAM DELAY_MS
"""
import asyncio
import sys
import time

LISTEN, UPSTREAM, DELAY = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000


async def up(reader, writer):
    """Client to server, at once."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def down(reader, writer):
    """Server to client, each read delivered DELAY after it arrived."""
    queue = asyncio.Queue()

    async def read():
        try:
            while data := await reader.read(65536):
                await queue.put((time.monotonic() + DELAY, data))
        except (ConnectionError, OSError):
            pass
        await queue.put((time.monotonic() + DELAY, None))

    task = asyncio.ensure_future(read())
    while True:
        due, data = await queue.get()
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if data is None:
            break
        try:
            writer.write(data)
            await writer.drain()
        except (ConnectionError, OSError):
            break
    task.cancel()
    writer.close()


async def handle(client_reader, client_writer):
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", UPSTREAM)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(up(client_reader, server_writer), down(server_reader, client_writer))


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", LISTEN)
    async with server:
        await server.serve_forever()


asyncio.run(main())
