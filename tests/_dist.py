"""The multi-process harness of the distributed tests: gloo on 127.0.0.1, bounded in time,
always torn down."""

import contextlib
import datetime
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gloo_group(rank: int, world_size: int, port: int, timeout_s: float):
    """In a worker: join the gloo group on 127.0.0.1:port, yield WORLD, always destroy it."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def spawn(worker, args: tuple, nprocs: int, timeout_s: float) -> None:
    """Run ``worker(rank, *args)`` in ``nprocs`` spawned processes; fail the test if one raises
    or they are not all done within ``timeout_s``; never leave a process behind."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this torch build")
    ctx = mp.start_processes(worker, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=1):   # raises ProcessRaisedException when a worker fails
            if time.monotonic() > deadline:
                pytest.fail(f"distributed workers did not finish within {timeout_s} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)
