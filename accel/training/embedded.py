"""Build the embedded random-weight models shipped under ``assets/``.

``python -m accel.training.embedded`` (re)writes ``assets/tiny-wan``: a small ``WanTransformer3DModel``, an
``AutoencoderKLWan`` with Wan's 4x8x8 compression, a tiny ``UMT5EncoderModel`` and an offline
word-level tokenizer, saved in diffusers folder format with safetensors so that
``WanPipeline.from_pretrained`` loads it exactly like a real checkpoint. Weights are seeded, so
the folder is reproducible bit for bit on one torch version.

It also writes ``assets/tiny-skyreels``: a ``SkyReelsV2DiffusionForcingPipeline`` with a small
``SkyReelsV2Transformer3DModel`` (same size as tiny-wan's, block-causal over chunks of
``TINY_SKYREELS_CHUNK`` latent frames) that shares tiny-wan's VAE, text encoder and tokenizer
(the same weights, copied into its own folder as diffusers' folder format requires).

Sizes are chosen so that a default CPU run (see ``accel.models.REGISTRY``) finishes in seconds
while each head's XAttention block mask is at least 16x16 blocks.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from accel.paths import ASSETS

MODELS = ("tiny-wan", "tiny-skyreels")
# Latent frames per diffusion-forcing chunk of tiny-skyreels (``causal_block_size``; 5 in SkyReels-V2-DF).
TINY_SKYREELS_CHUNK = 2

# A closed vocabulary for prompts about simple scenes; anything else maps to <unk>.
WORDS = """
a an the of in on at over under with and or to from by into onto across through behind near
above below beside between around toward away up down left right forward backward slowly quickly
fast slow moves move moving runs running walks walking flies flying falls falling rises rising
spins spinning rolls rolling jumps jumping swims swimming drifts drifting floats floating
bounces bouncing glides gliding turns turning dances dancing waves waving shakes shaking grows
growing shrinks shrinking appears disappears zooms zoom pan pans panning camera shot view close
wide aerial tracking static handheld scene video clip frame red orange yellow green blue purple
pink brown black white gray grey golden silver dark bright light pale colorful vivid soft
circle square triangle star ball box cube sphere ring line dot shape shapes object objects one
two three four many several small large big tiny huge tall short long round flat smooth rough
cat dog bird fish horse cow sheep rabbit fox bear lion tiger elephant monkey butterfly bee
person man woman child children people girl boy crowd dancer runner surfer skier rider
car bus train boat ship plane bicycle truck road street city town village house building
bridge tower window door room kitchen table chair lamp book cup tree trees forest flower flowers
grass field garden park mountain mountains hill hills river lake sea ocean beach wave waves
water rain snow ice fire smoke cloud clouds sky sun moon stars night day morning evening sunset
sunrise storm wind fog light shadow background foreground texture gradient pattern striped
plain textured wooden stone glass metal paper cloth sand desert island valley canyon waterfall
leaves leaf branch sea-gull seagull grassland meadow snowy rainy sunny cloudy misty foggy
beautiful cinematic realistic detailed high quality low blurry sharp style painting photo
cartoon anime still motion steady smoothly gently heavily happy calm busy empty full old new
young is are its their his her this that there here while as it they he she we you
worst static overexposed subtitles artwork picture gray overall worst jpeg artifacts ugly
incomplete extra fingers poorly drawn hands faces deformed disfigured misshapen limbs fused
messy cluttered walking backwards
"""
# Grammar words of accel.synthetic.procedural the first vocabulary missed (they were <unk>): appended after the
# sorted WORDS so every earlier id, and so every trained embedding row, keeps its meaning.
ADDED_WORDS = ("diamond", "horizontal", "lower", "upper", "vertical")


def build_tokenizer(out_dir: Path, model_max_length: int = 512):
    """A word-level tokenizer (lower-cased, whitespace/punctuation split) with T5-style specials."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    words = sorted({w for w in WORDS.split()})
    vocab = {tok: i for i, tok in enumerate([*specials, *words, *ADDED_WORDS])}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="removed")]
    )
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )
    fast.save_pretrained(out_dir)
    return fast


Z_DIM = 16


def build_vae(base_dim: int = 16, z_dim: int = Z_DIM):
    """A small ``AutoencoderKLWan`` with Wan2.1's 4x temporal and 8x spatial compression."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=base_dim,
        z_dim=z_dim,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * z_dim,
        latents_std=[1.0] * z_dim,
    )


# The tiny transformers' shape (Wan and SkyReels alike): 6 heads x 32, 4 layers.
TINY_TRANSFORMER = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 6,
    "attention_head_dim": 32,
    "freq_dim": 64,
    "ffn_dim": 384,
    "num_layers": 4,
    "rope_max_seq_len": 1024,
}


def flow_unipc(shift: float):
    """UniPC with flow prediction at ``shift``, the scheduler Wan2.1 and SkyReels-V2 checkpoints ship."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=shift
    )


def build_tiny_wan(out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny Wan2.1-style T2V pipeline to ``out_dir`` (diffusers folder format)."""
    from diffusers import WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(out_dir / "tokenizer")
    text_dim = 64
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=text_dim,
            d_kv=16,
            d_ff=128,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=32,
            feed_forward_proj="gated-gelu",
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    ).eval()
    vae = build_vae().eval()
    z_dim = vae.config.z_dim
    transformer = WanTransformer3DModel(in_channels=z_dim, out_channels=z_dim, text_dim=text_dim, **TINY_TRANSFORMER)
    scheduler = flow_unipc(3.0)  # Wan2.1 checkpoints ship shift 3.0 (5.0 at 720p)
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def build_tiny_skyreels(out_dir: Path, seed: int = 0, wan_dir: Path | None = None) -> Path:
    """Write the tiny SkyReels-V2 diffusion-forcing T2V pipeline to ``out_dir``.

    The VAE, text encoder and tokenizer are loaded from the tiny-wan folder ``wan_dir`` (built first
    if missing) so both embedded models share them; only the transformer is new.
    """
    from diffusers import (
        AutoencoderKLWan,
        SkyReelsV2DiffusionForcingPipeline,
        SkyReelsV2Transformer3DModel,
    )
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, UMT5EncoderModel

    out_dir = Path(out_dir)
    wan_dir = Path(wan_dir) if wan_dir is not None else out_dir.parent / "tiny-wan"
    if not (wan_dir / "model_index.json").is_file():
        build_tiny_wan(wan_dir, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(wan_dir / "tokenizer", local_files_only=True)
    text_encoder = UMT5EncoderModel.from_pretrained(
        wan_dir / "text_encoder", local_files_only=True, use_safetensors=True
    ).eval()
    # from_config + strict state dict (not from_pretrained) keeps the local path out of the saved config
    vae = AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(wan_dir / "vae")).eval()
    vae.load_state_dict(load_file(wan_dir / "vae" / "diffusion_pytorch_model.safetensors"), strict=True)

    torch.manual_seed(seed)
    transformer = SkyReelsV2Transformer3DModel(
        in_channels=vae.config.z_dim,
        out_channels=vae.config.z_dim,
        text_dim=text_encoder.config.d_model,
        **TINY_TRANSFORMER,
        # like SkyReels-V2-DF-1.3B: an fps embedding is added to the per-frame timestep modulation
        inject_sample_info=True,
        # block-causal attention over chunks even when a call does not pass ``causal_block_size``
        num_frame_per_block=TINY_SKYREELS_CHUNK,
    ).eval()
    scheduler = flow_unipc(8.0)  # SkyReels-V2 DF text-to-video (5.0 is for I2V)
    pipe = SkyReelsV2DiffusionForcingPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    # the tokenizer files verbatim: a re-saved tokenizer would record where it was loaded from
    for src in (wan_dir / "tokenizer").iterdir():
        shutil.copyfile(src, out_dir / "tokenizer" / src.name)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*MODELS, "all"], default="all", help="which model(s) to build")
    parser.add_argument("--assets", type=Path, default=ASSETS, help="folder that receives one subfolder per model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    wan_dir = args.assets / "tiny-wan"
    if args.model in ("tiny-wan", "all"):
        print(f"wrote {build_tiny_wan(wan_dir, seed=args.seed)}")
    if args.model in ("tiny-skyreels", "all"):
        print(f"wrote {build_tiny_skyreels(args.assets / 'tiny-skyreels', seed=args.seed, wan_dir=wan_dir)}")


if __name__ == "__main__":
    main()
