"""``neuronet`` command line: demo, train, evaluate, predict, export, bench, info.

Every command has ``--help``. ``train`` lives in ``cli/train.py``, its YAML schema in ``cli/config.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import train as train_cmd
from .config import ConfigError


# --------------------------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    """Train a small CNN (an MLP if convolutions are not installed) on the offline digits set."""
    import neuronet as nn

    nn.manual_seed(args.seed)
    x, y = nn.data.load_digits()  # (1797, 1, 8, 8) in [0, 1]
    x_train, x_test, y_train, y_test = nn.data.train_test_split(x, y, test_size=0.2, seed=args.seed)
    if {"Conv2D", "MaxPool2D"} <= set(nn.LAYERS):
        model = nn.Sequential(
            nn.LAYERS["Conv2D"](1, 16, 3, padding=1, activation="relu"),
            nn.LAYERS["MaxPool2D"](2),  # (N, 16, 4, 4)
            nn.Flatten(),
            nn.Dense(256, 64, activation="relu"),
            nn.Dense(64, 10),
        )
    else:
        x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
        model = nn.Sequential(nn.Dense(64, 128, activation="relu"), nn.Dropout(0.1), nn.Dense(128, 10))
    model.compile(optimizer=nn.Adam(2e-3), loss=nn.CrossEntropyLoss(), metrics=["accuracy"])
    model.build(x_train.shape[1:])
    model.summary()
    start = time.perf_counter()
    model.fit(
        x_train, y_train, epochs=args.epochs, batch_size=32, validation_data=(x_test, y_test), verbose=1
    )
    result = model.evaluate(x_test, y_test)
    print(
        f"digits test accuracy: {result['accuracy']:.4f} (loss {result['loss']:.4f}) on {len(x_test)} "
        f"held-out images, trained in {time.perf_counter() - start:.1f} s"
    )
    return 0


# ------------------------------------------------------------------------------------- evaluate / predict
def _model_inputs(model, x: np.ndarray, preprocess: bool) -> np.ndarray:
    """Apply the preprocessing stored at training time, then reshape samples to the model's input shape."""
    from .pipeline import Preprocessor

    stored = model.extra.get("preprocessing")
    x = (Preprocessor.from_json(stored) if preprocess and stored else Preprocessor("none"))(x)
    if tuple(x.shape[1:]) == tuple(model.input_shape):
        return x
    if int(np.prod(x.shape[1:])) != int(np.prod(model.input_shape)):
        raise ValueError(
            f"inputs have shape {x.shape[1:]} per sample, the model expects {tuple(model.input_shape)}"
        )
    return x.reshape(len(x), *model.input_shape)


def _load_labelled(spec: str, model, label_column) -> tuple[np.ndarray, np.ndarray]:
    """Raw (x, y) from a .npz/.csv file, a config .yaml (its test split) or a dataset name."""
    import neuronet as nn

    from .config import SOURCES, load_config
    from .pipeline import load_dataset

    path = Path(spec)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            keys = ("x", "y") if "x" in f else ("x_test", "y_test")
            if keys[0] not in f or keys[1] not in f:
                raise ValueError(
                    f"{spec}: expected arrays 'x' and 'y' (or 'x_test' and 'y_test'), found {list(f)}"
                )
            return f[keys[0]], f[keys[1]]
    if path.suffix == ".csv":
        return nn.data.load_csv(path, label_column=label_column)
    if path.suffix in (".yaml", ".yml"):
        cfg = load_config(path)
        ds, seed = cfg["dataset"], cfg["training"]["seed"]
    elif spec in SOURCES and spec not in ("csv", "text"):
        stored = model.extra.get("dataset", {})
        same = stored.get("source") == spec
        ds = {
            "source": spec,
            "path": stored.get("path") if same else None,
            "label_column": -1,
            "block_size": 64,
            "limit": 0,
            "splits": {"test": stored.get("test", 0.2) if same else 0.2, "validation": 0.0},
        }
        seed = stored.get("seed", 0) if same else 0
    else:
        raise ValueError(
            f"{spec}: expected a .npz, .csv or .yaml file or a dataset name "
            "(digits, mnist, fashion_mnist, cifar10)"
        )
    splits = load_dataset(ds, seed)
    return splits.x_test, splits.y_test


def cmd_evaluate(args: argparse.Namespace) -> int:
    import neuronet as nn

    model = nn.load(args.model)
    if model.loss is None:
        model.compile(loss="cross_entropy", metrics=["accuracy"])
    x, y = _load_labelled(args.data, model, args.label_column)
    x = _model_inputs(model, x, not args.no_preprocess)
    result = model.evaluate(x, y, batch_size=args.batch_size)
    print(f"{args.data}: {len(x)} samples; " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import neuronet as nn

    model = nn.load(args.model)
    path = Path(args.input)
    if path.suffix == ".npy":
        x = np.load(path, allow_pickle=False)
    elif path.suffix == ".csv":
        x, _ = nn.data.load_csv(path, label_column=args.label_column)
    else:
        raise ValueError(f"{path}: expected a .npy or .csv file")
    x = _model_inputs(model, x, not args.no_preprocess)
    out = model.predict(x, batch_size=args.batch_size)
    if args.output:
        from .._atomic import atomic_path

        with atomic_path(args.output, "predict") as tmp:
            if args.output.endswith(".csv"):
                np.savetxt(tmp, out.reshape(len(out), -1), delimiter=",", fmt="%.6g")
            else:
                with open(tmp, "wb") as f:
                    np.save(f, out)
        print(f"wrote {out.shape} predictions to {args.output}")
        return 0
    for i in range(min(len(out), args.show)):
        print(f"{i}: {_describe_prediction(out[i], model)}")
    if len(out) > args.show:
        print(f"... {len(out) - args.show} more (use --output FILE to write them all)")
    return 0


def _describe_prediction(row: np.ndarray, model) -> str:
    """A class for one logit vector, the argmax characters for a language model's (T, V), else the values."""
    if row.ndim == 1 and row.size > 1:
        return f"class {int(row.argmax())}"
    vocab = model.extra.get("dataset", {}).get("vocab")
    if row.ndim == 2 and vocab and row.shape[-1] == len(vocab):
        return "next characters " + repr("".join(vocab[j] for j in row.argmax(axis=-1)))
    return str(row)


# ------------------------------------------------------------------------------- export / bench / info
def cmd_export(args: argparse.Namespace) -> int:
    import neuronet as nn

    model = nn.load(args.model)
    out = Path(args.output or Path(args.model).with_suffix(f".{args.format}"))
    train_cmd.export(model, args.format, out)
    print(f"wrote {out}")
    return 0


def benchmarks_dir() -> Path:
    return Path(__file__).resolve().parents[3] / "benchmarks"


# What `neuronet bench` runs by default: the workloads of the README's speed table.
TABLE_BENCHMARKS = ("mlp", "cnn", "lstm", "gpt", "moe", "resnet")


def cmd_bench(args: argparse.Namespace) -> int:
    folder = benchmarks_dir()
    scripts = sorted(folder.glob("bench_*.py"))
    if not scripts:
        print(
            f"neuronet bench: no benchmark scripts found in {folder} (they live in a source checkout)",
            file=sys.stderr,
        )
        return 1
    if args.only:
        wanted = {Path(name).stem.removeprefix("bench_") for name in args.only}
        known = {s.stem.removeprefix("bench_") for s in scripts}
        if wanted - known:
            print(f"neuronet bench: no benchmark named {', '.join(sorted(wanted - known))}; "
                  f"available: {', '.join(sorted(known))}", file=sys.stderr)
            return 2
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
    elif not args.all:  # the speed table's workloads; the heavy or special ones only when named
        rest = sorted(s.stem.removeprefix("bench_") for s in scripts
                      if s.stem.removeprefix("bench_") not in TABLE_BENCHMARKS)
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in TABLE_BENCHMARKS]
        if rest:
            print(f"neuronet bench: also available with --only or --all: {', '.join(rest)}", flush=True)
    extra = ["--steps", "10", "--warmup", "3", "--rounds", "2"] if args.quick else []
    if args.threads:
        extra += ["--threads", str(args.threads)]
    status, summaries = 0, []
    env = dict(os.environ, NEURONET_BENCH_JSON="1") if args.markdown else None
    for script in scripts:
        print(f"== {script.stem} ==", flush=True)
        code, printed = _run_echoing([sys.executable, str(script), *extra], folder.parent, env)
        status |= code
        summaries += printed
    if args.markdown:
        sys.path.insert(0, str(folder))
        import harness

        print("\n" + harness.markdown_table(summaries))
    return status


def _run_echoing(cmd: list[str], cwd: Path, env: dict | None) -> tuple[int, list[dict]]:
    """Run a benchmark, echoing its output line by line; its exit status and the JSON summaries it printed
    (benchmarks/harness.py's, with NEURONET_BENCH_JSON set), which are not echoed."""
    summaries = []
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:
            if line.startswith('{"engines"'):
                summaries.append(json.loads(line))
            else:
                print(line, end="", flush=True)
    return proc.returncode, summaries


def cmd_info(args: argparse.Namespace) -> int:
    import platform
    from importlib import metadata

    import neuronet as nn

    lines = [
        f"neuronet {nn.__version__} (Python {platform.python_version()}, {platform.platform()})",
        f"numpy {np.__version__}",
    ]
    distributions = {"sklearn": "scikit-learn"}  # import name -> the name pip installs it under
    for name in ("numba", "torch", "onnx", "onnxruntime", "gguf", "safetensors", "sklearn", "matplotlib"):
        try:
            __import__(name)
        except ImportError:
            lines.append(f"{name}: not installed")
            continue
        try:
            lines.append(f"{name} {metadata.version(distributions.get(name, name))}")
        except metadata.PackageNotFoundError:  # importable but not pip-installed (a source checkout)
            lines.append(f"{name} (version unknown)")
    lines.append(
        f"backends/devices: {', '.join(nn.backends.available())} (default: {nn.backends.default_ops().name})"
    )
    lines += _thread_pools()
    print("\n".join(lines))
    return 0


def _thread_pools() -> list[str]:
    """One line per kind of BLAS/OpenMP pool, naming the packages that load one (numpy, torch, ...)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ["threads: threadpoolctl not installed"]
    pools: dict[tuple, list[str]] = {}
    for pool in threadpool_info():
        parts = Path(pool["filepath"]).parts
        owner = parts[parts.index("site-packages") + 1].removesuffix(".libs") if "site-packages" in parts \
            else Path(pool["filepath"]).name
        pools.setdefault((pool["internal_api"], pool["user_api"], pool["num_threads"]), []).append(owner)
    return [f"threads: {api} ({user_api}) {n} threads, loaded by {', '.join(sorted(set(owners)))}"
            for (api, user_api, n), owners in pools.items()]


# --------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuronet", description="neuronet: explicit, fast neural networks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="train a small CNN on the offline digits set",
        description="Train a small CNN on scikit-learn's digits (offline) and report accuracy.",
    )
    demo.add_argument("--epochs", type=int, default=10)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    train_cmd.add_parser(sub)

    ev = sub.add_parser(
        "evaluate",
        help="loss and metrics of a model file on labelled data",
        description="Evaluate MODEL on DATA: a .npz (x, y), a .csv (labels in --label-column), "
        "a config .yaml (its test split) or a dataset name (digits, mnist, "
        "fashion_mnist, cifar10; the test split). The preprocessing stored at "
        "training time is applied.",
    )
    ev.add_argument("model", help=".nnet file")
    ev.add_argument("data")
    _common_data_args(ev)
    ev.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser(
        "predict",
        help="run a model file on inputs (.npy or .csv)",
        description="Predict with MODEL on INPUT (.npy array or .csv of features); prints the "
        "predicted classes, or writes all outputs with --output (.npy or .csv).",
    )
    pr.add_argument("model", help=".nnet file")
    pr.add_argument("input", help=".npy or .csv file")
    pr.add_argument("--output", help="write the raw outputs here (.npy or .csv)")
    pr.add_argument("--show", type=int, default=20, help="rows to print when not writing a file")
    _common_data_args(pr, label_default=None)
    pr.set_defaults(func=cmd_predict)

    ex = sub.add_parser(
        "export",
        help="convert a model file to ONNX or GGUF",
        description="Export MODEL (.nnet) to ONNX (runs in onnxruntime) or GGUF.",
    )
    ex.add_argument("model", help=".nnet file")
    ex.add_argument("--format", required=True, choices=("onnx", "gguf"))
    ex.add_argument("--output", help="output path (default: the model path with the format's suffix)")
    ex.set_defaults(func=cmd_export)

    be = sub.add_parser(
        "bench",
        help="run the benchmarks and print neuronet/PyTorch ratios",
        description="Run benchmarks/bench_*.py (source checkout), each printing its ratio table.",
    )
    be.add_argument("--only", nargs="*", help="benchmark names, e.g. mlp moe")
    be.add_argument("--quick", action="store_true", help="few steps and two rounds (a smoke run)")
    be.add_argument("--threads", type=int, help="BLAS/OpenMP threads of every engine (default: the "
                    "libraries' own); 1 gives the steadier figures on a shared machine")
    be.add_argument("--markdown", action="store_true",
                    help="end with one Markdown table of every run's ratios and memory (the README's kind)")
    be.add_argument("--all", action="store_true",
                    help="every benchmark, also nanogpt (needs > 10 GiB), scaling, loader, finetune")
    be.set_defaults(func=cmd_bench)

    info = sub.add_parser(
        "info",
        help="versions, backends, devices and BLAS threads",
        description="Print the neuronet version, backends and devices, library versions and "
        "BLAS thread pools.",
    )
    info.set_defaults(func=cmd_info)
    return parser


def _common_data_args(p: argparse.ArgumentParser, label_default=-1) -> None:
    p.add_argument(
        "--label-column",
        default=label_default,
        type=lambda v: int(v) if v.lstrip("-").isdigit() else v,
        help="label column of a .csv (index or header name)",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--no-preprocess", action="store_true", help="do not apply the stored preprocessing")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ImportError, ValueError, RuntimeError) as e:
        print(f"neuronet {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
