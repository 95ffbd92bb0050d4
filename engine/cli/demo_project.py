"""``magicapture demo-project NAME``: a project filled with the demo's sample photos, on the tiny models."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.cli.commands import CommandError


def cmd_demo_project(args: argparse.Namespace) -> None:
    """Build (or reuse) the demo kit, then add the sample selfies and style references through intake."""
    from engine.demo import build_demo_kit, default_kit_folder, use_demo_kit
    from engine.demo.samples import add_samples
    from engine.faces import load_face_kit
    from engine.intake import Refused
    from engine.photos import photo_records
    from engine.store import ProjectStore, StoreError

    folder = Path(args.kit) if args.kit else default_kit_folder()
    kit = build_demo_kit(folder)
    use_demo_kit(kit)
    store = ProjectStore()
    try:
        project = store.open(args.project)
    except StoreError:
        project = store.create(args.project)
    if photo_records(project):
        raise CommandError(
            f"Project {args.project!r} already has photos; demo-project fills a new or empty project, "
            "so give it another name."
        )
    outcome = add_samples(project, load_face_kit(download=False))
    for photo, result in outcome.results:
        if isinstance(result, Refused):
            print(f"refused {photo.filename}: {result.reason} - {result.message}")
        else:
            print(f"accepted {photo.filename}")
    family = args.family or "sd1"
    if folder == default_kit_folder():
        train = f"magicapture train {args.project!r} --demo" + (" --family sdxl" if family == "sdxl" else "")
    else:
        tiny = kit.sdxl if family == "sdxl" else kit.sd
        train = (
            f"MAGICAPTURE_ASSETS={kit.assets} magicapture train {args.project!r} --preset fast "
            f"--base {tiny.folder} --profile cpu --set resolution={kit.resolution} "
            f"--set tiny_decoder_model={kit.tiny_decoder} --set phase1_steps=6 --set phase2_steps=6"
        )
    demo = "--demo" + (" sdxl" if family == "sdxl" else "")
    print(
        f"Project {args.project!r} holds {outcome.accepted('source')} sample selfies and "
        f"{outcome.accepted('reference')} style references. Open it in the studio's demo mode:\n"
        f"  magicapture-studio {demo} --data-dir {store.root}\n"
        f"or train it here on the tiny model:\n  {train}"
    )
