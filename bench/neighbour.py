"""A CPU-bound neighbour: what a second training job does to the machine, for load measurements.

    python -m bench.neighbour --seconds 1800 &

A small MLP trained with torch's defaults (one intra-op thread per core, the default OpenMP wait
policy), like a second training job a user starts beside ours. It stops after --seconds.
"""

from __future__ import annotations

import argparse
import time

import torch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="stop after this many seconds")
    args = parser.parse_args(argv)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 2048), torch.nn.GELU(), torch.nn.Linear(2048, 1024))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(64, 1024)
    end, steps = time.monotonic() + args.seconds, 0
    while time.monotonic() < end:
        loss = model(x).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        steps += 1
    print(f"neighbour: {steps} steps in {args.seconds:.0f} s")


if __name__ == "__main__":
    main()
