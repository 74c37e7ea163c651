"""Keep the cycle collector's full passes short in the long-running app.

After start-up the app holds ≈ 660,000 objects that live as long as the process (torch, transformers, Gradio, the
page). Every full collection walks all of them: under load one ran every few seconds and took ≈ 250–300 ms, with
every request stalled behind it. `settle()` collects once and then moves the survivors out of the collector's view
(`gc.freeze`), so later passes walk only what was allocated since.

Frozen objects are never examined again, so an object frozen while alive and dropped later would be kept if it is
part of a cycle. Each `settle()` therefore starts by unfreezing: whatever an earlier settle froze is looked at again
by its collection. The app settles once before it serves and again after every model swap (the old model is then
unreachable and collected; the new one joins the frozen heap). A model still held by an in-flight request at that
moment is kept at most until the next swap. The cost is one full collection per swap (≈ 0.3 s, promotions only).
Measurements: docs/app-performance.md ("Third pass: the cycle collector and double submissions").
"""

from __future__ import annotations

import gc
import threading

_SETTLING = threading.Lock()


def settle() -> int:
    """Unfreeze, collect everything, freeze the survivors; the number of objects now frozen."""
    with _SETTLING:
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        return gc.get_freeze_count()
