"""Fixtures for generation, post-processing and export: a tiny trained artefact and a project using it."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

TOKENS = {"identity": "<sks>", "style": "<style1>"}
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
RUN = "run-1"


@dataclass
class TinyLora:
    """The peft-injected copies the artefact was taken from (the reference for alpha handling)."""

    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    path: Path


def make_artefact(path: Path, base, *, rank: int = 4, alpha: float = 4.0, seed: int = 0) -> TinyLora:
    """A LoRA (UNet and text encoder) and two embeddings on the tiny base, saved as the trainer saves them."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    from engine.artefact import save_artefact

    torch.manual_seed(seed)
    configs = {
        "unet": {
            "r": rank,
            "lora_alpha": alpha,
            "init_lora_weights": "gaussian",
            "target_modules": UNET_TARGETS,
        },
        "text_encoder": {
            "r": rank,
            "lora_alpha": alpha,
            "init_lora_weights": "gaussian",
            "target_modules": TEXT_TARGETS,
        },
    }
    unet = inject_adapter_in_model(LoraConfig(**configs["unet"]), copy.deepcopy(base.unet))
    text_encoder = inject_adapter_in_model(
        LoraConfig(**configs["text_encoder"]), copy.deepcopy(base.text_encoder)
    )
    with torch.no_grad():
        for module in (unet, text_encoder):
            for name, parameter in module.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0.0, 0.3)
    hidden = base.text_encoder.get_input_embeddings().embedding_dim
    embeddings = {token: torch.randn(hidden) * 0.5 for token in TOKENS.values()}
    metadata = {
        "format": 1,
        "base_model": str(base.source),
        "run": RUN,
        "tokens": dict(TOKENS),
        "resolution": 64,
        "lora": configs,
    }
    save_artefact(
        path, get_peft_model_state_dict(unet), get_peft_model_state_dict(text_encoder), embeddings, metadata
    )
    return TinyLora(unet.eval(), text_encoder.eval(), path)


@pytest.fixture(scope="module")
def base(tiny_sd):
    from engine.models import load_base

    return load_base(tiny_sd.folder)


@pytest.fixture(scope="module")
def lora(base, tmp_path_factory) -> TinyLora:
    return make_artefact(tmp_path_factory.mktemp("artefact") / "final.safetensors", base)


def project_with_run(root: Path, artefact: Path):
    """A project whose finished run ``run-1`` holds a copy of ``artefact``."""
    from engine.store import ProjectStore

    project = ProjectStore(root).create("alice")
    target = project.path("trainings", RUN, "final.safetensors")
    target.parent.mkdir(parents=True)
    target.write_bytes(artefact.read_bytes())

    def add_run(manifest: dict) -> None:
        manifest["trainings"].append(
            {"id": RUN, "status": "finished", "artefact": f"trainings/{RUN}/final.safetensors"}
        )

    project.update(add_run)
    return project


@pytest.fixture
def project(lora: TinyLora, tmp_path: Path):
    return project_with_run(tmp_path / "store", lora.path)


def add_photo_output(project, image: np.ndarray, output_id: str = "photo", identity: float | None = None):
    """Record ``image`` as if it had been generated (for post-processing and export tests)."""
    from engine.outputs import OutputRecord, add_output, format_parameters

    params = {
        "prompt": "a photo of a <sks> person in the style of <style1>",
        "negative_prompt": "blurry",
        "seed": 7,
        "sampler": "euler_a",
        "steps": 50,
        "guidance_scale": 7.0,
        "unet_lora_scale": 0.6,
        "text_lora_scale": 0.9,
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "model": "sd",
    }
    record = OutputRecord(
        id=output_id,
        file=f"outputs/{output_id}.png",
        seed=7,
        params=params,
        run=RUN,
        identity=identity,
        created="2024-01-01T00:00:00+00:00",
    )
    return add_output(project, image, record, format_parameters(params))
