"""Checkpoint schedules: which training steps get saved.

Development happens early and fast, so schedules are dense early: a union of
log-spaced steps, evenly spaced steps and explicit ranges. Written as a
string so it fits on a command line and in a config file::

    "log:40,linear:20"                      40 log-spaced + 20 evenly spaced steps
    "0,100,200-10000/200,10400-20000/400"   explicit steps and start-stop/stride ranges
    "log:30,linear:10,250,500"              any mix of the above

Step 0 (the initialisation) and the final step are always included.
"""

from __future__ import annotations

import numpy as np


class ScheduleError(ValueError):
    pass


def checkpoint_steps(spec: str, n_steps: int) -> list[int]:
    if n_steps < 1:
        raise ScheduleError(f"n_steps must be positive, got {n_steps}")
    steps = {0, n_steps}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            if part.startswith("log:"):
                k = int(part[4:])
                steps.update(int(round(s)) for s in np.geomspace(1, n_steps, k))
            elif part.startswith("linear:"):
                k = int(part[7:])
                steps.update(int(round(s)) for s in np.linspace(0, n_steps, k + 1))
            elif "-" in part:
                bounds, _, stride = part.partition("/")
                start, stop = (int(x) for x in bounds.split("-"))
                steps.update(range(start, stop + 1, int(stride or 1)))
            else:
                steps.add(int(part))
        except ValueError as e:
            raise ScheduleError(
                f"cannot read checkpoint schedule item {part!r} in {spec!r}: use 'log:K', 'linear:K', "
                "'START-STOP/STRIDE' or a step number"
            ) from e
    return sorted(s for s in steps if 0 <= s <= n_steps)
