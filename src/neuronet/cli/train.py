"""``neuronet train CONFIG.yaml``: data, model, fit, then the model file, history CSV, plot and exports."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import numpy as np

from ..callbacks import Callback
from ..plotting import plot_history
from .config import build_callbacks, build_model, compile_model, load_config
from .pipeline import Preprocessor, load_dataset

EXPORTS = ("onnx", "gguf")


class Augment(Callback):
    """Before each epoch, overwrite the training array with a fresh random augmentation of the raw images."""

    def __init__(self, raw: np.ndarray, target: np.ndarray, preprocess: Preprocessor, aug: dict):
        self.raw, self.target, self.preprocess, self.aug = raw, target, preprocess, aug

    def on_epoch_begin(self, epoch, logs=None):
        from ..data import augment_images

        self.target[...] = self.preprocess(augment_images(self.raw, **self.aug))


class StopOnInterrupt(Callback):
    """First Ctrl-C: finish the current batch, then stop (the caller saves). A second Ctrl-C aborts."""

    def __init__(self):
        self.interrupted = False
        self._previous: list = []  # the SIGINT handler from before training, while ours is installed

    def on_train_begin(self, logs=None):
        self._previous[:] = [signal.signal(signal.SIGINT, self._handle)]

    def on_train_end(self, logs=None):
        self.restore()

    def restore(self) -> None:
        """Put back the SIGINT handler from before training: at its end, and after a fit that failed (no
        training end then; the handler of a finished run must not catch the next one's Ctrl-C)."""
        if self._previous:
            signal.signal(signal.SIGINT, self._previous.pop() or signal.default_int_handler)

    def _handle(self, signum, frame):
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        self.model.stop_training = True
        print(
            "\ninterrupted: stopping after this batch and saving a checkpoint (Ctrl-C again to abort)",
            flush=True,
        )


def run_name(config_path: str) -> str:
    """The config's file name, or its folder's name for the usual ``<example>/config.yaml``."""
    path = Path(config_path).resolve()
    return path.parent.name if path.stem == "config" else path.stem


def select_device(name: str) -> str:
    """``auto`` -> cuda, then mps, else NumPy on the CPU (fastest for small models); ``cpu`` is NumPy."""
    from ..backend import available

    if name != "auto":
        return "numpy" if name == "cpu" else name
    names = available()
    return next((d for d in ("cuda", "mps") if d in names), "numpy")


def set_threads(n: int) -> None:
    """Limit BLAS (via threadpoolctl) and, when it is in use, PyTorch to ``n`` threads (0: leave alone)."""
    if not n:
        return
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:
        pass
    if "torch" in sys.modules:  # do not pay torch's import time for a NumPy run
        sys.modules["torch"].set_num_threads(n)


def run(
    config_path: str,
    output_dir: str | None = None,
    epochs: int | None = None,
    plot: bool = False,
    verbose: int = 1,
    resume: bool = False,
) -> dict:
    """Train from a config file; returns a summary dict (paths, test metrics, wall time).

    With ``resume`` an existing output model file is loaded and training continues after its last epoch.
    """
    import neuronet as nn

    cfg = load_config(config_path)
    distributed = nn.distributed.launcher() is not None  # under mpiexec/torchrun; rank 0 writes
    if distributed:
        nn.distributed.init()
    lead = nn.distributed.rank() == 0
    verbose = verbose if lead else 0
    if epochs is not None:
        cfg["training"]["epochs"] = epochs
    out = cfg["output"]
    folder = Path(output_dir or out["dir"] or Path("runs") / run_name(config_path))
    folder.mkdir(parents=True, exist_ok=True)
    seed = cfg["training"]["seed"]
    nn.manual_seed(seed)

    ds = cfg["dataset"]
    splits = load_dataset(ds, seed)
    preprocess = Preprocessor.from_config(cfg["preprocessing"]).fit(splits.x_train, ds["source"])
    x_train, x_test = preprocess(splits.x_train), preprocess(splits.x_test)
    y_train, y_test = splits.y_train, splits.y_test
    validation = None
    if ds["splits"]["validation"]:
        cut = len(x_train) - max(1, int(len(x_train) * ds["splits"]["validation"]))
        validation = (x_train[cut:], y_train[cut:])
        x_train, y_train, raw_train = x_train[:cut], y_train[:cut], splits.x_train[:cut]
    else:
        raw_train = splits.x_train

    device = select_device(cfg["hardware"]["device"])
    model_path = folder / out["model"]
    if resume and model_path.exists():
        model = nn.load(model_path, device=device)  # weights, optimizer state, epoch and RNG position
        if verbose:
            print(f"resuming {model_path} after epoch {model.epoch}")
    else:
        model = build_model(cfg)
        model.to(device)
        compile_model(model, cfg)
        model.build(tuple(x_train.shape[1:]))
    set_threads(cfg["hardware"]["threads"])  # after the device, so torch is imported only when used
    callbacks = build_callbacks(cfg)
    aug = {k: v for k, v in cfg["preprocessing"]["augmentation"].items() if v}
    if aug:
        callbacks.append(Augment(raw_train, x_train, preprocess, aug))
    stopper = StopOnInterrupt()
    callbacks.append(stopper)
    if verbose:
        model.summary()
        print(f"data: {ds['source']} train {x_train.shape} test {x_test.shape}; device {device}; seed {seed}")

    # what evaluate/predict need to treat new data the same way; kept in every file this model writes
    model.extra = {
        "dataset": {k: ds[k] for k in ("source", "path", "label_column", "block_size")}
        | {"test": ds["splits"]["test"], "seed": seed, "vocab": splits.vocab},
        "preprocessing": preprocess.to_json(),
    }
    start = time.perf_counter()
    try:
        model.fit(
            x_train,
            y_train,
            epochs=cfg["training"]["epochs"],
            initial_epoch=model.epoch,
            batch_size=cfg["training"]["batch_size"],
            validation_data=validation,
            callbacks=callbacks,
            verbose=verbose,
            workers=cfg["hardware"]["workers"],
            distributed=distributed,
        )
    except Exception as err:  # a late failure: keep what was trained, then one line (main prints it)
        raise TrainingFailed(_late_error(err, model, model_path) if lead else str(err)) from err
    finally:
        stopper.restore()
    seconds = time.perf_counter() - start
    history = full_history(model)
    if lead:
        model.save(model_path)
        history.to_csv(str(folder / out["history"]))
    summary = {
        "model": str(model_path),
        "history": str(folder / out["history"]),
        "seconds": seconds,
        "interrupted": stopper.interrupted,
        "epochs": model.epoch,
    }
    if stopper.interrupted and lead:
        where = f"inside epoch {model.epoch + 1}" if model.training_position() else \
            f"after epoch {model.epoch}"
        print(f"saved a checkpoint {where} to {model_path}; continue with: "
              f"neuronet train {config_path} --resume")
        return summary
    if len(x_test):
        summary["test"] = model.evaluate(x_test, y_test, batch_size=max(256, cfg["training"]["batch_size"]),
                                         distributed=distributed)
    if not lead:
        return summary
    if plot or out["plot"]:
        name = out["plot"] if isinstance(out["plot"], str) else "history.png"
        summary["plot"] = str(plot_history(history.history, folder / name, title=run_name(config_path)))
    for fmt in cfg["export"]["formats"]:
        summary[fmt] = str(export(model, fmt, model_path.with_suffix(f".{fmt}")))
    tested = ", ".join(f"{k} {v:.4f}" for k, v in summary.get("test", {}).items())
    print(f"trained {summary['epochs']} epochs in {seconds:.1f} s; test: {tested or 'no test split'}")
    written = [str(v) for k, v in summary.items() if k in ("model", "history", "plot", *EXPORTS)]
    print("wrote " + ", ".join(written))
    return summary


class TrainingFailed(RuntimeError):
    """Training stopped on an error after it had started; the message says where the model was saved."""


def _late_error(err: Exception, model, model_path: Path) -> str:
    """Save the model trained so far beside ``model_path`` (never over it) and describe the failure."""
    what = f"{type(err).__name__}: {err}".replace("\n", " ")
    position = model.training_position()
    where = f"in epoch {model.epoch + 1} after batch {position['step']}" if position else \
        f"after epoch {model.epoch}"
    partial = model_path.with_name(f"{model_path.stem}.partial{model_path.suffix}")
    if model.optimizer.iterations == 0:
        return f"training failed {where}: {what}"
    try:
        model.save(partial)
    except Exception as save_err:  # noqa: BLE001 -- reported with the first error
        return f"training failed {where}: {what}; saving the model trained so far failed too: {save_err}"
    return f"training failed {where}: {what}; the model trained so far is in {partial}"


def full_history(model):
    """A History of every epoch of the run, the resumed one's included (for the CSV and the plot)."""
    from ..callbacks import History

    history = History()
    history.history = model.full_history()
    history.epoch = list(range(len(next(iter(history.history.values()), []))))
    return history


def export(model, fmt: str, path: Path) -> Path:
    """Write ``model`` as ONNX or GGUF with helper functions from ``neuronet.io`` (clear error if absent)."""
    try:
        from .. import io

        fn = {"onnx": io.export_onnx, "gguf": io.export_gguf}[fmt]
    except (ImportError, AttributeError):
        raise RuntimeError(f"export to {fmt} is not available yet in this neuronet") from None
    if fmt == "onnx":
        fn(model, path, model.input_shape)
    else:
        fn(model, path)
    return path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from a YAML config",
        description="Train the model described by CONFIG.yaml and write the model file, the "
        "history CSV and (with --plot) a PNG of the curves. Ctrl-C stops after the "
        "current batch and saves a checkpoint.",
    )
    p.add_argument(
        "config", help="YAML file: model, training, dataset, preprocessing, output, hardware, export"
    )
    p.add_argument(
        "--output-dir", "-o", help="folder for the outputs (default: output.dir or runs/<config name>)"
    )
    p.add_argument("--epochs", type=int, help="override training.epochs")
    p.add_argument("--plot", action="store_true", help="also write a PNG of the loss/metric curves")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or model table (results only)")
    p.add_argument("--resume", action="store_true", help="continue from the output model file if it exists")
    p.set_defaults(func=lambda a: _cmd(a))


def _cmd(args: argparse.Namespace) -> int:
    summary = run(args.config, args.output_dir, args.epochs, args.plot, 0 if args.quiet else 1, args.resume)
    return 130 if summary["interrupted"] else 0
