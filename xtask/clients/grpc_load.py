#!/usr/bin/env python3
"""A gRPC load client for `cargo xtask serve --grpc`, written against grpcio alone (no protoc,
no generated code): it calls /degrade.bench.Work/Call with raw bytes (an empty `Work` message)
and reports what came back, by status, from the client's side.

    pip install grpcio
    cargo xtask serve --grpc --addr 127.0.0.1:50051 --duration 40 &
    python3 xtask/clients/grpc_load.py --target 127.0.0.1:50051 --rate 600 --duration 20
    python3 xtask/clients/grpc_load.py --target 127.0.0.1:50051 --concurrency 64 --duration 20

Open loop (`--rate R`): calls start as a Poisson process of R calls per second, whatever the
answers (the overload bench's clients). Closed loop (`--concurrency C`): C callers that send
again as soon as they are answered (wrk's way). Each call carries an `x-priority` of the
bench's mix (critical 10 %, high 20 %, normal 30 %, low 25 %, background 15 %) unless
`--priority P` fixes one. `--channels N` spreads the calls over N HTTP/2 connections (default
1: every call a stream of one connection).

The report: calls by status code; for OK calls the client-side latency p50/p99 and the share
of critical calls answered OK; for refused calls (UNAVAILABLE, RESOURCE_EXHAUSTED) whether
they carried a `google.rpc.RetryInfo` detail and its delay. Exit status 1 if any call ended
with a status other than OK, UNAVAILABLE or RESOURCE_EXHAUSTED, or with no status at all.
"""

import argparse
import asyncio
import random
import sys
import time

import grpc

METHOD = "/degrade.bench.Work/Call"
MIX = [("critical", 0.10), ("high", 0.20), ("normal", 0.30), ("low", 0.25), ("background", 0.15)]
REFUSED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


def varint(data, i):
    """Reads a protobuf varint at data[i]: (value, next index)."""
    value, shift = 0, 0
    while i < len(data):
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
    raise ValueError("truncated varint")


def fields(data):
    """The (field number, wire type, value) of a protobuf message, length-delimited values as
    bytes; enough to read google.rpc.Status without generated code."""
    i = 0
    while i < len(data):
        key, i = varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(data, i)
        elif wire == 2:
            length, i = varint(data, i)
            value, i = data[i:i + length], i + length
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        yield number, wire, value


def retry_delay(trailing):
    """The RetryInfo delay (seconds) in a call's `grpc-status-details-bin`, or None."""
    for key, value in trailing or ():
        if key != "grpc-status-details-bin":
            continue
        for number, _, detail in fields(value):
            if number != 3:  # google.rpc.Status.details: repeated google.protobuf.Any
                continue
            type_url, payload = "", b""
            for n, _, v in fields(detail):
                if n == 1:
                    type_url = v.decode()
                elif n == 2:
                    payload = v
            if type_url.endswith("google.rpc.RetryInfo"):
                for n, _, duration in fields(payload):
                    if n == 1:  # retry_delay: google.protobuf.Duration
                        seconds = nanos = 0
                        for m, _, v in fields(duration):
                            if m == 1:
                                seconds = v
                            elif m == 2:
                                nanos = v
                        return seconds + nanos / 1e9
    return None


class Tally:
    def __init__(self):
        self.codes = {}
        self.ok_latencies = []
        self.critical = [0, 0]  # sent, answered OK
        self.retry = {}  # delay (s) or None -> count, over refused calls
        self.bad = 0
        self.started = time.perf_counter()
        self.critical_refused_at = []  # seconds since the start, when each was sent

    def add(self, priority, code, sent, latency, trailing):
        self.codes[code] = self.codes.get(code, 0) + 1
        if priority == "critical":
            self.critical[0] += 1
            if code != grpc.StatusCode.OK:
                self.critical_refused_at.append((sent - self.started, latency))
        if code == grpc.StatusCode.OK:
            self.ok_latencies.append(latency)
            if priority == "critical":
                self.critical[1] += 1
        elif code in REFUSED:
            delay = retry_delay(trailing)
            self.retry[delay] = self.retry.get(delay, 0) + 1
        else:
            self.bad += 1


def pick(fixed):
    if fixed:
        return fixed
    r, acc = random.random(), 0.0
    for name, share in MIX:
        acc += share
        if r < acc:
            return name
    return MIX[-1][0]


async def one(stub, tally, priority, timeout):
    start = time.perf_counter()
    call = stub(b"", metadata=(("x-priority", priority),), timeout=timeout)
    try:
        await call
        code = grpc.StatusCode.OK
    except grpc.aio.AioRpcError as err:
        code = err.code()
    trailing = await call.trailing_metadata()
    tally.add(priority, code, start, time.perf_counter() - start, trailing)


def quantile(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="127.0.0.1:50051")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--rate", type=float, help="open loop: calls per second (Poisson)")
    mode.add_argument("--concurrency", type=int, help="closed loop: callers")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--priority", choices=[m[0] for m in MIX])
    p.add_argument("--timeout", type=float, default=10.0, help="each call's deadline (s)")
    a = p.parse_args()
    if a.rate is None and a.concurrency is None:
        a.concurrency = 64
    channels = [
        grpc.aio.insecure_channel(a.target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(max(1, a.channels))
    ]
    stubs = [
        ch.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        for ch in channels
    ]
    tally = Tally()
    started = tally.started = time.perf_counter()
    end = started + a.duration
    if a.rate:
        pending, n = set(), 0
        next_at = time.perf_counter()
        while True:
            next_at += random.expovariate(a.rate)
            if next_at >= end:
                break
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(stubs[n % len(stubs)], tally, pick(a.priority), a.timeout))
            pending.add(task)
            task.add_done_callback(pending.discard)
            n += 1
        if pending:
            await asyncio.gather(*pending)
    else:
        async def caller(i):
            while time.perf_counter() < end:
                await one(stubs[i % len(stubs)], tally, pick(a.priority), a.timeout)

        await asyncio.gather(*(caller(i) for i in range(a.concurrency)))
    elapsed = time.perf_counter() - started
    for ch in channels:
        await ch.close()

    total = sum(tally.codes.values())
    ok = tally.codes.get(grpc.StatusCode.OK, 0)
    print(f"calls: {total} over {a.duration:.0f} s ({total / a.duration:.0f}/s offered)")
    for code, count in sorted(tally.codes.items(), key=lambda kv: -kv[1]):
        print(f"  {code.name:<20} {count:>8}  {100.0 * count / max(total, 1):5.1f} %")
    print(
        f"OK: {ok / elapsed:.0f}/s (over the {elapsed:.1f} s until the last answer), client-side p50 {1e3 * quantile(tally.ok_latencies, 0.5):.1f} ms,"
        f" p99 {1e3 * quantile(tally.ok_latencies, 0.99):.1f} ms"
    )
    sent, served = tally.critical
    if sent:
        print(f"critical answered OK: {served} of {sent} ({100.0 * served / sent:.2f} %)")
        if tally.critical_refused_at:
            at = ", ".join(
                f"{t:.3f} (after {1e3 * l:.0f} ms)" for t, l in sorted(tally.critical_refused_at)[:10]
            )
            print(f"  critical not OK, sent at (s from the start): {at}")
    if tally.retry:
        parts = ", ".join(
            f"{'none' if d is None else f'{d:g} s'}: {c}" for d, c in sorted(tally.retry.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
        )
        print(f"refused calls by RetryInfo delay: {parts}")
    if tally.bad:
        print(f"{tally.bad} calls ended with another status", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
