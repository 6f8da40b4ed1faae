"""The ``dualnn`` command: train, evaluate, predict, info.

``dualnn train`` with no options trains a 64-128-128-10 network (BatchNorm + ReLU, Adam)
on scikit-learn's bundled handwritten digits for 30 epochs, prints the test accuracy and
the time, and saves a checkpoint (``./dualnn-digits.npz``).

Errors print one line, ``dualnn: error: ...``, on stderr and exit with status 2 (usage)
or 1 (runtime); ``--debug`` shows the traceback instead.
"""

# Only the standard library before the thread policy: it must be set before NumPy loads.
import os
import sys

from dualnn._threads import apply_thread_policy_env

apply_thread_policy_env()

import argparse
import platform
import time

EXIT_RUNTIME = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A command-line mistake: exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ``dualnn: error: ...`` and exit status 2."""

    def error(self, message):
        raise UsageError(message)


def _layer_sizes(text):
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"invalid layer sizes {text!r}: give sizes like '128,128'")
    sizes = []
    for part in parts:
        if not part.isdigit() or int(part) < 1:
            raise argparse.ArgumentTypeError(
                f"invalid layer sizes {text!r}: {part!r} is not a positive integer "
                "(expected comma-separated sizes like '128,128')")
        sizes.append(int(part))
    return sizes


def _probability(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid dropout {text!r}: not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"invalid dropout {text!r}: must be in [0, 1)")
    return value


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def build_parser():
    from dualnn.datasets import NAMES

    debug = _Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback on errors")
    parser = _Parser(prog="dualnn", parents=[debug],
                     description="Feed-forward neural networks on NumPy (CPU) or CuPy (GPU).")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    data_help = f"dataset: {', '.join(NAMES)} (default digits)"
    train = sub.add_parser("train", parents=[debug], help="train a network on a dataset",
                           description="Train a fully connected network and save a checkpoint.")
    train.add_argument("--data", default="digits", choices=NAMES, metavar="NAME", help=data_help)
    train.add_argument("--data-dir", help="directory holding the MNIST/Fashion-MNIST files")
    train.add_argument("--hidden", type=_layer_sizes, default=[128, 128], metavar="SIZES",
                       help="hidden layer sizes, comma-separated (default 128,128)")
    train.add_argument("--activation", default="relu",
                       help="hidden activation: relu, leaky_relu, elu, tanh, sigmoid "
                            "(default relu)")
    train.add_argument("--batch-norm", dest="batch_norm", action="store_true", default=True,
                       help="BatchNorm after each hidden Linear (default)")
    train.add_argument("--no-batch-norm", dest="batch_norm", action="store_false")
    train.add_argument("--dropout", type=_probability, default=0.0, metavar="P",
                       help="dropout probability after each hidden activation (default 0)")
    train.add_argument("--optimizer", default="adam",
                       help="sgd, adam, adamw, rmsprop, adagrad, adadelta (default adam)")
    train.add_argument("--lr", type=_positive_float, default=None,
                       help="learning rate (default: the optimizer's, e.g. 1e-3 for Adam)")
    train.add_argument("--epochs", type=_positive_int, default=30, help="default 30")
    train.add_argument("--batch-size", type=_positive_int, default=64, help="default 64")
    train.add_argument("--device", default="cpu", help="cpu, gpu, gpu:N or auto (default cpu)")
    train.add_argument("--output", default=None, metavar="CKPT",
                       help="checkpoint path (default ./dualnn-<data>.npz)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    evaluate = sub.add_parser("evaluate", parents=[debug],
                              help="evaluate a checkpoint on a dataset's test split")
    evaluate.add_argument("checkpoint", metavar="CKPT")
    evaluate.add_argument("--data", default="digits", choices=NAMES, metavar="NAME",
                          help=data_help)
    evaluate.add_argument("--data-dir")
    evaluate.add_argument("--device", default="cpu")

    predict = sub.add_parser(
        "predict", parents=[debug], help="run a checkpoint on the rows of a .npy/.csv file",
        description="Run a checkpoint on a 2-D .npy or .csv file of feature rows (already "
                    "preprocessed as in training: dualnn's datasets are standardized with "
                    "the training split's statistics). Prints the predicted class of each row, "
                    "or writes the raw outputs with --output.")
    predict.add_argument("checkpoint", metavar="CKPT")
    predict.add_argument("file", metavar="FILE")
    predict.add_argument("--output", help="write the model's outputs to this .npy or .csv")
    predict.add_argument("--device", default="cpu")

    sub.add_parser("info", parents=[debug],
                   help="versions, devices, BLAS, kernels and thread policy")
    sub.add_parser("bench", add_help=False,
                   help="time a training step side by side with PyTorch (dualnn bench --help)")
    return parser


# ---------------------------------------------------------------------------------- commands

def _set_device(device):
    import dualnn as dn
    return dn.set_device(device)


def build_model(n_in, n_out, hidden, activation="relu", batch_norm=True, dropout=0.0):
    """The CLI's network: ``[Linear -> (BatchNorm) -> act -> (Dropout)] * len(hidden) -> Linear``."""
    import dualnn as dn

    layers = []
    width = n_in
    init = "he" if activation in ("relu", "leaky_relu", "elu") else "xavier"
    for size in hidden:
        layers.append(dn.layers.Linear(width, size, init=init))
        if batch_norm:
            layers.append(dn.layers.BatchNorm(size))
        layers.append(dn.layers.activation(activation))
        if dropout:
            layers.append(dn.layers.Dropout(dropout))
        width = size
    layers.append(dn.layers.Linear(width, n_out))
    return dn.Sequential(*layers)


def cmd_train(args, out):
    import dualnn as dn

    device = _set_device(args.device)
    dataset = dn.datasets.load(args.data, args.data_dir, seed=0)
    dn.seed(args.seed)
    model = build_model(dataset.n_features, dataset.n_classes, args.hidden, args.activation,
                        args.batch_norm, args.dropout)
    options = {} if args.lr is None else {"lr": args.lr}
    optimizer = dn.optim.get(args.optimizer)(model.parameters(), **options)
    loss_fn = dn.losses.SoftmaxCrossEntropy()
    sizes = "-".join(str(s) for s in [dataset.n_features, *args.hidden, dataset.n_classes])
    print(f"dualnn: training {sizes} ({args.activation}"
          f"{', batch norm' if args.batch_norm else ''}"
          f"{f', dropout {args.dropout}' if args.dropout else ''}) with "
          f"{type(optimizer).__name__} lr={optimizer.lr:g} on {dataset.name} "
          f"({len(dataset.X_train)} train / {len(dataset.X_test)} test) for {args.epochs} "
          f"epochs, batch {args.batch_size}, device {device}", file=out)
    started = time.perf_counter()
    history = dn.fit(model, loss_fn, optimizer, dataset.X_train, dataset.y_train,
                     epochs=args.epochs, batch_size=args.batch_size,
                     progress=not args.no_progress)
    elapsed = time.perf_counter() - started
    path = args.output or f"dualnn-{dataset.name}.npz"
    if history.stopped is not None:  # Ctrl-C: fit stopped at a completed step
        dn.save(path, model, optimizer)
        print(f"interrupted after step {history.stopped['step']} of epoch "
              f"{history.stopped['epoch']} ({len(history)} epoch(s) completed); saved "
              f"checkpoint to {os.path.abspath(path)}", file=out)
        return 130
    scores = dn.evaluate(model, loss_fn, dataset.X_test, dataset.y_test)
    dn.save(path, model, optimizer)
    print(f"train loss {history['loss'][-1]:.4f}, train accuracy "
          f"{100 * history['accuracy'][-1]:.2f}%", file=out)
    print(f"test accuracy {100 * scores['accuracy']:.2f}% (test loss {scores['loss']:.4f}); "
          f"trained in {elapsed:.2f} s "
          f"({sum(history['samples_per_sec']) / len(history):.0f} samples/s)", file=out)
    print(f"saved checkpoint to {os.path.abspath(path)}", file=out)
    return 0


def cmd_evaluate(args, out):
    import dualnn as dn

    _set_device(args.device)
    checkpoint = dn.load(args.checkpoint)
    dataset = dn.datasets.load(args.data, args.data_dir, seed=0)
    scores = dn.evaluate(checkpoint.model, dn.losses.SoftmaxCrossEntropy(), dataset.X_test,
                         dataset.y_test)
    line = f"{dataset.name} test: loss {scores['loss']:.4f}"
    if "accuracy" in scores:
        line += f", accuracy {100 * scores['accuracy']:.2f}%"
    print(f"{line} ({len(dataset.X_test)} samples, checkpoint epoch {checkpoint.epoch})",
          file=out)
    return 0


def _read_rows(path):
    import numpy as np

    from dualnn.errors import DataFileError, DataFileNotFoundError

    if not os.path.isfile(path):
        raise DataFileNotFoundError(f"no such file {path!r}")
    if path.lower().endswith(".npy"):
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataFileError(f"cannot read {path!r} as .npy ({exc})") from None
    if path.lower().endswith(".csv"):
        for skip in (0, 1):
            try:
                return np.loadtxt(path, delimiter=",", ndmin=2, skiprows=skip)
            except ValueError as exc:
                error = exc
        raise DataFileError(f"cannot read {path!r} as numeric CSV ({error})")
    raise DataFileError(f"{path!r}: expected a .npy or .csv file")


def cmd_predict(args, out):
    import numpy as np

    import dualnn as dn

    _set_device(args.device)
    checkpoint = dn.load(args.checkpoint)
    rows = _read_rows(args.file)
    outputs = dn.predict(checkpoint.model, rows)
    if args.output:
        if args.output.lower().endswith(".csv"):
            np.savetxt(args.output, outputs.reshape(len(outputs), -1), delimiter=",")
        else:
            np.save(args.output, outputs)
        print(f"wrote outputs of shape {outputs.shape} to {os.path.abspath(args.output)}",
              file=out)
        return 0
    if outputs.ndim == 2 and outputs.shape[1] > 1:
        values = outputs.argmax(axis=1)
    else:
        values = outputs.reshape(len(outputs), -1)[:, 0]
    out.write("\n".join(str(v) for v in values.tolist()) + "\n")
    return 0


def _version_of(module_name):
    try:
        module = __import__(module_name)
    except Exception as exc:  # not installed, or broken
        return f"not available ({type(exc).__name__})"
    return getattr(module, "__version__", "unknown")


def _blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        import numpy  # noqa: F401  (load BLAS so threadpoolctl sees it)
        lines = []
        for lib in threadpool_info():
            lines.append(f"{lib.get('internal_api')} {lib.get('version')} "
                         f"({lib.get('user_api')}, {lib.get('num_threads')} threads, "
                         f"{lib.get('threading_layer', 'n/a')} threading) "
                         f"{lib.get('filepath')}")
        return lines or ["none found by threadpoolctl"]
    import numpy as np
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return [f"{blas.get('name')} {blas.get('version')} (install threadpoolctl for threads)"]
    except Exception:
        return ["unknown (install threadpoolctl)"]


def _cuda_kernels_status():
    try:
        from numba import cuda
    except Exception as exc:
        return f"no (numba.cuda not importable: {type(exc).__name__})"
    try:
        if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
            return "simulator only (NUMBA_ENABLE_CUDASIM=1)"
        return "yes" if cuda.is_available() else "no (no CUDA driver or device)"
    except Exception as exc:
        return f"no ({type(exc).__name__}: {exc})"


def cmd_info(args, out):
    import dualnn as dn
    from dualnn._threads import thread_policy_report

    rows = [
        ("dualnn", dn.__version__),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", platform.platform()),
        ("numpy", _version_of("numpy")),
        ("numba", _version_of("numba")),
        ("cupy", _version_of("cupy")),
        ("devices", ", ".join(dn.available_devices())),
        ("cuda kernels usable", _cuda_kernels_status()),
    ]
    try:
        from dualnn.kernels import cpu as cpu_kernels
        cache_dir = getattr(cpu_kernels, "cache_dir", None)
        rows.append(("numba kernel cache", cache_dir() if callable(cache_dir) else "unknown"))
    except Exception as exc:
        rows.append(("numba kernel cache", f"unavailable ({type(exc).__name__})"))
    from dualnn.backend.allocation import huge_page_status

    rows.append(("huge pages for large arrays", huge_page_status()))
    for index, line in enumerate(_blas_info()):
        rows.append(("blas" if index == 0 else "", line))
    for key, value in thread_policy_report().items():
        rows.append((f"thread policy {key}", value))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}", file=out)
    return 0


def _bench_import_orders(argv):
    """``dualnn bench --import-orders``: the thread policy's timings per import order."""
    parser = argparse.ArgumentParser(
        prog="dualnn bench --import-orders",
        description="Time the digits fit and the MLP step (against PyTorch) with dualnn "
                    "imported first, after NumPy, after NumPy + scikit-learn and after NumPy "
                    "+ PyTorch, each row in a fresh process, alternated and repeated.")
    parser.add_argument("--import-orders", action="store_true", required=True)
    parser.add_argument("--repeats", type=_positive_int, default=3, help="default 3")
    parser.add_argument("--epochs", type=_positive_int, default=30,
                        help="digits fit epochs (default 30)")
    parser.add_argument("--steps", type=_positive_int, default=10,
                        help="timed MLP steps per round (default 10)")
    parser.add_argument("--alternatives", action="store_true",
                        help="also time the policies dualnn chose among")
    parser.add_argument("--only", choices=["digits", "step"],
                        help="only the digits-fit rows or only the MLP-step rows")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    from dualnn.benchmarks import import_orders

    return import_orders.main(parser.parse_args(argv))


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "info": cmd_info}


# ---------------------------------------------------------------------------------- main

def _one_line(text):
    return " ".join(str(text).split())


def _fail(message, code, err):
    print(f"dualnn: error: {_one_line(message)}", file=err)
    return code


def main(argv=None):
    """Run the ``dualnn`` command; returns the exit status (0, 1 runtime, 2 usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    out, err = sys.stdout, sys.stderr
    if argv[:1] == ["bench"] and "--import-orders" in argv:
        return _bench_import_orders(argv[1:])
    if argv[:1] == ["bench"]:  # its own option parser, shared with python -m dualnn.bench
        from dualnn.benchmarks import main as bench_main
        return bench_main(argv[1:], prog="dualnn bench")
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help
            return exc.code if isinstance(exc.code, int) else 0
        if args.version:
            from dualnn import __version__
            print(f"dualnn {__version__}", file=out)
            return 0
        if not args.command:
            raise UsageError("a command is required: train, evaluate, predict or info")
        return COMMANDS[args.command](args, out)
    except UsageError as exc:
        if debug:
            raise
        return _fail(f"{exc} (see dualnn --help)", EXIT_USAGE, err)
    except KeyboardInterrupt:
        if debug:
            raise
        return _fail("interrupted", 130, err)
    except Exception as exc:
        if debug:
            raise
        from dualnn.errors import DualnnError
        if isinstance(exc, (DualnnError, OSError)):
            return _fail(str(exc), EXIT_RUNTIME, err)
        return _fail(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the "
                     "traceback)", EXIT_RUNTIME, err)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
