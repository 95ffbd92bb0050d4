"""The commands: each a thin call into the engine, with heavy imports inside it so that
``magicapture --help`` is instant."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.cli.progress import progress_printer
from engine.errors import UserError

if TYPE_CHECKING:
    from engine.demo import DemoKit
    from engine.faces import FaceKit
    from engine.models import BaseSource
    from engine.store import Project, ProjectStore


class CommandError(UserError):
    """A mistake in the command line that the user can fix; the message says how."""


def _project(name: str) -> Project:
    from engine.store import ProjectStore

    return ProjectStore().open(name)


def _parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are read as JSON where they parse, else as text."""
    overrides = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise CommandError(f"--set takes key=value (got {pair!r}); for example --set phase1_steps=400.")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw
    return overrides


DEMO_TRAINING = {
    "phase1_steps": 6,
    "phase2_steps": 6,
    "checkpoint_every": 3,
    "preview_every": 6,
    "preview_steps": 4,
    "preview_seeds": [0],
    "latent_cache_variants": 1,
    "device": "cpu",
    "vram_profile": "cpu",
}
"""``train --demo``: a few CPU steps of the tiny model (``--set`` and ``--profile`` still override them)."""


def _demo_kit() -> DemoKit:
    """The demo kit (built once in the user cache), with this process pointed at its assets and offline."""
    from engine.demo import build_demo_kit, default_kit_folder, use_demo_kit

    kit = build_demo_kit(default_kit_folder())
    use_demo_kit(kit)
    return kit


def train_overrides(args: argparse.Namespace, overrides: dict[str, Any]) -> tuple[dict[str, Any], BaseSource]:
    """The run's settings: ``overrides`` (``--set``, ``--profile``) and the base model, which is
    ``--base``, else ``--family``'s default hub id, else with ``--demo`` the kit's tiny model of
    ``--family``; trained at its family's native size unless ``--set resolution`` says otherwise.

    The base is identified (`engine.models.identify_base`) before any slow work: a damaged or
    unsupported file is refused here; the command names it, with its family, as training starts.
    """
    from engine.families import FAMILIES
    from engine.models import DEFAULT_BASES, identify_base

    family = args.family or "sd1"
    if args.demo:
        if args.base:
            raise CommandError(
                "--demo trains the demo kit's tiny model, so it takes no --base; pick its family with "
                "--family, or leave out --demo to train on your base model."
            )
        kit = _demo_kit()
        tiny = kit.sdxl if family == "sdxl" else kit.sd
        demo = {"base_model": str(tiny.folder), "resolution": kit.resolution}
        overrides = {**DEMO_TRAINING, **demo, "tiny_decoder_model": str(kit.tiny_decoder), **overrides}
    elif args.base:
        overrides = {**overrides, "base_model": args.base}
    else:
        overrides = {"base_model": DEFAULT_BASES[family], **overrides}
    found = identify_base(overrides["base_model"])
    if args.family and found.family is not None and found.family.name != args.family:
        wanted = FAMILIES[args.family].label
        raise CommandError(
            f"{overrides['base_model']} is {found.family.label} but --family asks for {wanted}; leave out "
            f"--family or give an {wanted} base."
        )
    if found.family is not None:
        overrides = {"resolution": found.family.native_resolution, **overrides}
    return overrides, found


def _licence_line(commercial: bool, restore: str | None = None) -> str | None:
    """The line saying which non-commercial weights this command uses and what replaces them, if any."""
    from engine.assets import demo_standins, licence_notice
    from engine.preflight import assets_in_use

    notice = licence_notice(
        assets_in_use(commercial=commercial, restore=restore), alternatives=True, standins=demo_standins()
    )
    return f"Licence: {notice} (Pass --commercial.)" if notice else None


def _licence_notice(commercial: bool, restore: str | None = None) -> None:
    """Say once, on stderr, which non-commercial weights this command uses and what replaces them."""
    line = _licence_line(commercial, restore)
    if line:
        print(line, file=sys.stderr)


def cmd_projects(args: argparse.Namespace) -> None:
    from engine.store import ProjectStore, data_root

    store = ProjectStore()
    if args.action == "list":
        print(f"projects in {data_root() / 'projects'}:")
        for name in store.list():
            print(f"  {name}")
        return
    if not args.name:
        raise CommandError(
            f"projects {args.action} needs a project name: magicapture projects {args.action} NAME."
        )
    if args.action == "create":
        print(store.create(args.name).root)
    elif args.action == "delete":
        store.delete(args.name)
        print(f"deleted {args.name}")
    else:
        from engine.repair import repair_manifest

        print(repair_manifest(store.open(args.name)))


FALLBACK_WORDS = {
    "detector": "face detector (Haar cascades)",
    "parser": "face parser (an ellipse around the landmarks: approximate masks)",
}
"""How the prepare line names a face part running on its offline fallback (`FaceKit.fallbacks`)."""


def cmd_prepare(args: argparse.Namespace) -> None:
    from engine.intake import check_photo_file
    from engine.store import ProjectStore, StoreError

    paths = [Path(photo) for photo in args.photos]
    for path in paths:
        check_photo_file(path)
    store = ProjectStore()
    try:
        project, created = store.open(args.project), False
    except StoreError:
        project, created = store.create(args.project), True
    try:
        accepted = add_photos(project, paths, args.role, lambda: _face_kit(args.commercial))
    finally:
        if created:
            _discard_if_empty(store, args.project)
    if not accepted:
        outcome = "was not created" if created else "is unchanged"
        raise CommandError(
            f"No photo was accepted (reasons above), so project {args.project!r} {outcome}; choose other photos."
        )


def _face_kit(commercial: bool) -> FaceKit:
    """The face models, loaded once a photo has passed the checks that need none; says what stands in."""
    from engine.faces import load_face_kit

    _licence_notice(commercial)
    kit = load_face_kit(commercial=commercial)
    line = fallback_line(kit.fallbacks)
    if line:
        print(line, file=sys.stderr)
    return kit


def fallback_line(fallbacks: Sequence[str]) -> str | None:
    """The words for the face parts on their offline fallback; masks are approximate only with the parser's."""
    parts = [FALLBACK_WORDS[part] for part in fallbacks if part in FALLBACK_WORDS]
    words = [f"Using the offline fallback {' and '.join(parts)}."] if parts else []
    if "recogniser" in fallbacks:
        words.append("No face recogniser: no identity embedding is stored.")
    return " ".join(words) or None


def add_photos(project: Project, paths: Sequence[Path], role: str, load_kit: Callable[[], FaceKit]) -> int:
    """Add each photo to ``project``, saying on stdout which were accepted and why others were refused.

    The checks that need no face model run first; ``load_kit`` is called once, for the first photo
    that passes them. Returns how many photos were accepted.
    """
    from engine.intake import Refused, add_checked, check_upload, read_photo

    kit: FaceKit | None = None
    accepted = 0
    for path in paths:
        result = check_upload(read_photo(path), path.name)
        if not isinstance(result, Refused):
            if kit is None:
                kit = load_kit()
            result = add_checked(project, result, role, kit)
        if isinstance(result, Refused):
            print(f"refused {path.name}: {result.reason} - {result.message}")
        else:
            accepted += 1
            print(f"accepted {path.name}")
    return accepted


def _discard_if_empty(store: ProjectStore, name: str) -> None:
    """Delete project ``name``, which this command created, if it holds no photo."""
    from engine.photos import photo_records
    from engine.store import StoreError

    with contextlib.suppress(StoreError):
        if not photo_records(store.open(name)):
            store.delete(name)


def cmd_train(args: argparse.Namespace) -> None:
    from engine import preflight
    from engine.config import preset

    overrides = _parse_overrides(args.set)
    if args.profile:
        overrides["vram_profile"] = args.profile
    preset(args.preset, **overrides)  # a bad setting is refused before the project and the base are read
    project = _project(args.project)
    overrides, base = train_overrides(args, overrides)
    config = preset(args.preset, **overrides)
    try:
        estimate = f"Pre-flight estimate: {preflight.summary(preflight.estimate(config))}"
    except preflight.PreflightError as error:
        estimate = f"Pre-flight estimate unavailable: {error}"
    from engine.faces import load_face_kit
    from engine.training import train

    kit = load_face_kit(commercial=True) if args.commercial else None
    notes = [f"Base model: {base.describe()}", _licence_line(args.commercial), estimate]
    artefact = train(project, config, on_event=progress_printer(notes), resume=args.resume, face_kit=kit)
    print(artefact)


def cmd_generate(args: argparse.Namespace) -> None:
    from engine.assets import NonCommercialAsset, get_asset
    from engine.generate import GenerationSettings, generate
    from engine.postprocess import RESTORERS, postprocess_output

    project = _project(args.project)
    if args.demo:
        _demo_kit()
    if args.commercial and args.restore and not get_asset(RESTORERS[args.restore]).commercial_ok:
        raise NonCommercialAsset(
            f"The {args.restore} face restorer is licensed for non-commercial use only; with --commercial "
            "use --restore gfpgan instead."
        )
    settings = GenerationSettings(
        prompt_extra=args.prompt_extra,
        count=args.n,
        seed=args.seed,
        sampler=args.sampler,
        steps=args.steps,
        guidance_scale=args.cfg,
    )
    notes = [_licence_line(args.commercial, args.restore)]
    records = generate(
        project, args.run, settings, commercial=args.commercial, on_event=progress_printer(notes)
    )
    for record in records:
        if args.restore or args.upscale > 1 or args.preset:
            record = postprocess_output(
                project,
                record.id,
                restore=args.restore,
                upscale=args.upscale,
                preset=args.preset,
                commercial=args.commercial,
            )
        print(project.path(record.file))


def cmd_export(args: argparse.Namespace) -> None:
    from engine.export import USAGE_NOTE, export_embeddings, export_lora

    project = _project(args.project)
    lora = export_lora(project, args.run, format=args.format)
    for path in (lora, *export_embeddings(project, args.run), lora.with_name(USAGE_NOTE)):
        print(path)


def cmd_eval(args: argparse.Namespace) -> None:
    from engine.evaluate import evaluate_project
    from engine.faces import load_face_kit

    project = _project(args.project)
    _licence_notice(args.commercial)
    report = evaluate_project(project, args.runs or None, face_kit=load_face_kit(commercial=args.commercial))
    print(report.markdown())


STANDIN_STATE = "demo stand-in (random weights)"
STANDIN_NOTE = (
    "Demo stand-ins are the demo kit's tiny models: random weights in the real file formats, so every "
    "step runs, but they make noise, not portraits. This folder is the demo kit's; point "
    "MAGICAPTURE_ASSETS elsewhere (or unset it) to list and download the real weights."
)


def cmd_models(args: argparse.Namespace) -> None:
    from engine import assets

    if args.action == "list":
        rows = assets.list_assets()
        standins = assets.demo_standins()
        for row in rows:
            state = (STANDIN_STATE if standins else "real weights") if row.present else "missing"
            print(f"{row.name:20} {state:30} {row.licence:32} {row.path}")
        if standins and any(row.present for row in rows):
            print(STANDIN_NOTE)
        notice = assets.licence_notice([row.name for row in rows if row.present], standins=standins)
        if notice:
            print(notice)
    elif args.action == "download":
        for name in args.names or list(assets.REGISTRY):
            print(assets.download_asset(name))
    else:
        if len(args.names) != 2:
            raise CommandError(
                f"models import takes NAME PATH (got {' '.join(args.names) or 'nothing'}); "
                "for example magicapture models import bisenet ~/Downloads/79999_iter.pth."
            )
        print(assets.import_asset(args.names[0], args.names[1]))


def cmd_demo_models(args: argparse.Namespace) -> None:
    from engine.demo import build_demo_kit

    kit = build_demo_kit(Path(args.folder))
    print(
        f"tiny SD 1.x folder: {kit.sd.folder}\nsingle file: {kit.sd.single_file}\n"
        f"tiny SDXL folder: {kit.sdxl.folder}\nsingle file: {kit.sdxl.single_file}\n"
        f"tiny decoder: {kit.tiny_decoder}\nassets: {kit.assets}"
    )
