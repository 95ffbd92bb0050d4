"""SDXL's figures on a GPU worked out from parameter counts, until a GPU measures them.

Peak of a phase-2 step at 1024 px in fp16, batch 1, LoRA rank 4 (the released preset), per SDXL
profile (`engine.devices.SDXL_PROFILES`), in GiB:

- weights, fp16: UNet 2.57 B + CLIP-L 123 M + OpenCLIP bigG 695 M + VAE 84 M parameters
  = 3.47 B x 2 bytes = 6.47;
- trainable, fp32: UNet LoRA 8.80 M parameters (630 layers: the attention projections and
  ``ff.net.0.proj``), text-encoder LoRA 1.61 M more where the profile trains it (CLIP-L 12 and
  bigG 32 layers x q, k, v, out); 4 bytes of weight, 4 of gradient and 8 of AdamW state
  (2 with 8-bit AdamW) each: 0.08 to 0.16;
- UNet activations with gradient checkpointing: 1.56 (the blocks' inputs, 0.25, and the largest
  block recomputed during the backward pass, ``down_blocks.2.attentions.0``, 1.31); 10.1 without;
- identity branch: TAESD-XL (``madebyollin/taesdxl``, 2.45 M parameters in fp16, 1.22 M of them
  the decoder's: 0.005) decoding a 64 x 64 latent window (512 px, a 320 px face box with the 0.3
  margin) with gradient in fp16: 0.27 (0.15 for a 48 x 48 window), with or without checkpointing
  (diffusers checkpoints its decoder as one block, so the backward pass recomputes all of it).
  With ``identity_decoder="vae"`` the VAE's checkpointed decode would take 1.71 instead (2.79
  without); these rows estimate the defaults;
- Attention Refocusing: 50 captured layers' maps ``[20, 1024, 77]`` in fp16 (0.15) and each
  token's maps upsampled to the 128 x 128 latent in fp32 (0.13): 0.3;
- text encoders' activations (77 tokens) and the recogniser at 112 px: 0.2 allowed.

The activation figures were counted by ``python -m bench.sdxl_activations`` (autograd's saved
tensors on PyTorch's meta device, flash attention's saving assumed); the CUDA context and
allocator slack (`engine.preflight.forecast.CUDA_OVERHEAD_BYTES`) come on top, as for measured
rows. The 12 GB profile comes to 8.9 GiB, 9.4 with the slack: it fits a 12 GB GPU and, by this
estimate, a 10 GB one with little to spare.
A plain DreamBooth-LoRA step would peak near 8.3 by the same sums (no decode, no AR maps, no
TAESD): the full step comes to about 1.07x it (8.9 against 8.3 on the 12 GB profile), where the
VAE decode made it 1.24x.
"""

from __future__ import annotations

from engine.preflight.table import GB, Figures

PARAMETERS = {"unet": 2.57e9, "text_encoder": 123e6, "text_encoder_2": 695e6, "vae": 84e6}
"""SDXL 1.0 base's parameter counts."""
UNET_LORA = 8_801_280
TEXT_LORA = 12 * 4 * 4 * (768 + 768) + 32 * 4 * 4 * (1280 + 1280)
UNET_ACTIVATIONS_GIB = {True: 1.559, False: 10.135}
"""The UNet's saved activations at 1024 px, with and without gradient checkpointing."""
TINY_DECODER_PARAMETERS = 2_445_063
"""TAESD-XL (`diffusers.AutoencoderTiny`), loaded whole for the identity branch."""
IDENTITY_DECODE_GIB = 0.269
"""TAESD-XL decoding a 64 x 64 latent window with gradient in fp16 (checkpointed or not: one block)."""
AR_MAPS_GIB = 0.3
OTHER_GIB = 0.2
RESOLUTION = 1024
MEASURED = (
    "from SDXL 1.0 base's parameter counts and the activations of a 1024 px step counted on "
    "PyTorch's meta device (`python -m bench.sdxl_activations`); no GPU has measured it yet"
)


def sdxl_peak(
    *, train_text_encoder: bool, use_8bit_adam: bool, gradient_checkpointing: bool
) -> tuple[int, int]:
    """Resident bytes before the steps and the peak of a full phase-2 step, for these memory options."""
    weights = 2 * (sum(PARAMETERS.values()) + TINY_DECODER_PARAMETERS)
    trainable = UNET_LORA + (TEXT_LORA if train_text_encoder else 0)
    resident = weights + 4 * trainable
    step = trainable * (4 + (2 if use_8bit_adam else 8))
    checkpointed = gradient_checkpointing
    activations = UNET_ACTIVATIONS_GIB[checkpointed] + IDENTITY_DECODE_GIB + AR_MAPS_GIB + OTHER_GIB
    return round(resident), round(resident + step + activations * GB)


def estimated_rows() -> list[Figures]:
    """One estimated row per SDXL profile: model "sdxl" on CUDA at 1024 px, no step times."""
    from engine.devices import SDXL_PROFILES

    rows = []
    for profile in SDXL_PROFILES.values():
        resident, peak = sdxl_peak(
            train_text_encoder=profile.train_text_encoder,
            use_8bit_adam=profile.use_8bit_adam,
            gradient_checkpointing=profile.gradient_checkpointing,
        )
        rows.append(
            Figures(model="sdxl", device="cuda", profile=profile.name, resolution=RESOLUTION,
                    peak_bytes=peak, resident_bytes=resident, plain_peak_bytes=None, phase1_step_s=None,
                    phase2_step_s=None, phase1_from="", measured=MEASURED, estimated=True)
        )  # fmt: skip
    return rows
