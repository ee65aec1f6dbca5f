"""A Sparkplug B edge node built with pysparkplug, driven line by line on stdin.

Runs under its own interpreter (pysparkplug needs paho-mqtt 1.x); see tests/test_sparkplug.py.
Commands: `ndata N`, `ddata N` (alias-only data), `ddeath`, `die` (exit without DISCONNECT, so
the broker publishes the NDEATH will). A rebirth request (NCMD Node Control/Rebirth) publishes
the births again. Each command answers `done` on stdout; births answer `born`.
"""

import itertools
import os
import sys
import threading

import pysparkplug as spb

GROUP, NODE, DEVICE = "plant1", "edge-7", "pump1"
BASE_MS = 1_700_000_000_000
lock = threading.Lock()


class Seq:
    """The node's message counter, 0 again at each birth."""

    counter = itertools.count()

    @classmethod
    def restart(cls) -> None:
        cls.counter = itertools.count()


def next_seq() -> int:
    return next(Seq.counter) % 256


def node_metrics(ts: int, bd_seq: int) -> tuple[spb.Metric, ...]:
    return (
        spb.Metric(
            timestamp=ts,
            name="Inputs/Temperature",
            datatype=spb.DataType.DOUBLE,
            value=20.0,
            alias=1,
        ),
        spb.Metric(
            timestamp=ts, name="Inputs/Pressure", datatype=spb.DataType.INT32, value=-5, alias=2
        ),
        spb.Metric(
            timestamp=ts, name="Running", datatype=spb.DataType.BOOLEAN, value=True, alias=3
        ),
        spb.Metric(
            timestamp=ts, name="Line", datatype=spb.DataType.STRING, value="line-A", alias=4
        ),
        spb.Metric(
            timestamp=ts,
            name="Node Control/Rebirth",
            datatype=spb.DataType.BOOLEAN,
            value=False,
            alias=5,
        ),
        spb.Metric(timestamp=ts, name="bdSeq", datatype=spb.DataType.INT64, value=bd_seq),
    )


def device_metrics(ts: int) -> tuple[spb.Metric, ...]:
    return (
        spb.Metric(timestamp=ts, name="Flow", datatype=spb.DataType.FLOAT, value=1.5, alias=10),
        spb.Metric(timestamp=ts, name="Level", datatype=spb.DataType.INT16, value=-300, alias=11),
    )


def topic(kind: spb.MessageType, device: str | None = None) -> spb.Topic:
    return spb.Topic(message_type=kind, group_id=GROUP, edge_node_id=NODE, device_id=device)


def publish(
    client: spb.Client, kind: spb.MessageType, payload: object, device: str | None = None
) -> None:
    client.publish(
        spb.Message(topic(kind, device), payload, spb.QoS.AT_LEAST_ONCE, False), include_dtypes=True
    )


def births(client: spb.Client, bd_seq: int) -> None:
    with lock:
        Seq.restart()
        publish(
            client,
            spb.MessageType.NBIRTH,
            spb.NBirth(BASE_MS, next_seq(), node_metrics(BASE_MS, bd_seq)),
        )
        publish(
            client,
            spb.MessageType.DBIRTH,
            spb.DBirth(BASE_MS, next_seq(), device_metrics(BASE_MS)),
            DEVICE,
        )
    print("born", flush=True)


def main() -> None:
    port = int(sys.argv[1])
    bd_seq = int(sys.argv[2])
    client = spb.Client(client_id=f"{NODE}-{bd_seq}")
    death = spb.NDeath(
        BASE_MS,
        spb.Metric(timestamp=BASE_MS, name="bdSeq", datatype=spb.DataType.INT64, value=bd_seq),
    )
    client.set_will(spb.Message(topic(spb.MessageType.NDEATH), death, spb.QoS.AT_LEAST_ONCE, False))

    def on_command(_client: spb.Client, message: spb.Message) -> None:
        if any(m.name == "Node Control/Rebirth" and m.value for m in message.payload.metrics):
            births(client, bd_seq)

    client.subscribe(topic(spb.MessageType.NCMD), spb.QoS.AT_LEAST_ONCE, on_command)
    client.connect("127.0.0.1", port=port, blocking=False, callback=lambda c: births(c, bd_seq))
    for line in sys.stdin:
        command, *args = line.split()
        if command == "die":
            os._exit(0)
        with lock:
            if command == "ndata":
                for i in range(int(args[0])):
                    ts = BASE_MS + (i + 1) * 1000
                    metrics = (
                        spb.Metric(
                            timestamp=ts,
                            name=None,
                            datatype=spb.DataType.DOUBLE,
                            value=20.0 + i / 2,
                            alias=1,
                        ),
                        spb.Metric(
                            timestamp=ts, name=None, datatype=spb.DataType.INT32, value=-i, alias=2
                        ),
                    )
                    publish(client, spb.MessageType.NDATA, spb.NData(ts, next_seq(), metrics))
            elif command == "ddata":
                for i in range(int(args[0])):
                    ts = BASE_MS + (i + 1) * 1000
                    flow = (
                        spb.Metric(
                            timestamp=ts,
                            name=None,
                            datatype=spb.DataType.FLOAT,
                            value=2.0 + i,
                            alias=10,
                        ),
                    )
                    publish(client, spb.MessageType.DDATA, spb.DData(ts, next_seq(), flow), DEVICE)
            elif command == "ddeath":
                publish(client, spb.MessageType.DDEATH, spb.DDeath(BASE_MS, next_seq()), DEVICE)
        print("done", flush=True)


main()
