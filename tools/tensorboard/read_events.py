"""Reads a training run's TensorBoard event files with TensorBoard's own loader and prints every
scalar as JSON: {"tag": [[step, value], ...], ...}. Used by the integration test that checks
`lapidary train --report-to tensorboard` writes what TensorBoard reads.

Usage: read_events.py RUN_DIR   (the directory holding events.out.tfevents.* files; a resumed
run's files are read together, as TensorBoard reads one run)."""

import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main():
    acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        out[tag] = [[e.step, e.value] for e in acc.Scalars(tag)]
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
