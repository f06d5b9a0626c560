"""WHEP POST bursts: the appliance beside the floor of its own web stack.

Issue 10 asks for POST -> 201 p95 <= 20 ms over a burst of 50 simultaneous
POSTs. This measures the appliance (lean transport, a real offer per POST
from bench/loadgen, every POST on a fresh TCP connection as a phone makes it)
and, in the same run on the same machine, two servers that do nothing but
answer such a POST with a constant: a bare Quart-Trio route and a bare ASGI
callable, both on hypercorn under trio, the stack the appliance is built on.
Their numbers are the floor no handler on that stack can go under.

Each burst: N connections opened at the same moment, the request sent,
the time to the whole response taken per connection; the server process's
CPU time over the burst divided by N is its cost per POST. Before the
bursts, on fresh starts of the appliance, the very first POST alone is
timed against the next 29 alone (issue 11: the first listener is as fast
as the hundredth).

    .venv/bin/python bench/post_burst.py [--posts 50] [--bursts 5] [--starts 3]
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import textwrap
from pathlib import Path

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.lean_bench import (  # noqa: E402
    TOKEN, free_port, pct, proc_sample, running_appliance, stop_process, thread_cpu,
)

FLOOR_APP = textwrap.dedent("""
    import signal, sys, trio
    from hypercorn.config import Config
    from hypercorn.trio import serve
    if sys.argv[1] == "quart":
        from quart import Response, request
        from quart_trio import QuartTrio
        app = QuartTrio("floor")
        @app.route("/api/whep/<sink_id>", methods=["POST"])
        async def post(sink_id):
            await request.get_data()
            response = Response("v=0\\r\\n", status=201, content_type="application/sdp")
            response.headers["Location"] = f"/api/whep/{sink_id}/session"
            return response
    else:
        async def app(scope, receive, send):
            if scope["type"] == "lifespan":
                while True:
                    message = await receive()
                    await send({"type": message["type"] + ".complete"})
                    if message["type"] == "lifespan.shutdown":
                        return
            while (await receive()).get("more_body"):
                pass
            await send({"type": "http.response.start", "status": 201,
                        "headers": [(b"content-type", b"application/sdp"),
                                    (b"location", b"/api/whep/main/session")]})
            await send({"type": "http.response.body", "body": b"v=0\\r\\n"})
    config = Config()
    config.bind = [f"127.0.0.1:{sys.argv[2]}"]
    config.loglevel = "warning"
    async def stopped():  # SIGINT ends it quietly, as the appliance's own handler does
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            async for _ in signals:
                return
    trio.run(lambda: serve(app, config, shutdown_trigger=stopped))
""")


async def read_response(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise EOFError("the server closed the connection before answering")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                   if line.split(b":", 1)[0].strip().lower() == b"content-length"), 0)
    while len(body) < length:
        body += await stream.receive_some(65536)
    return head.split(b" ", 2)[1]


async def burst(port: int, requests: list[bytes], pid: int,
                threads: dict[str, float] | None = None) -> tuple[list[float], float, set]:
    """Every request on its own fresh connection, all released at once.
    ``threads``, if given, gets the server's CPU seconds by thread name added."""
    go = trio.Event()
    times: list[float] = []
    statuses: set[bytes] = set()

    async def one(request: bytes) -> None:
        await go.wait()
        t0 = trio.current_time()
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            statuses.add(await read_response(stream))
        times.append((trio.current_time() - t0) * 1000)

    before, by_thread = proc_sample(pid)[0], thread_cpu(pid)
    async with trio.open_nursery() as nursery:
        for request in requests:
            nursery.start_soon(one, request)
        await trio.testing.wait_all_tasks_blocked()
        go.set()
    if threads is not None:
        for name, seconds in thread_cpu(pid).items():
            threads[name] = threads.get(name, 0.0) + seconds - by_thread.get(name, 0.0)
    return times, (proc_sample(pid)[0] - before) * 1000 / len(requests), statuses


def post_request(body: bytes) -> bytes:
    return (b"POST /api/whep/main HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/sdp\r\nAuthorization: Bearer " + TOKEN.encode() +
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


async def wait_listening(port: int) -> None:
    with trio.fail_after(30):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return


def report(name: str, rows: list[tuple[list[float], float, set]]) -> None:
    for i, (times, cpu, statuses) in enumerate(rows):
        label = "first burst" if i == 0 else f"burst {i + 1}"
        print(f"  {name:<22} {label:<11} POST->201 p50 {statistics.median(times):6.1f} ms "
              f"p95 {pct(times, 95):6.1f} ms  CPU {cpu:.2f} ms/POST  "
              f"statuses {sorted(s.decode() for s in statuses)}", flush=True)


async def first_alone(args: argparse.Namespace) -> None:
    """The very first POST after start, alone, against the next ones alone:
    what is loaded or made once must not land on the first listener."""
    for _ in range(args.starts):
        async with running_appliance("lean", 40, workers=1) as (process, url, loadgen):
            port = int(url.rsplit(":", 1)[1])
            times = []
            for ident in range(1, 31):
                request = post_request((await loadgen.offer(ident)).encode())
                times.append((await burst(port, [request], process.pid, {}))[0][0])
            rest = times[1:]
            print(f"  appliance (lean)       first POST after start {times[0]:5.1f} ms; "
                  f"the next {len(rest)}, one at a time: p50 {statistics.median(rest):.1f} "
                  f"ms p95 {pct(rest, 95):.1f} ms", flush=True)


async def main_async(args: argparse.Namespace) -> None:
    await first_alone(args)
    async with running_appliance("lean", args.posts * args.bursts + 10,
                                 workers=1) as (process, url, loadgen):
        port = int(url.rsplit(":", 1)[1])
        rows, ident, threads = [], 0, {}
        for _ in range(args.bursts):
            requests = []
            for _ in range(args.posts):
                ident += 1
                requests.append(post_request((await loadgen.offer(ident)).encode()))
            rows.append(await burst(port, requests, process.pid, threads))
        report("appliance (lean)", rows)
        # the main thread runs trio (the web stack, sessions); "ae-*" are the engine's
        posts = args.posts * args.bursts
        print("  appliance CPU by thread over all bursts, ms/POST: " + ", ".join(
            f"{name} {seconds * 1000 / posts:.2f}" for name, seconds in
            sorted(threads.items(), key=lambda item: -item[1]) if seconds > 0), flush=True)
    offer = post_request(b"v=0\r\n" * 200)
    for kind in ("quart", "asgi"):
        port = free_port(socket.SOCK_STREAM)
        process = await trio.lowlevel.open_process([sys.executable, "-c", FLOOR_APP, kind,
                                                    str(port)])
        try:
            await wait_listening(port)
            rows = [await burst(port, [offer] * args.posts, process.pid)
                    for _ in range(args.bursts)]
            report(f"floor: bare {'Quart-Trio' if kind == 'quart' else 'ASGI'}", rows)
        finally:
            await stop_process(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=50)
    parser.add_argument("--bursts", type=int, default=5)
    parser.add_argument("--starts", type=int, default=3,
                        help="appliance starts for the first-POST-alone measurement")
    args = parser.parse_args()
    print(f"{args.bursts} bursts of {args.posts} simultaneous POSTs, each on a fresh "
          f"connection; load average {os.getloadavg()[0]:.1f}", flush=True)
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
