"""What a long command shows while it works: a progress bar for steps, its events once each, on stderr."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any


def progress_printer(notes: Sequence[str | None] = ()) -> Callable[[Any], None]:
    """An event callback that draws a tqdm bar for steps and prints everything else once, on stderr.

    ``notes`` are printed before the first event, so a command refused before its work starts
    prints its error alone. Stdout is left to the command's results (paths), so a script can read
    them. It also warns, once, when training steps suddenly take several times longer (a GPU
    spilling into system memory). A `Failed` event is not printed: its error reaches `main`.
    """
    from tqdm import tqdm

    from engine import events, preflight

    state: dict[str, Any] = {"bar": None, "seconds": [], "last": None, "warned": False, "notes": notes}

    def on_event(event: events.Event) -> None:
        for note in filter(None, state.pop("notes", ())):
            tqdm.write(note, file=sys.stderr)
        bar = state["bar"]
        if isinstance(event, events.PhaseStarted):
            if bar is not None:
                bar.close()
            state["bar"] = tqdm(total=event.steps, desc=f"phase {event.phase}", unit="step", file=sys.stderr)
            state["seconds"], state["last"] = [], event.time
        elif isinstance(event, events.StepDone) and bar is not None:
            bar.update(event.step - bar.n)
            bar.set_postfix({k: f"{v:.4f}" for k, v in event.losses.items()}, refresh=False)
            state["seconds"].append(event.time - state["last"])
            state["last"] = event.time
            jump = preflight.step_time_jump(state["seconds"])
            if jump is not None and event.phase > 0 and not state["warned"]:
                state["warned"] = True
                tqdm.write(f"warning: {preflight.jump_warning(jump)}", file=sys.stderr)
        elif isinstance(event, events.Status):
            tqdm.write(event.message, file=sys.stderr)
        elif isinstance(event, events.PreviewSaved):
            tqdm.write(f"preview at step {event.global_step}: {', '.join(event.images)}", file=sys.stderr)
        elif isinstance(event, events.CheckpointSaved):
            tqdm.write(f"checkpoint saved: {event.path}", file=sys.stderr)
        elif isinstance(event, events.Finished):
            if bar is not None:
                bar.close()
            tqdm.write(f"finished in {event.seconds:.0f} s: {event.artefact}", file=sys.stderr)
        elif isinstance(event, events.Failed) and bar is not None:
            bar.close()
        elif isinstance(event, events.Cancelled):
            if bar is not None:
                bar.close()
            tqdm.write(f"cancelled at step {event.global_step}", file=sys.stderr)

    return on_event
