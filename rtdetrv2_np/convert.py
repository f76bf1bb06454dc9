"""Convert a checkpoint into one self-describing .safetensors file that `load_model` and the command line read.

    python -m rtdetrv2_np.convert rtdetrv2_r18vd_120e_coco_rerun_48.1.pth        # official release -> weights/
    python -m rtdetrv2_np.convert rtdetrv2_r50vd_m_dsp_3x_coco.pth --method discrete
    python -m rtdetrv2_np.convert PekingU/rtdetr_v2_r18vd                         # hub id (or hub-layout folder)

Sources:
    * an official lyuwenyu/RT-DETR `.pth`, read and renamed without torch by official.load_official (the rules and
      the decisions it makes are in official.py). The architecture is taken from a config.json beside the file if
      there is one (for architectures other than the five published ones), else from --variant, else inferred from
      the tensors' shapes;
    * a hub id, a hub-layout folder (config.json + model.safetensors) or a converted .safetensors file: only
      repackaged (and the sampling method changed if --method is given).
Result: `weights/<name>.safetensors` (or --out), written atomically, holding the hub-named float32 tensors and,
in the metadata key "config", the config.json text (weights.CONFIG_METADATA_KEY). transformers can read the
tensors too (metadata "format": "pt"). An --out that is the same file as something the conversion reads (the
checkpoint, its config.json, the --config file) is refused before anything is read. A special --out (/dev/stdout,
a FIFO) is written to directly (fileio.atomic_write), and the report lines then go to stderr.
"""

import argparse
import json
import os
import sys

import numpy as np

from .errors import RTDetrError
from .model.config import VARIANTS
from .fileio import atomic_write, input_ids, is_special, same_as_input
from .loading import load_model
from .official import load_official
from .weights import CONFIG_METADATA_KEY, flatten_params

def save_converted(path, cfg, tensors):
    """Write tensors + config (metadata "config") to `path` as safetensors, atomically (temp file + os.replace)."""
    from safetensors.numpy import save_file
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    metadata = {"format": "pt", CONFIG_METADATA_KEY: json.dumps(cfg.to_hf_dict(), indent=2, sort_keys=True)}
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sorted(tensors.items())}
    try:
        atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=metadata))
    except OSError as e:
        raise RTDetrError(f"{path}: cannot write ({e.strerror or e}); check the folder and the free space") from None


def input_files(source, config=None):
    """The local files converting `source` reads: the file itself (or a folder's files), the config.json beside a
    file, and --config."""
    src = os.fspath(source)
    files = [src]
    if os.path.isfile(src):
        files.append(os.path.join(os.path.dirname(src) or ".", "config.json"))
    if config is not None:
        files.append(os.fspath(config))
    return files


def default_output(source):
    """weights/<name>.safetensors: the .pth/.safetensors file stem, the folder name, or a hub id's model name."""
    s = os.fspath(source).rstrip("/\\")
    name = os.path.basename(s)
    if name.endswith((".pth", ".safetensors")):
        name = os.path.splitext(name)[0]
    return os.path.join("weights", name + ".safetensors")


def convert(source, variant=None, method=None, config=None, revision="main", progress=None):
    """Read any source the command accepts: (cfg, {hub name: float32 array}, report dict)."""
    src = os.fspath(source)
    if src.endswith(".pth"):
        return load_official(src, variant, method, config)
    if variant is not None or config is not None:
        raise RTDetrError(f"{src}: --variant and --config apply to official .pth files only; a hub model or "
                          f"converted file carries its config")
    model = load_model(src, method=method, revision=revision, progress=progress)
    return model.config, flatten_params(model.params), dict(architecture="from the checkpoint's config", variant=None,
                                                             tensors_in=None, anchors=None)


def _describe_cfg(cfg):
    return (f"{cfg.layer_type} blocks {list(cfg.depths)}, encoder {cfg.encoder_hidden_dim}, "
            f"{cfg.decoder_layers} decoder layers" +
            (f" (evaluated up to layer {cfg.decoder_eval_idx})" if cfg.decoder_eval_idx >= 0 else "") +
            f", {cfg.num_labels} classes, sampling {cfg.method}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m rtdetrv2_np.convert",
        description="Convert an official RT-DETRv2 .pth (or repackage a hub model) into one .safetensors file "
                    "with its config inside, for rtdetrv2_np.load_model and python -m rtdetrv2_np.detect.")
    parser.add_argument("source", help="official .pth, hub id (e.g. PekingU/rtdetr_v2_r18vd), hub-layout folder, "
                                       "or converted .safetensors")
    parser.add_argument("--variant", choices=list(VARIANTS),
                        help="architecture of a .pth (default: inferred from the tensor shapes)")
    parser.add_argument("--config", help="config.json describing a .pth's architecture, for architectures other "
                                         "than the published ones (default: a config.json beside the file)")
    parser.add_argument("--method", choices=["bilinear", "discrete"],
                        help="sampling method to store: discrete for the official *_dsp checkpoints (default: "
                             "bilinear for a .pth, the config's for the others)")
    parser.add_argument("--out", help="output file (default: weights/<name>.safetensors)")
    parser.add_argument("--revision", default="main", help="branch, tag or commit of a hub id (default: main)")
    parser.error = lambda message: _usage_error(parser, message)
    args = parser.parse_args(argv)
    out = args.out or default_output(args.source)
    say = sys.stderr if is_special(out) else sys.stdout       # --out /dev/stdout: the report must not mix in
    try:
        source = same_as_input(out, input_ids(input_files(args.source, args.config)))
        if source is not None:
            raise RTDetrError(f"{out}: --out is the same file as the input {source}; choose another output file")
        cfg, tensors, report = convert(args.source, args.variant, args.method, args.config, args.revision)
        src = args.source
        if report["tensors_in"] is not None:
            print(f"read {src}: {report['tensors_in']} tensors", file=say)
        arch = report["variant"] + ", " if report["variant"] else ""
        print(f"architecture: {arch}{report['architecture']}: {_describe_cfg(cfg)}", file=say)
        if src.endswith(".pth") and args.method is None and "_dsp" in os.path.basename(src):
            print("note: the file name says dsp (a discrete-sampling model): the official model samples "
                  "discretely; convert again with --method discrete to match it", file=say)
        a = report["anchors"]
        if a is not None:
            H, W = a["size_hw"]
            if not a["mask_equal"]:
                print(f"anchors: the checkpoint's decoder.anchors/valid_mask ({H}x{W}) do not have the validity "
                      f"pattern of recomputed ones; ignored, recomputed ones are used (as transformers does)", file=say)
            else:
                print(f"anchors: the checkpoint's decoder.anchors ({H}x{W}) differ from recomputed ones by at most "
                      f"{a['max_abs']:.2g} (relative {a['max_rel']:.2g}); recomputed ones are used, as "
                      f"transformers does", file=say)
        save_converted(out, cfg, tensors)
    except RTDetrError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"error: {args.source}: out of memory while converting; free memory and run again", file=sys.stderr)
        return 1
    if is_special(out):
        print(f"wrote {out} ({len(tensors)} tensors)", file=say)
        return 0
    size = os.path.getsize(out) / 1e6
    print(f"wrote {out} ({size:.1f} MB, {len(tensors)} tensors)")
    print(f"run:  python -m rtdetrv2_np.detect IMAGE --model {out}")
    return 0


def _usage_error(parser, message):
    print(f"error: {message}; see {parser.prog} --help", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    sys.exit(main())
