"""`mvmtargets`: synth | list | extract | verify | info | show. Thin: parsing and printing only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from mvm_targets.errors import MvmTargetsError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Decode videos once, compute VIOLETv2's MVM targets, cache them in HDF5 shards.")

# The cache folder has one name across commands: `--cache` (extract also takes its older `--out`);
# verify, info and show take it as their first argument too: `mvmtargets verify cache/`.
CacheArg = Annotated[Optional[Path], typer.Argument(
    help="Cache folder (the same as --cache; default: cache).", show_default=False)]
CacheOpt = Annotated[Optional[Path], typer.Option("--cache", help="Cache folder (default: cache).",
                                                  show_default=False)]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"mvmtargets {version('mvm-targets')}")
        except PackageNotFoundError:
            typer.echo("mvmtargets (version unknown: the package is not installed)")
        raise typer.Exit(0)


@app.callback()
def _options(
    version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
    debug: Annotated[bool, typer.Option(
        "--debug", help="Print the full traceback of an unexpected error (also MVM_DEBUG=1).")] = False,
) -> None:
    """Decode videos once, compute VIOLETv2's MVM targets, cache them in HDF5 shards."""


def _cache_folder(positional: Optional[Path], option: Optional[Path]) -> Path:
    """The cache folder from the argument or --cache (they must agree); it must exist."""
    if positional is not None and option is not None and positional != option:
        raise MvmTargetsError(f"cache folder given twice: '{positional}' and --cache '{option}'")
    cache = positional or option or Path("cache")
    if not cache.exists():
        raise MvmTargetsError(f"{cache}: no such cache folder; run `mvmtargets extract ... --cache {cache}` first")
    if not cache.is_dir():
        raise MvmTargetsError(f"{cache}: not a folder (expected a cache folder)")
    return cache


def _dataset_name(value: Optional[str]) -> Optional[str]:
    """--dataset names one folder of the cache: a path would read or write outside it."""
    from mvm_targets.names import check_name

    return None if value is None else check_name(value, "--dataset")


DatasetOpt = Annotated[Optional[str], typer.Option(help="Dataset name (default: the input folder's name).",
                                                   callback=_dataset_name)]
CachedDatasetOpt = Annotated[Optional[str], typer.Option(
    "--dataset", help="Dataset inside the cache (default: every dataset in it).", callback=_dataset_name)]


@app.command()
def synth(out: Annotated[Path, typer.Argument(help="Output folder.")],
          clips: Annotated[int, typer.Option(help="Number of clips.")] = 64,
          seed: Annotated[int, typer.Option(help="Random seed; the output is deterministic for it.")] = 0,
          frames: Annotated[int, typer.Option(help="Frames per clip.")] = 24,
          size: Annotated[int, typer.Option(help="Clip width and height in pixels.")] = 112,
          object_scale: Annotated[float, typer.Option(help="Multiplies the shapes' sizes.")] = 1.0) -> None:
    """Write the synthetic video-text dataset (moving shapes, true captions, splits, QA)."""
    from mvm_targets.synth import build_synthetic_dataset

    summary = build_synthetic_dataset(out, clips=clips, seed=seed, num_frames=frames, size=size,
                                      object_scale=object_scale)
    typer.echo(f"wrote {summary.clips} clips to {summary.out_dir} in {summary.seconds:.1f}s "
               f"(captions: {Path(summary.out_dir) / 'captions.csv'})")


@app.command("list")
def list_command(frames: Annotated[int, typer.Option(help="T used to print the per-clip shapes.")] = 4,
                 size: Annotated[int, typer.Option(help="S used to print the per-clip shapes.")] = 224) -> None:
    """List the registered targets, their variants, grids, dtypes and per-clip shapes."""
    from mvm_targets.targets import ALIASES, build_target, list_targets, list_variants

    typer.echo(f"{'target':22} {'grid':6} {'dtype':8} {'shape (T=%d, S=%d)' % (frames, size):24} {'loss':4}  stored")
    for name in list_targets():
        for variant in list_variants(name):
            try:
                spec = build_target(f"{name}:{variant}").spec
            except MvmTargetsError as error:
                typer.echo(f"{name + ':' + variant:22} unavailable: {error}")
                continue
            shape = str(tuple(spec.clip_shape(frames, size)))
            typer.echo(f"{name + ':' + variant:22} {spec.grid.value:6} {spec.dtype:8} {shape:24} {spec.loss:4}  "
                       f"{'yes' if spec.stored else 'no (reads frames)'}")
    typer.echo("aliases: " + ", ".join(f"{a} -> {p}" for a, p in ALIASES.items()))


@app.command()
def extract(
    inputs: Annotated[list[Path], typer.Argument(help="Folders, path lists (.txt) or tables (.csv/.tsv).")],
    target: Annotated[list[str], typer.Option("--target", "-t", help="name[:variant], repeatable, or 'all'.")],
    option: Annotated[Optional[list[str]], typer.Option(
        "--option", "-o", help="Target setting NAME.KEY=VALUE, e.g. flow.preset=ultrafast; repeatable. "
        "NAME.codec=fp16|int8|fp16-half|int8-half picks how a float target is stored (a new target id; "
        "the reader decodes it).")] = None,
    out: Annotated[Path, typer.Option("--cache", "--out", help="Cache folder to write into (--out: the older name).")]
    = Path("cache"),
    dataset: DatasetOpt = None,
    frames: Annotated[int, typer.Option(help="T: frames sampled per video.")] = 4,
    size: Annotated[int, typer.Option(help="S: short side resized to S, centre crop S x S.")] = 224,
    device: Annotated[str, typer.Option(
        help="Device for model-based targets: auto (CUDA where present, else cpu), cpu, cuda or cuda:N.")] = "auto",
    decoder: Annotated[str, typer.Option(
        help="Video decoder: pyav, or torchcodec (optional: pip install 'mvm-targets[torchcodec]' and a system "
        "FFmpeg; decodes on a CUDA --device where its build can). Same frames; pixels differ by colour rounding.")]
    = "pyav",
    batch_size: Annotated[int, typer.Option(help="Clips per target computation.")] = 8,
    workers: Annotated[Optional[int], typer.Option(
        help="Decode worker processes (0: inline; default: 0 on CPU, cores - 1 on CUDA so the GPU never waits).")]
    = None,
    shard_index: Annotated[Optional[int], typer.Option(help="This process's share (default: $RANK or 0).")] = None,
    num_shards: Annotated[Optional[int], typer.Option(help="Number of shares (default: $WORLD_SIZE or 1).")] = None,
    clips_per_shard: Annotated[int, typer.Option(help="Clips per HDF5 shard file.")] = 64,
    short_videos: Annotated[str, typer.Option(help="Videos with fewer than T frames: skip or repeat.")] = "skip",
    compression: Annotated[str, typer.Option(help="HDF5 compression: lzf, gzip or none.")] = "lzf",
    weights: Annotated[str, typer.Option(help="Teacher weights: pretrained (local files) or random (smoke tests).")]
    = "pretrained",
    weights_dir: Annotated[Optional[Path], typer.Option(help="Folder of teacher weights (default: $MVM_WEIGHTS).")]
    = None,
    allow_pickle: Annotated[bool, typer.Option(help="Allow unpickling DALL-E's encoder.pkl (runs code from it).")]
    = False,
    retry_failed: Annotated[bool, typer.Option(help="Retry videos that failed in an earlier run.")] = False,
    root: Annotated[Optional[Path], typer.Option(
        "--root", "--video-root", help="Folder that relative paths in lists and tables refer to, and that keys are "
        "relative to (default: each list's own folder; an entry outside it is an error).")] = None,
    launcher: Annotated[str, typer.Option(
        help="local: run here (torchrun splits by $RANK/$WORLD_SIZE); slurm: submit a job array of --array "
        "shares through submitit, each resuming from the ledger and requeued on preemption.")] = "local",
    array: Annotated[Optional[int], typer.Option(help="--launcher slurm: number of array tasks (key-hash shares).")]
    = None,
    slurm_partition: Annotated[Optional[str], typer.Option(help="--launcher slurm: partition.")] = None,
    slurm_time: Annotated[int, typer.Option(help="--launcher slurm: minutes per attempt.")] = 24 * 60,
    slurm_gpus: Annotated[int, typer.Option(help="--launcher slurm: GPUs per array task.")] = 0,
    slurm_cpus: Annotated[Optional[int], typer.Option(help="--launcher slurm: CPUs per array task.")] = None,
    slurm_mem_gb: Annotated[Optional[int], typer.Option(help="--launcher slurm: memory per array task.")] = None,
    slurm_folder: Annotated[Optional[Path], typer.Option(
        help="--launcher slurm: submitit's folder of task logs (default: slurm-logs/extract-<dataset>).")] = None,
    slurm_cluster: Annotated[str, typer.Option(
        help="--launcher slurm: submitit cluster (local runs the array as processes on this machine).")] = "slurm",
) -> None:
    """Decode each video once and cache frames plus every requested target."""
    from mvm_targets.extract import ExtractConfig, extract as run_extract, format_stages
    from mvm_targets.interrupts import raise_if_interrupted
    from mvm_targets.settings import compression_filter, setting_problem
    from mvm_targets.store.layout import ClipCache
    from mvm_targets.store.manifest import read_manifest
    from mvm_targets.video.decode import DECODERS, SamplingConfig
    from mvm_targets.video.inputs import check_default_dataset, default_dataset_name, discover_inputs

    if out.exists() and not out.is_dir():
        raise MvmTargetsError(f"--cache {out}: is a file, not a folder")
    index = shard_index if shard_index is not None else int(os.environ.get("RANK", 0))
    count = num_shards if num_shards is not None else int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= index < count:
        raise MvmTargetsError(f"--shard-index {index} is outside 0..{count - 1}")
    # every option is checked before a teacher is built or a video decoded
    settings = {"frames": frames, "size": size, "batch_size": batch_size, "clips_per_shard": clips_per_shard,
                "compression": compression, "short_videos": short_videos, "weights": weights}
    if workers is not None:
        settings["workers"] = workers
    for name, value in settings.items():
        problem = setting_problem(name, value)
        if problem:
            raise MvmTargetsError(f"--{name.replace('_', '-')} {problem}")
    if decoder not in DECODERS:
        raise MvmTargetsError(f"--decoder must be one of {', '.join(DECODERS)}, got '{decoder}'")
    dataset_name = dataset if dataset is not None else default_dataset_name(inputs)
    if launcher not in ("local", "slurm"):
        raise MvmTargetsError(f"--launcher must be local or slurm, got '{launcher}'")
    if launcher == "slurm":
        from mvm_targets.targets.registry import parse_target_ref

        for ref in target:  # a bad name or input fails here once, not in every array task
            if ref != "all":
                parse_target_ref(ref)
        discover_inputs(inputs, root)
        _submit_extract(array, dataset_name, slurm_folder, slurm_partition, slurm_time, slurm_gpus, slurm_cpus,
                        slurm_mem_gb, slurm_cluster)
        return
    from mvm_targets.teachers.runtime import resolve_device

    try:
        device = str(resolve_device(device))
    except (ValueError, RuntimeError) as error:
        raise MvmTargetsError(f"--device {device}: {error}") from None
    decode_device = _decode_device(decoder, device)  # before any teacher is built
    runtime = {"device": device, "weights": weights, "weights_dir": weights_dir, "allow_pickle": allow_pickle}
    targets = _build_targets(target, runtime, option or [])
    if workers is None:
        workers = max(1, min(8, (os.cpu_count() or 2) - 1)) if device.startswith("cuda") else 0
    items = discover_inputs(inputs, root)
    sampling = SamplingConfig(num_frames=frames, size=size, short_videos=short_videos, decoder=decoder,
                              decode_device=decode_device)
    if dataset is None:
        manifest = ClipCache(out / dataset_name / sampling.frames_id).manifest_path
        check_default_dataset(items, dataset_name, read_manifest(manifest))
    config = ExtractConfig(
        cache_root=out, dataset=dataset_name, sampling=sampling,
        batch_size=batch_size, workers=workers, clips_per_shard=clips_per_shard,
        compression=compression_filter(compression), shard_index=index, num_shards=count,
        retry_failed=retry_failed)
    typer.echo(f"dataset '{config.dataset}': {len(items)} videos; targets: "
               f"{', '.join(t.spec.target_id for t in targets)}; cache: {out / config.dataset / config.sampling.frames_id}"
               + (f"; share {index}/{count}" if count > 1 else "") + f"; device: {device}"
               + (f"; decoder: torchcodec ({decode_device})" if decoder == "torchcodec" else ""))
    summary = _with_progress(lambda progress: run_extract(items, targets, config, on_progress=progress,
                                                          on_estimate=typer.echo))
    raise_if_interrupted()  # a Ctrl-C swallowed after the last progress report
    failures = ", ".join(f"{k}: {v}" for k, v in sorted(summary.failures.items()))
    earlier = (f", {summary.failed_earlier} failed or skipped in an earlier run (--retry-failed retries them)"
               if summary.failed_earlier else "")
    typer.echo(f"done {summary.done}, already done {summary.already_done}, failed {summary.failed}"
               f"{f' ({failures})' if failures else ''}, skipped {summary.skipped}{earlier}; "
               f"{summary.bytes_written / 1e6:.1f} MB written in {summary.seconds:.1f}s")
    typer.echo(format_stages(summary, workers))


def _decode_device(decoder: str, device: str) -> str:
    """Where `--decoder` reads pixels: torchcodec on the --device GPU where its build can, else the CPU.
    A torchcodec that cannot run here is an error; one that cannot use the GPU falls back with a note."""
    if decoder != "torchcodec":
        return "cpu"
    from mvm_targets.video.decode_torchcodec import INSTALL_HINT, cuda_decode_problem, torchcodec_problem

    problem = torchcodec_problem()
    if problem:
        raise MvmTargetsError(f"--decoder torchcodec: torchcodec cannot be used here ({problem}); {INSTALL_HINT}")
    if not device.startswith("cuda"):
        return "cpu"
    problem = cuda_decode_problem(device)
    if problem:
        typer.echo(f"--decoder torchcodec: cannot decode on {device} ({problem}); decoding on the CPU")
        return "cpu"
    return device


def _submit_extract(array: Optional[int], dataset: str, folder: Optional[Path], partition: Optional[str],
                    time_min: int, gpus: int, cpus: Optional[int], mem_gb: Optional[int], cluster: str) -> None:
    """`extract --launcher slurm`: submit this very command line as `array` shares."""
    import sys

    from mvm_targets.launch_slurm import SlurmExtractOptions, submit_extract_array

    if array is None or array < 1:
        raise MvmTargetsError("--launcher slurm needs --array N (N >= 1): the number of shares to submit")
    folder = folder or Path("slurm-logs") / f"extract-{dataset}"
    options = SlurmExtractOptions(partition=partition, time_min=time_min, gpus_per_task=gpus, cpus_per_task=cpus,
                                  mem_gb=mem_gb, cluster=cluster)
    jobs = submit_extract_array(sys.argv[1:], array, folder, options)
    typer.echo(f"submitted {len(jobs)} share(s) as job array {str(jobs[0].job_id).split('_')[0]}; "
               f"task logs in {folder}; check the cache with `mvmtargets verify` once they finish")


@app.command()
def estimate(
    inputs: Annotated[list[Path], typer.Argument(help="Folders, path lists (.txt) or tables (.csv/.tsv).")],
    target: Annotated[list[str], typer.Option("--target", "-t", help="name[:variant], repeatable, or 'all'.")],
    option: Annotated[Optional[list[str]], typer.Option(
        "--option", "-o", help="Target setting NAME.KEY=VALUE, as for extract (NAME.codec=int8 included: the "
        "sizes are those of the codec); repeatable.")] = None,
    frames: Annotated[int, typer.Option(help="T: frames sampled per video.")] = 4,
    size: Annotated[int, typer.Option(help="S: short side resized to S, centre crop S x S.")] = 224,
    compression: Annotated[str, typer.Option(help="HDF5 compression: lzf, gzip or none.")] = "lzf",
    clips_per_shard: Annotated[int, typer.Option(help="Clips per HDF5 shard file.")] = 64,
    short_videos: Annotated[str, typer.Option(help="Videos with fewer than T frames: skip or repeat.")] = "skip",
    sample: Annotated[int, typer.Option(help="Videos decoded and computed to measure (spread over the inputs).")]
    = 8,
    device: Annotated[str, typer.Option(help="Device for model-based targets (auto: CUDA where present).")]
    = "auto",
    weights: Annotated[str, typer.Option(help="Teacher weights: pretrained (local files) or random.")]
    = "pretrained",
    weights_dir: Annotated[Optional[Path], typer.Option(help="Folder of teacher weights (default: $MVM_WEIGHTS).")]
    = None,
    allow_pickle: Annotated[bool, typer.Option(help="Allow unpickling DALL-E's encoder.pkl (runs code from it).")]
    = False,
    root: Annotated[Optional[Path], typer.Option(
        "--root", "--video-root", help="Folder that relative paths in lists and tables refer to.")] = None,
) -> None:
    """Print the bytes per clip of frames and each target, and the total for all inputs; writes nothing."""
    from mvm_targets.estimate import estimate_cache, human_bytes
    from mvm_targets.extract import ExtractConfig
    from mvm_targets.settings import compression_filter, setting_problem
    from mvm_targets.teachers.runtime import resolve_device
    from mvm_targets.video.decode import SamplingConfig
    from mvm_targets.video.inputs import discover_inputs

    settings = {"frames": frames, "size": size, "clips_per_shard": clips_per_shard, "compression": compression,
                "short_videos": short_videos, "weights": weights}
    for name, value in settings.items():
        problem = setting_problem(name, value)
        if problem:
            raise MvmTargetsError(f"--{name.replace('_', '-')} {problem}")
    if sample < 1:
        raise MvmTargetsError(f"--sample must be an integer >= 1, got {sample}")
    try:
        device = str(resolve_device(device))
    except (ValueError, RuntimeError) as error:
        raise MvmTargetsError(f"--device {device}: {error}") from None
    runtime = {"device": device, "weights": weights, "weights_dir": weights_dir, "allow_pickle": allow_pickle}
    targets = _build_targets(target, runtime, option or [])
    items = discover_inputs(inputs, root)
    if not items:
        raise MvmTargetsError(f"no videos found in {', '.join(map(str, inputs))}")
    config = ExtractConfig(cache_root=Path("."), dataset="estimate",
                           sampling=SamplingConfig(num_frames=frames, size=size, short_videos=short_videos),
                           clips_per_shard=clips_per_shard, compression=compression_filter(compression))
    try:
        result = estimate_cache(items, targets, config, sample=sample)
    except ValueError as error:
        raise MvmTargetsError(str(error)) from None
    typer.echo(f"measured {result.sampled} of {len(items)} videos (T={frames}, S={size}, compression {compression}, "
               f"{clips_per_shard} clips per shard)" + (f"; {result.failed} sampled video(s) failed" if result.failed
                                                        else ""))
    for size_law in result.sizes:
        typer.echo(f"  {size_law.set_id:32} {human_bytes(size_law.bytes_per_clip(clips_per_shard)):>10} per clip "
                   f"{human_bytes(size_law.bytes_for(len(items), clips_per_shard)):>10} for {len(items)} clips")
    per_clip = sum(s.bytes_per_clip(clips_per_shard) for s in result.sizes)
    typer.echo(f"total: {human_bytes(per_clip)} per clip, {human_bytes(result.total_bytes())} for {len(items)} clips")


@app.command("weights")
def weights_command(weights_dir: Annotated[Optional[Path], typer.Option(
        help="Folder of teacher weights (default: $MVM_WEIGHTS or ~/.cache/mvm_targets/weights).")] = None) -> None:
    """List every teacher's expected weight file, where to download it, and whether it is present."""
    from mvm_targets.teachers.weights import all_weights, resolve_weights_dir

    root = resolve_weights_dir(weights_dir)
    typer.echo(f"weights folder: {root}")
    for entry in all_weights():
        state = "present" if entry.present(root) else "missing"
        typer.echo(f"  {entry.used_by:18} {state:8} {entry.relative_path}")
        typer.echo(f"  {'':18} {'':8} from {entry.source}; sha256 {entry.sha256 or 'not published'}")


@app.command("convert-dalle")
def convert_dalle(pkl: Annotated[Path, typer.Argument(help="OpenAI's dall-e encoder.pkl (a full pickle).")],
                  allow_pickle: Annotated[bool, typer.Option(
                      help="Confirm that you trust the file: unpickling runs code from it.")] = False,
                  out: Annotated[Optional[Path], typer.Option(help="Output (default: encoder.safetensors beside it).")]
                  = None) -> None:
    """Convert encoder.pkl once into a safetensors state dict that later loads without unpickling."""
    from mvm_targets.targets.vq import convert_dalle_encoder

    written = convert_dalle_encoder(pkl, out, allow_pickle=allow_pickle)
    typer.echo(f"wrote {written}; the vq target now loads it without --allow-pickle")


@app.command()
def verify(cache_arg: CacheArg = None, cache: CacheOpt = None, dataset: CachedDatasetOpt = None,
           repair: Annotated[bool, typer.Option(
               help="Move damaged shards to <dataset>/quarantine/ and mark their clips for re-extraction.")]
           = False) -> None:
    """Read every chunk of every shard (checksums, NaN/Inf, shapes, dtypes, duplicates) and check the ledger."""
    from mvm_targets.store.repair import repair_cache
    from mvm_targets.store.verify import verify_cache

    cache = _cache_folder(cache_arg, cache)
    report = verify_cache(cache, dataset)
    for note in report.notes:
        typer.echo(f"note: {note}", err=True)
    for problem in report.problems:
        typer.echo(f"problem: {problem}", err=True)
    typer.echo(f"{report.shards} shards, {report.clips} clips checked: "
               f"{'OK' if report.ok else f'{len(report.problems)} problem(s)'}")
    if report.ok:
        raise typer.Exit(0)
    if not repair:
        fixable = len(report.problems) - report.unrepairable
        if fixable:
            typer.echo(f"`mvmtargets verify --repair` fixes {fixable} of these problem(s)", err=True)
        raise typer.Exit(1)
    repaired = repair_cache(report)
    for line in repaired.lines:
        typer.echo(f"repaired: {line}")
    if repaired.redo:
        typer.echo(f"{repaired.redo} clip(s) marked for re-extraction: rerun `mvmtargets extract` with the same "
                   "inputs and targets to restore them")
    if report.unrepairable:
        typer.echo(f"{report.unrepairable} problem(s) left that --repair cannot fix", err=True)
    raise typer.Exit(1 if report.unrepairable else 0)


@app.command()
def info(cache_arg: CacheArg = None, cache: CacheOpt = None, dataset: CachedDatasetOpt = None) -> None:
    """Summarise a cache: videos, targets, sizes and failures."""
    from mvm_targets.store.summary import summarize_cache

    cache = _cache_folder(cache_arg, cache)
    summaries = summarize_cache(cache, dataset)
    if not summaries:
        raise MvmTargetsError(f"{cache}: no cached datasets found")
    for summary in summaries:
        typer.echo(f"{summary.dataset} / {summary.frames_id}: {summary.videos} videos in the manifest")
        for s in summary.sets:
            failures = ", ".join(f"{k} {v}" for k, v in sorted(s.failure_classes.items()))
            typer.echo(f"  {s.set_id:28} {s.clips:6d} clips {s.shards:4d} shards {s.bytes / 1e6:9.1f} MB  "
                       f"failed {s.failed}{f' ({failures})' if failures else ''}  skipped {s.skipped}")


@app.command()
def show(paths: Annotated[list[str], typer.Argument(
             metavar="[CACHE] KEY", show_default=False,
             help="Optional cache folder (as --cache), then the video key, e.g. videos/clip_00000.")],
         target: Annotated[str, typer.Option("--target", "-t", help="Cached target to draw, e.g. hog, flow.")],
         out: Annotated[Path, typer.Option(
             "--out", help="Picture to write; the format follows the extension (.png, .jpg, .webp, .bmp, .tif).")]
         = Path("show.png"),
         cache: CacheOpt = None,
         dataset: Annotated[Optional[str], typer.Option(
             help="Dataset inside the cache (default: the only one there).", callback=_dataset_name)] = None,
         frames_id: Annotated[Optional[str], typer.Option(
             "--frames-id", help="Sampling configuration, e.g. t4_s64_skip, when the dataset has several "
             "(`mvmtargets info` lists them).")] = None,
         flow_scale: Annotated[Optional[float], typer.Option(
             "--flow-scale", help="Flow magnitude in px drawn at full colour (default: the clip's largest, "
             "at least 1 px, so a near-static clip stays pale).")] = None) -> None:
    """Draw a clip's frames above what the model will regress for one target."""
    from mvm_targets import visualize
    from mvm_targets.show import render_target_panel
    from mvm_targets.store.layout import list_datasets

    if len(paths) not in (1, 2):
        raise MvmTargetsError(f"show takes [CACHE] KEY, got {len(paths)} arguments: {' '.join(paths)}")
    key = paths[-1]
    cache = _cache_folder(Path(paths[0]) if len(paths) == 2 else None, cache)
    visualize.image_format_for(out)  # refuse an unknown extension before reading anything
    if out.is_dir():
        raise MvmTargetsError(f"--out {out}: is a folder (give a file name such as {out / 'show.png'})")
    if out.parent.exists() and not out.parent.is_dir():
        raise MvmTargetsError(f"--out {out}: {out.parent} is a file, not a folder")
    names = list_datasets(cache)
    if dataset is None and len(names) != 1:
        raise MvmTargetsError(f"{cache}: pass --dataset (found: {', '.join(names) or 'none'})")
    with visualize.flow_legend_scope(flow_scale):
        render_target_panel(cache, dataset or names[0], key, target, out, frames_id=frames_id)
    typer.echo(f"wrote {out}")


def _build_targets(refs: list[str], runtime: dict, settings: list[str]):
    """Build targets (`mvm_targets.targets.build.build_targets`); `runtime` settings (device, weights, ...)
    go to the factories that take them. With 'all', targets that cannot be built here (missing
    weights) are skipped with their reason."""
    from mvm_targets.targets.build import build_targets

    return build_targets(refs, runtime, _parse_target_options(settings),
                         on_unavailable=lambda ref, error: typer.echo(f"skipping {ref}: {error}", err=True))


def _parse_target_options(settings: list[str]) -> dict[str, dict[str, object]]:
    """["flow.preset=fast", "flow.num_workers=2"] -> {"flow": {"preset": "fast", "num_workers": 2}}."""
    from mvm_targets.targets import canonical_name

    parsed: dict[str, dict[str, object]] = {}
    for setting in settings:
        name_key, sep, raw = setting.partition("=")
        name, dot, key = name_key.partition(".")
        if not (sep and dot and name and key):
            raise MvmTargetsError(f"--option '{setting}' is not of the form NAME.KEY=VALUE (e.g. flow.preset=fast)")
        value: object = raw
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                continue
        parsed.setdefault(canonical_name(name), {})[key] = value
    return parsed


def _with_progress(job):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from mvm_targets.interrupts import raise_if_interrupted

    columns = [TextColumn("extract"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:.1f} clips/s"), TimeRemainingColumn()]
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("extract", total=None, rate=0.0)
        first_seen: list[int] = []  # videos already done before this run do not count towards the rate

        def update(completed: int, total: int) -> None:
            raise_if_interrupted()  # between clips: stops a run whose Ctrl-C something swallowed
            first_seen[:] = first_seen or [completed]
            elapsed = progress.tasks[0].elapsed or 0.0
            progress.update(task, completed=completed, total=total,
                            rate=(completed - first_seen[0]) / elapsed if elapsed > 0 else 0.0)

        return job(update)


def main() -> None:
    """Entry point: known errors end as one line (see `mvm_targets.errors.run_typer_app`)."""
    from mvm_targets.errors import run_typer_app

    run_typer_app(app, "mvmtargets")


if __name__ == "__main__":
    main()
