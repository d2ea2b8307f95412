"""The `aigc-bridge` command. Every subcommand imports what it needs lazily, so `--help` is instant and
the runtime commands never import torch."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from . import __version__
from .errors import AigcError
from .request import FLOW_SCHEDULERS, SCHEDULERS

NO_MODEL_HELP = (
    "no model given and no default model (AIGC_BRIDGE_MODEL=none, or texture-mini is not installed): pass "
    "--model DIR, a model package "
    "made by `aigc-bridge export SOURCE DIR` "
    "(SOURCE: a diffusers folder or a Hugging Face id such as stabilityai/sd-turbo; needs "
    "`pip install 'aigc-bridge[export]'`)"
)


def _add_generation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--seed", type=int, help="seed of the first image (default: random, printed)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's recommendation)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--width", type=int, help="image width in pixels (default: the model's native size)")
    p.add_argument("--height", type=int, help="image height in pixels")
    p.add_argument("--tile", choices=("none", "both", "x"),
                   help="seamless: both = tileable texture, x = wraps horizontally (360-degree panorama)")
    p.add_argument("--scheduler", choices=SCHEDULERS + FLOW_SCHEDULERS,
                   help="default: the model's own (dpmpp_2m follows its config; dpmpp_2m_karras forces Karras sigmas)")
    p.add_argument("--count", type=int, default=1, help="images (seeds seed, seed+1, ...)")
    p.add_argument("--kind", choices=("texture", "backdrop"), default="texture",
                   help="backdrop: a 360-degree equirectangular sky (2:1, wraps on x) with cube faces and a skydome")
    p.add_argument("--pbr", action="store_true", help="textures: also normal, roughness, height, AO, ORM maps")
    p.add_argument("--target-size", type=int, help="engine mode: output width, a power of two (512, 1024, 2048)")
    p.add_argument("--normal-convention", choices=("opengl", "directx"), default="opengl",
                   help="normal map green channel: +Y (Blender, glTF, Unity, Godot) or -Y (DirectX engines)")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="PNG bit depth of colour and data maps")


def _add_control_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--control", action="append", default=[], metavar="NAME=IMAGE[:SCALE[:START:END]]",
                   help="steer with the model's controlnet NAME (e.g. depth=depth.png:0.8, canny=edges.png:1:0:0.5): "
                        "conditioning scale (default 1) and the part of the schedule it acts on (default 0 to 1); "
                        "repeatable, up to 4")
    p.add_argument("--depth", type=Path, metavar="IMAGE",
                   help="SD 2 depth models: the depth map (near = bright), resized to the generation size")


def parse_control(spec: str, index: int):
    """``NAME=IMAGE[:SCALE[:START:END]]`` -> ControlInput (the image path may itself contain ':')."""
    from .input_image import InputImage
    from .request import ControlInput

    field = f"controls[{index}]"
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise AigcError("invalid_request", f"--control {spec!r}: expected NAME=IMAGE[:SCALE[:START:END]], e.g. "
                        "depth=depth.png:0.8", field)
    parts = rest.split(":")
    numbers: list[float] = []
    while len(parts) > 1 and len(numbers) < 3:
        try:
            numbers.insert(0, float(parts[-1]))
        except ValueError:
            break
        parts.pop()
    if len(numbers) == 2:
        raise AigcError("invalid_request", f"--control {spec!r}: START needs END (NAME=IMAGE:SCALE:START:END)", field)
    values = dict(zip(("scale", "start", "end"), numbers))
    return ControlInput(name, InputImage.from_path(":".join(parts), f"{field}.image"), **values)


def _add_memory_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--memory-limit", type=float, metavar="GB",
                   help="memory generation may use, in GB (default on the CPU: 85%% of what is free at start; "
                   "upscaling: 2); larger requests are refused before they run (upscaling tiles to fit)")


def _memory_limit(args: argparse.Namespace) -> int | None:
    if args.memory_limit is None:
        return None
    if not args.memory_limit > 0:
        raise AigcError("invalid_request", f"--memory-limit must be more than 0 GB, got {args.memory_limit}",
                        "memory_limit")
    return int(args.memory_limit * 1024**3)


def _add_upscaler_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile-size", type=int, help="tiled upscaling: input pixels per tile (default: the whole image "
                   "when it fits the memory limit, else the largest tiles that do; 0: never tile)")


def _add_client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key-file", type=Path, help="with --endpoint: the sidecar's HMAC key file")
    p.add_argument("--server-key", type=Path, help="with --endpoint: the sidecar's Curve public key file")
    p.add_argument("--client-key", type=Path, help="this client's Curve secret key file (NAME.key_secret)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds of silence before the sidecar counts as unavailable (default %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aigc-bridge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"aigc-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate images from a prompt")
    gen.add_argument("prompt")
    gen.add_argument("-o", "--output", required=True, type=Path,  # names: docs/outputs.md
                     help="output PNG; with --count N the files are NAME-1.png ... NAME-N.png")
    where = gen.add_mutually_exclusive_group()
    where.add_argument("--model", type=Path,
                       help="model package folder (generate in this process; default: the shipped texture-mini)")
    where.add_argument("--endpoint", help="generate on a running sidecar instead, e.g. tcp://127.0.0.1:5555")
    where.add_argument("--connection-file", type=Path,
                       help="the sidecar's connection file (endpoint, key, Curve key), as serve writes it")
    gen.add_argument("--provider", default="auto", help="auto, cuda, dml, coreml or cpu (with --model)")
    _add_memory_option(gen)
    gen.add_argument("--upscale", type=Path, metavar="SR", help="upscale with this upscaler package (from "
                     "`aigc-bridge export MODEL.pth DIR`): to --target-size, else by its scale; `none`: resample "
                     "only (default: the model's own upscaler, e.g. texture-mini's 128 px stage, for --target-size)")
    _add_client_options(gen)
    _add_generation_options(gen)
    _add_control_options(gen)
    _add_upscaler_options(gen)
    images = gen.add_argument_group("image conditioning (docs/conditioning.md)")
    images.add_argument("--init", type=Path, metavar="IMAGE", help="start from this image (image to image); "
                        "resized to the generation size by cover-and-centre-crop, which defaults to its aspect at "
                        "the model's native area")
    images.add_argument("--strength", type=float, help="0 < S <= 1: how much of the schedule runs on the init "
                        "(default 0.8, or 1 with --mask)")
    images.add_argument("--mask", type=Path, metavar="MASK", help="inpainting: repaint where the mask is white "
                        "(grey = partly), the init's size")
    images.add_argument("--mask-blur", type=int, default=0, metavar="PX", help="feather the mask (Gaussian, px)")
    images.add_argument("--keep-unmasked", action=argparse.BooleanOptionalAction, default=True,
                        help="paste the init's own pixels back outside the mask, exactly (default); "
                        "--no-keep-unmasked keeps the whole decoded image (the VAE round trip changes them)")
    gen.set_defaults(run=_generate)

    sm = sub.add_parser("seamless", help="make an image tile by repainting a band around its seams",
                        description="Make IMAGE seamless: roll it by half, inpaint a band around the seams with "
                        "the model in tile mode, roll back. Pixels outside the band are the input's, exactly.")
    sm.add_argument("image", type=Path, help="PNG, JPEG or WebP")
    sm.add_argument("-o", "--output", required=True, type=Path, help="output PNG")
    sm.add_argument("--prompt", default="", help="what the band should look like (e.g. the material)")
    sm.add_argument("--negative", default="", help="negative prompt")
    sm.add_argument("--model", type=Path, help="model package folder (default: the shipped texture-mini)")
    sm.add_argument("--tile", choices=("both", "x"), default="both", help="wrap both axes, or x only (panorama)")
    sm.add_argument("--band", type=float, default=0.25, help="band width as a fraction of the side (default "
                    "%(default)s); the outer half of each side of it is feathered")
    sm.add_argument("--strength", type=float, default=1.0, help="how much of the schedule runs in the band")
    sm.add_argument("--seed", type=int, help="seed (default: random, printed)")
    sm.add_argument("--steps", type=int, help="denoising steps (default: the model's recommendation)")
    sm.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    sm.add_argument("--provider", default="auto", help="auto, cuda, dml, coreml or cpu")
    _add_memory_option(sm)
    sm.set_defaults(run=_seamless)

    up = sub.add_parser("upscale", help="upscale an image (tileable stays tileable), optionally with PBR maps",
                        description="Upscale IMAGE with a super-resolution model package. The tiling comes from "
                        "--tile, else from the image's provenance JSON (IMAGE.json) when there is one, else none.")
    up.add_argument("image", type=Path, help="PNG or JPEG (alpha is dropped)")
    up.add_argument("-o", "--output", required=True, type=Path, help="output PNG (or .exr)")
    up.add_argument("--scale", type=int, required=True, choices=(2, 4), help="the upscaler's factor")
    up.add_argument("--model", type=Path, metavar="SR", help="upscaler package, or a model package that ships one "
                    "(default: the shipped texture-mini's x4 stage, made for texture-mini's own images)")
    up.add_argument("--tile", choices=("none", "both", "x"),
                    help="which axes wrap (default: from IMAGE.json, else none)")
    up.add_argument("--pbr", action="store_true", help="also derive normal, roughness, height, AO, ORM at full size")
    up.add_argument("--normal-convention", choices=("opengl", "directx"), default="opengl")
    up.add_argument("--bit-depth", type=int, choices=(8, 16), default=8)
    up.add_argument("--provider", default="auto", help="auto, cuda, dml, coreml or cpu")
    _add_memory_option(up)
    _add_upscaler_options(up)
    up.set_defaults(run=_upscale)

    srv = sub.add_parser("serve", help="run the generation sidecar (ZeroMQ, docs/protocol.md)")
    srv.add_argument("--model", type=Path, help="model package folder to load (default: the shipped texture-mini)")
    srv.add_argument("--provider", default="auto", help="auto, cuda, dml, coreml or cpu")
    srv.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: all cores)")
    _add_memory_option(srv)
    srv.add_argument("--bind", default="tcp://127.0.0.1:5555",
                     help="endpoint to bind (default %(default)s; port 0 picks a free port; anything but "
                     "loopback or ipc:// needs --curve-key and --authorized-keys)")
    srv.add_argument("--connection-file", type=Path,
                     help="write the bound endpoint, HMAC key and Curve public key here (JSON, mode 0600)")
    srv.add_argument("--key-file", type=Path,
                     help="HMAC key that signs every frame (default: a new key when --connection-file is "
                     "given, else unsigned)")
    srv.add_argument("--curve-key", type=Path, help="the server's Curve secret key file (NAME.key_secret)")
    srv.add_argument("--authorized-keys", type=Path,
                     help="folder of client public keys (*.key) that may connect (CurveZMQ + ZAP)")
    srv.add_argument("--queue", type=int, default=8, help="jobs that may wait behind the running one "
                     "(more get a busy error at once; default %(default)s)")
    srv.add_argument("--preview-interval", type=float, default=0.5,
                     help="least seconds between preview images of a job; negative: no previews")
    srv.set_defaults(run=_serve)

    bat = sub.add_parser("batch", help="generate every job of a TOML job file into a folder (docs/batch.md)",
                         description="Validate the whole job file, then generate what is not done yet in "
                         "--out (resumable), writing each output set atomically and a manifest.")
    bat.add_argument("jobs", type=Path, help="the job file (TOML; examples/jobs.toml)")
    bat.add_argument("--out", required=True, type=Path, help="output folder; every file goes inside it")
    where = bat.add_mutually_exclusive_group()
    where.add_argument("--model", type=Path, help="model package folder (generate in this process, or in each "
                       "Ray actor with --ray; default: the shipped texture-mini)")
    where.add_argument("--endpoint", help="generate on a running sidecar, e.g. tcp://127.0.0.1:5555")
    where.add_argument("--connection-file", type=Path, help="the sidecar's connection file, as serve writes it")
    bat.add_argument("--provider", default="auto", help="auto, cuda, dml, coreml or cpu (with --model)")
    bat.add_argument("--threads", type=int, help="onnxruntime intra-op threads (with --model, without --ray)")
    _add_client_options(bat)
    bat.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                     help="run on a Ray cluster with Ray Data (needs --model, a path every node can read); "
                     "no ADDRESS: RAY_ADDRESS, the latest local cluster or a new local one")
    bat.add_argument("--workers", type=int, help="with --ray: actors, each holding a model (default: one per "
                     "GPU, else 1)")
    bat.add_argument("--batch-size", type=int, default=1,
                     help="images per engine call / per Ray batch (default %(default)s)")
    bat.add_argument("--blend", type=Path, help="apply the results to the jobs' objects / World in a copy of "
                     "this .blend, saved into --out (default: the job file's [blend] file)")
    bat.add_argument("--export-glb", type=Path, help="with a .blend: also export the scene as this GLB")
    bat.add_argument("--blender", help="run the Blender step with this Blender executable instead of the bpy "
                     "module")
    bat.add_argument("--check", action="store_true", help="only validate the job file (and the .blend targets "
                     "and, with --model, the sizes the model accepts), then stop")
    bat.set_defaults(run=_batch)

    keys = sub.add_parser("keys", help="make a CurveZMQ key pair (NAME.key public, NAME.key_secret secret)")
    keys.add_argument("dir", type=Path)
    keys.add_argument("--name", default="aigc-bridge", help="file name stem (default %(default)s)")
    keys.add_argument("--force", action="store_true", help="replace existing key files")
    keys.set_defaults(run=_keys)

    try:  # absent where only the runtime is installed (the Blender extension's bundled sidecar)
        from aigc_bridge_export import bench as bench_module  # stdlib-only at import; torch loads when it runs
        from aigc_bridge_export.families import FAMILY_NAMES  # stdlib-only too
    except ImportError:
        pass
    else:
        _add_exporter_commands(sub, bench_module, FAMILY_NAMES)

    # Its own parser (aigc_bridge.evaluation.run) reads the rest, so numpy loads only when it runs.
    evaluate = sub.add_parser("eval", add_help=False,
                              help="evaluate a texture model: colour and pattern adherence, seams, diversity")
    evaluate.add_argument("rest", nargs=argparse.REMAINDER)
    evaluate.set_defaults(run=_eval)
    return parser


def _add_exporter_commands(sub, bench_module, FAMILY_NAMES) -> None:  # noqa: N803
    """`export` and `bench`: only where the exporter (aigc_bridge_export) is installed."""

    exp = sub.add_parser("export", help="export a model (diffusers folder, hub id, .safetensors / .ckpt) or an "
                                        "upscaler (.pth) to an ONNX package")
    exp.add_argument("source", help="diffusers pipeline folder, Hugging Face hub id, or a single-file checkpoint "
                                    "(.safetensors; .ckpt loads weights-only); or an upscaler's weights file (.pth, "
                                    ".safetensors, ...: any architecture spandrel detects, e.g. Real-ESRGAN)")
    exp.add_argument("out_dir", type=Path)
    exp.add_argument("--config", metavar="DIR",
                     help="single files: a diffusers folder of the same family to take the configs from "
                          "(default: the family's hub repo, when online or cached)")
    exp.add_argument("--family", choices=FAMILY_NAMES,
                     help="single files: the family, where the tensors cannot tell (SD 2.x: sd2 = epsilon, "
                          "sd2-v = v-prediction)")
    exp.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]",
                     help="fuse a LoRA (kohya / A1111 or diffusers / PEFT format) at WEIGHT (default 1); repeatable")
    exp.add_argument("--embedding", action="append", default=[], metavar="FILE[:TOKEN]",
                     help="add a textual-inversion embedding as TOKEN (default: the file name); repeatable")
    exp.add_argument("--model-id", help="name results will cite (default: the source's name)")
    exp.add_argument("--fp16", action="store_true", help="fp16 weights (GPU); SDXL's VAE and T5 stay fp32")
    exp.add_argument("--no-t5", action="store_true",
                     help="SD 3 / 3.5: leave the T5 encoder out (saves 9.5-19 GB; zeros for its tokens, as diffusers)")
    exp.add_argument("--t5-max-length", type=int, help="SD 3 / FLUX.1: T5 tokens (default 256 / 512)")
    exp.add_argument("--distillation", choices=("none", "turbo", "lcm"),
                     help="override detection (turbo: 1 step, no guidance; lcm: 4 steps, LCM scheduler)")
    exp.add_argument("--optimize", choices=("none", "cpu", "gpu"), default="none",
                     help="onnxruntime fusions (attention, LayerNorm, GELU; gpu adds GroupNorm, NHWC conv, ...); "
                          "gpu-optimised graphs are verified on CUDA")
    exp.add_argument("--no-seamless", action="store_true",
                     help="skip the tile_both / tile_x graph variants (smaller and faster to export)")
    exp.add_argument("--controlnet", action="append", default=[], metavar="ID_OR_PATH[=NAME]",
                     help="export a diffusers ControlNet beside the model (name default: from the source, e.g. "
                          "depth, canny); repeatable")
    exp.add_argument("--control-inputs", action="store_true",
                     help="give the UNet its controlnet inputs without a controlnet, so add-controlnet can add some "
                          "later")
    exp.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    exp.set_defaults(run=_export)

    addcn = sub.add_parser("add-controlnet", help="export a ControlNet into an existing model package (atomic)")
    addcn.add_argument("package", type=Path, help="the model package folder")
    addcn.add_argument("source", help="the ControlNet: a diffusers folder or hub id")
    addcn.add_argument("--name", help="its name in requests (default: from the source, e.g. depth, canny)")
    addcn.add_argument("--base", metavar="SOURCE",
                       help="for a package exported without controlnet inputs: the model it was exported from "
                            "(a diffusers folder, hub id or checkpoint), to add the UNet's residual-input variant")
    addcn.set_defaults(run=_add_controlnet)


    bench = sub.add_parser("bench", help="time our runtime against diffusers on the real architectures",
                           description=bench_module.__doc__.splitlines()[0])
    bench_module.build_parser(bench)
    bench.set_defaults(run=_bench)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # eval's own parser reads the rest, --help included (see build_parser)
    args = (argparse.Namespace(run=_eval, rest=argv[1:]) if argv[:1] == ["eval"]
            else build_parser().parse_args(argv))
    try:
        return args.run(args)
    except AigcError as exc:
        print(f"aigc-bridge: error: {exc.message}" + (f" (field: {exc.field})" if exc.field else ""),
              file=sys.stderr)
        return 130 if exc.code == "cancelled" else 2


def _request_from_args(args: argparse.Namespace):
    from .input_image import InputImage
    from .request import GenerateRequest

    images = {name: InputImage.from_path(getattr(args, name), name) for name in ("init", "mask")
              if getattr(args, name, None) is not None}
    return GenerateRequest(**images, strength=args.strength, mask_blur=args.mask_blur,
                           keep_unmasked=args.keep_unmasked, prompt=args.prompt, negative_prompt=args.negative,
                           width=args.width, height=args.height, steps=args.steps, guidance=args.guidance,
                           seed=args.seed,
                           scheduler=args.scheduler, tile=args.tile, count=args.count, kind=args.kind,
                           format="exr" if args.output.suffix.lower() == ".exr" else "png", pbr=args.pbr,
                           target_size=args.target_size, normal_convention=args.normal_convention,
                           bit_depth=args.bit_depth, **_control_fields(args))


def _control_fields(args: argparse.Namespace) -> dict:
    from .input_image import InputImage

    return {"controls": tuple(parse_control(spec, i) for i, spec in enumerate(args.control)),
            "depth": None if args.depth is None else InputImage.from_path(args.depth, "depth")}


def output_paths(output: Path, count: int) -> list[Path]:
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i + 1}{output.suffix}") for i in range(count)]


def _generate(args: argparse.Namespace) -> int:
    from .assets.outputs import write_outputs
    from .progress import ProgressBar

    if args.output.suffix.lower() not in (".png", ".exr"):
        raise AigcError("invalid_request", f"output must be a .png or .exr file, got {args.output.name}", "output")
    request = _request_from_args(args)  # validate before loading anything
    if args.endpoint is not None or args.connection_file is not None:
        if args.upscale is not None:
            raise AigcError("invalid_request", "--upscale runs in this process; a sidecar upscales with its own "
                            "model's upscaler for --target-size", "upscale")
        return _generate_remote(args, request)
    from .models import default_model_dir

    args.model = args.model or default_model_dir()
    if args.model is None:
        raise AigcError("no_model", NO_MODEL_HELP, "model")
    from .engine import Pipeline

    pipeline = Pipeline.load(args.model, provider=args.provider, memory_limit=_memory_limit(args))
    resolved = pipeline.resolve(request)
    from .upscale.runner import wants_own_upscaler

    upscale = args.upscale
    if upscale is None and wants_own_upscaler(pipeline.manifest, resolved):
        upscale = pipeline.package.root  # the model's own upscaler, with this command's memory options
    upscaler = _upscaler(args, None if upscale is None or str(upscale) == "none" else upscale)
    bar = ProgressBar(pipeline.denoising_steps(resolved), "denoising")
    interrupted: list[bool] = []
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    try:
        result = pipeline.generate(resolved, callback=lambda ev: bar.update(ev.step) or not interrupted)
    finally:
        signal.signal(signal.SIGINT, previous)
        bar.close()
    for message in result.warnings:
        print(f"aigc-bridge: warning: {message}", file=sys.stderr)
    for i, path in enumerate(output_paths(args.output, resolved.count)):
        files = write_outputs(result.images[i], result.metadata(i), path, kind=resolved.kind, pbr=resolved.pbr,
                              target_size=resolved.target_size, normal_convention=resolved.normal_convention,
                              bit_depth=resolved.bit_depth, upscaler=upscaler)
        _report(path, [(f.path, f.role, f.colour_space) for f in files], result.seeds[i],
                f"{files[0].width}x{files[0].height}  {resolved.steps} steps  {result.timings_ms['total']:.0f} ms  "
                f"({result.provider})")
    return 0


def _report(path: Path, files: list[tuple[Path, str, str | None]], seed: int | None, detail: str) -> None:
    """One line per image, then one indented line per other file of its set (role, colour space)."""
    print(f"{path}  {'' if seed is None else f'seed {seed}  '}{detail}")
    for other, role, colour_space in files:
        if other != path:
            print(f"  {other}  ({role}{', ' + colour_space if colour_space else ''})")


def _connect(args: argparse.Namespace):
    from .client import Client
    from .server.security import read_key_file

    options: dict = {"timeout": args.timeout}
    if args.client_key is not None and args.server_key is None and args.connection_file is None:
        raise AigcError("curve_key", "--client-key needs --server-key (or a connection file with the "
                        "server's public key)", "server_key")
    if args.client_key is not None:
        options["client_keys"] = args.client_key
    if args.connection_file is not None:
        return Client.from_connection_file(args.connection_file, **options)
    key = read_key_file(args.key_file) if args.key_file is not None else None
    server_key = None
    if args.server_key is not None:
        from zmq.auth import load_certificate

        try:
            server_key = load_certificate(str(args.server_key))[0]
        except (OSError, ValueError) as exc:
            raise AigcError("curve_key", f"cannot read {args.server_key}: {exc}", "server_key") from None
    return Client(args.endpoint, key=key, server_public_key=server_key, **options)


def _generate_remote(args: argparse.Namespace, request) -> int:
    """The same command, run by a sidecar through the client: nothing heavy is loaded here."""
    from .assets.writers import write_all_atomic
    from .client import request_fields
    from .errors import Cancelled
    from .progress import ProgressBar

    fields = request_fields(request)  # input images travel as they are (protocol 1.2 frames)
    bars: list[ProgressBar] = []

    def on_progress(event) -> None:
        if event.stage == "queued":
            return
        if not bars:
            bars.append(ProgressBar(event.total, "denoising"))
        bars[0].update(event.step)

    with _connect(args) as client:
        try:
            response = client.generate(request.prompt, on_progress=on_progress, **fields)
        except KeyboardInterrupt:
            raise Cancelled("interrupted: the job was cancelled on the sidecar") from None
        finally:
            for bar in bars:
                bar.close()
    for message in response.warnings:
        print(f"aigc-bridge: warning: {message}", file=sys.stderr)
    for i, path in enumerate(output_paths(args.output, len(response.images))):
        image = response.images[i]
        named = [(path.with_suffix(".png"), "image", "srgb", image.data)]
        named += [(path.with_name(path.stem + o.suffix), o.role, o.colour_space, o.data) for o in image.outputs]
        write_all_atomic([(p, data) for p, _, _, data in named])
        meta = image.metadata
        _report(path.with_suffix(".png"), [row[:3] for row in named], image.seed,
                f"{image.width}x{image.height}  {response.request['steps']} steps  "
                f"{meta.get('timings_ms', {}).get('total', 0.0):.0f} ms  ({meta.get('provider', '?')}, sidecar)")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .server.app import launch
    from .server.core import ServerConfig
    from .server.security import new_hmac_key, read_curve_secret, read_key_file

    if args.key_file is not None:
        key = read_key_file(args.key_file)
    else:
        key = new_hmac_key() if args.connection_file is not None else None
    if args.queue < 0:
        raise AigcError("invalid_request", "--queue must be 0 or more", "queue")
    config = ServerConfig(
        bind=args.bind, key=key, queue_size=args.queue,
        curve_keys=read_curve_secret(args.curve_key) if args.curve_key is not None else None,
        authorized_keys=args.authorized_keys,
        preview_interval_s=None if args.preview_interval < 0 else args.preview_interval)
    if config.authorized_keys is not None and config.curve_keys is None:
        raise AigcError("curve_key", "--authorized-keys needs --curve-key (the server's secret key)",
                        "curve_key")
    from .models import default_model_dir

    return launch(config, model_dir=args.model or default_model_dir(), provider=args.provider, threads=args.threads,
                  connection_file=args.connection_file, memory_limit=_memory_limit(args))


def _batch(args: argparse.Namespace) -> int:
    """Validate everything (file, targets, model limits) before loading anything slow, then run."""
    from .batch import BatchOptions, load_job_file, run_batch
    from .batch.jobfile import input_problems, output_filenames
    from .batch.runner import describe
    from .batch.spec import JobFileError

    if args.batch_size < 1 or (args.workers is not None and args.workers < 1):
        raise AigcError("invalid_request", "--batch-size and --workers must be 1 or more", "batch_size")
    if args.workers is not None and args.ray is None:
        raise AigcError("invalid_request", "--workers needs --ray (without it one process makes the images)",
                        "workers")
    if args.ray is not None and args.threads is not None:
        raise AigcError("invalid_request", "--threads is for runs in this process; each Ray actor gets "
                        "CPUs / workers threads", "threads")
    if args.ray is not None and args.model is None:
        raise AigcError("invalid_request", "--ray needs --model: each Ray actor loads the model itself",
                        "model")
    if args.model is None and args.endpoint is None and args.connection_file is None:
        from .models import default_model_dir

        args.model = default_model_dir()
    job_file = load_job_file(args.jobs)
    blend = args.blend or job_file.blend_file
    if args.export_glb is not None:
        if blend is None:
            raise AigcError("invalid_request", "--export-glb needs --blend (or [blend] file in the job file)",
                            "export_glb")
        taken = {n.casefold() for j in job_file.jobs for s, r in zip(j.stems, j.requests)
                 for n in output_filenames(s, j.kind, r.pbr, j.exr)}
        if args.export_glb.resolve().parent == args.out.resolve() and args.export_glb.name.casefold() in taken:
            raise AigcError("invalid_request", f"--export-glb {args.export_glb} is the name of an output file",
                            "export_glb")
    if blend is not None:
        from .batch.blend import check_targets, find_scene_import

        find_scene_import()
        problems = check_targets(blend, list(job_file.jobs), args.blender)
        if problems:
            raise JobFileError(problems, args.jobs)
    if args.check and input_problems(job_file.jobs):
        raise JobFileError(input_problems(job_file.jobs), args.jobs)
    if job_file.projects:
        from .batch.blend import find_scene_import
        from .batch.project import check_project_targets

        find_scene_import()
        problems = check_project_targets(list(job_file.projects), args.blender)
        if problems:
            raise JobFileError(problems, args.jobs)
    if args.check and args.model is None:
        print(f"{args.jobs}: {len(job_file.jobs)} jobs, {sum(len(j.stems) for j in job_file.jobs)} output sets: ok")
        return 0
    backend = _batch_backend(args)
    try:
        if args.check:
            problems = backend.problems(list(job_file.jobs))
            if problems:
                raise JobFileError(problems, args.jobs)
            print(f"{args.jobs}: {len(job_file.jobs)} jobs, {sum(len(j.stems) for j in job_file.jobs)} output "
                  "sets: ok")
            return 0
        options = BatchOptions(out=args.out, batch_size=args.batch_size, blend=blend, export_glb=args.export_glb,
                               blender=args.blender)
        summary = run_batch(job_file, backend, options)
    finally:
        backend.close()
    print(describe(summary, args.out))
    return summary.exit_code


def _batch_backend(args: argparse.Namespace):
    if args.endpoint is not None or args.connection_file is not None:
        from .batch.backends import SidecarBackend

        return SidecarBackend(_connect(args))
    if args.model is None:
        raise AigcError("no_model", NO_MODEL_HELP, "model")
    provider = None if args.provider == "auto" else args.provider
    if args.ray is not None:
        from .batch.ray_backend import RayBackend

        return RayBackend(args.model, address=args.ray or None, workers=args.workers, batch_size=args.batch_size,
                          provider=provider)
    from .batch.backends import LocalBackend

    return LocalBackend(args.model, provider=provider, threads=args.threads)


def _keys(args: argparse.Namespace) -> int:
    from .server.security import make_keypair

    public, secret = make_keypair(args.dir, args.name, force=args.force)
    print(f"public key: {public}  (give it to the other side: a server lists clients' in --authorized-keys)")
    print(f"secret key: {secret}  (mode 0600; keep it here)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .upscale.runner import UPSCALER_SUFFIXES

    try:
        from aigc_bridge_export.onnx_export import export_pipeline
        from aigc_bridge_export.single_file import is_diffusion_checkpoint
    except ImportError as exc:
        raise AigcError("missing_dependency", f"export needs the export extra ({exc.name} is missing): "
                        "pip install 'aigc-bridge[export]'", "export") from None
    source = Path(args.source)
    if source.suffix.lower() in UPSCALER_SUFFIXES and source.is_file() and not is_diffusion_checkpoint(source):
        return _export_upscaler(args)  # one weights file that is not a Stable Diffusion checkpoint: an upscaler
    export_pipeline(args.source, args.out_dir, model_id=args.model_id, fp16=args.fp16,
                    distillation=args.distillation, overwrite=args.overwrite, optimize=args.optimize,
                    seamless=not args.no_seamless, config=args.config, family=args.family, loras=args.lora,
                    embeddings=args.embedding, controlnets=args.controlnet, control_inputs=args.control_inputs,
                    t5=not args.no_t5, t5_max_length=args.t5_max_length)
    return 0


def _add_controlnet(args: argparse.Namespace) -> int:
    try:
        from aigc_bridge_export.controlnet import add_controlnet
    except ImportError as exc:
        raise AigcError("missing_dependency", f"add-controlnet needs the export extra ({exc.name} is missing): "
                        "pip install 'aigc-bridge[export]'", "export") from None
    add_controlnet(args.package, args.source, args.name, base=args.base)
    return 0


def _export_upscaler(args: argparse.Namespace) -> int:
    for flag, value in (("--fp16", args.fp16), ("--distillation", args.distillation),
                        ("--optimize", args.optimize != "none")):
        if value:
            raise AigcError("invalid_request", f"{flag} is for diffusers pipelines, not upscalers", flag[2:])
    try:
        from aigc_bridge_export.spandrel_import import import_spandrel
        from aigc_bridge_export.upscaler_export import export_upscaler

        import_spandrel()
    except ImportError as exc:
        raise AigcError("missing_dependency", f"upscaler export needs the export extra ({exc.name} is missing): "
                        "pip install 'aigc-bridge[export]'", "export") from None
    export_upscaler(args.source, args.out_dir, model_id=args.model_id, seamless=not args.no_seamless,
                    overwrite=args.overwrite)
    return 0


def _upscaler(args: argparse.Namespace, source: Path | None):
    """The upscaler ``source`` names (None: none), with the memory options and a progress bar."""
    if source is None:
        return None
    from .progress import ProgressBar
    from .upscale import load_upscaler
    from .upscale.runner import DEFAULT_MEMORY_LIMIT

    upscaler = load_upscaler(source, provider=args.provider, tile_size=args.tile_size,
                             memory_limit=_memory_limit(args) or DEFAULT_MEMORY_LIMIT)
    bars: list[ProgressBar] = []

    def progress(done: int, total: int) -> None:
        if total > 1:
            if not bars:
                bars.append(ProgressBar(total, "upscaling"))
            bars[0].update(done)
            if done == total:
                bars.pop().close()

    upscaler.progress = progress
    return upscaler


def _upscale(args: argparse.Namespace) -> int:
    from .assets.outputs import write_outputs
    from .assets.readers import read_image
    from .models import default_model_dir

    image = read_image(args.image)
    source = args.model or default_model_dir()
    if source is None:
        raise AigcError("no_model", "no upscaler given and no default model: pass --model SR, an upscaler "
                        "package made by `aigc-bridge export MODEL.pth DIR`", "model")
    upscaler = _upscaler(args, source)
    if upscaler.scale != args.scale:
        raise AigcError("invalid_request", f"--scale {args.scale}: {upscaler.name} upscales x{upscaler.scale} "
                        f"only; pass --scale {upscaler.scale}, or an x{args.scale} model with --model", "scale")
    tile, origin = args.tile, "--tile"
    if tile is None:
        tile, origin = _provenance_tile(args.image)
    metadata = {"tile": tile, "source_image": args.image.name, "width": image.shape[1], "height": image.shape[0]}
    files = write_outputs(image, metadata, args.output, pbr=args.pbr, normal_convention=args.normal_convention,
                          bit_depth=args.bit_depth, upscaler=upscaler)
    _report(files[0].path, [(f.path, f.role, f.colour_space) for f in files], None,
            f"{files[0].width}x{files[0].height}  {upscaler.name} x{upscaler.scale}  tile {tile} ({origin})")
    return 0


def _seamless(args: argparse.Namespace) -> int:
    from .assets.outputs import write_outputs
    from .assets.readers import read_image
    from .assets.seams import seam_ratio
    from .engine import Pipeline
    from .input_image import InputImage
    from .models import default_model_dir
    from .progress import ProgressBar
    from .seamless import make_seamless

    InputImage.from_path(args.image, "image")  # the header's limits, before anything decodes it
    if args.output.suffix.lower() != ".png":
        raise AigcError("invalid_request", f"output must be a .png file, got {args.output.name}", "output")
    image = read_image(args.image)
    model = args.model or default_model_dir()
    if model is None:
        raise AigcError("no_model", NO_MODEL_HELP, "model")
    pipeline = Pipeline.load(model, provider=args.provider, memory_limit=_memory_limit(args))
    bar = ProgressBar(1, "denoising")

    def progress(event) -> None:
        bar.total = event.total
        bar.update(event.step)

    try:
        result = make_seamless(pipeline, image, prompt=args.prompt, negative_prompt=args.negative, band=args.band,
                               tile=args.tile, strength=args.strength, seed=args.seed, steps=args.steps,
                               guidance=args.guidance, callback=progress)
    finally:
        bar.close()
    for message in result.notes:
        print(f"aigc-bridge: {message}", file=sys.stderr)
    generation = result.generation
    metadata = {**generation.metadata(0), "seamless": {"source_image": args.image.name, "band": args.band,
                                                       "tile": args.tile}}
    for name in ("init", "mask"):
        metadata.pop(name, None)
    files = write_outputs(result.image, metadata, args.output, kind="texture", pbr=False)
    axes = (0, 1) if args.tile == "both" else (1,)
    before = ", ".join(f"{seam_ratio(image, a):.2f}" for a in axes)
    after = ", ".join(f"{seam_ratio(result.image, a):.2f}" for a in axes)
    _report(files[0].path, [(f.path, f.role, f.colour_space) for f in files], generation.seeds[0],
            f"{files[0].width}x{files[0].height}  seam ratio {before} -> {after}  "
            f"{(result.band == 0).mean():.0%} of pixels unchanged  {generation.timings_ms['total']:.0f} ms")
    return 0


def _provenance_tile(image: Path) -> tuple[str, str]:
    """The tiling our own provenance JSON beside an image records (``outputs.tile``), else none."""
    import json

    doc = image.with_suffix(".json")
    try:
        data = json.loads(doc.read_text(encoding="utf-8"))
        tile = data.get("outputs", {}).get("tile") or data.get("tile")
    except (OSError, ValueError, AttributeError):
        return "none", "default"
    return (tile, doc.name) if tile in ("none", "both", "x") else ("none", "default")


def _eval(args: argparse.Namespace) -> int:
    from .evaluation import main as eval_main

    return eval_main(args.rest)


def _bench(args: argparse.Namespace) -> int:
    from aigc_bridge_export import bench

    return bench.report(args)


if __name__ == "__main__":
    sys.exit(main())
