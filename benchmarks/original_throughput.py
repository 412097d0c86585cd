"""Training throughput (images/s) of the ORIGINAL MCL-OKD code (github.com/winycg/MCL-OKD), run here.

Issue 8 asks okd's step to beat the original implementation's and quotes figures for it; this
harness measures the original itself on the machine at hand, so the comparison with
``benchmarks/train_throughput.py`` is made on one machine. Nothing of the original ships with okd:
pass a clone with ``--original-repo``.

    git clone https://github.com/winycg/MCL-OKD /tmp/MCL-OKD
    python benchmarks/original_throughput.py --original-repo /tmp/MCL-OKD --steps 20 --warmup 5 --json orig.json

How a method is timed. Each method runs in a fresh child process, which imports that method's
``main_cifar_<method>.py`` as a module (not as ``__main__``, so its ``main()`` does not start): the
script's own module-level code parses its options (the harness sets ``sys.argv``), seeds, builds
its CIFAR-100 datasets with its per-image torchvision transforms, its DataLoader, its model from
``models`` and the ``DataParallel`` wrapper. The harness then builds the criteria and the optimiser
as that script's ``main()`` does (``nn.CrossEntropyLoss``, the script's ``DistillKL(args.kd_T)``,
for MCL-OKD ``mcl.criterion.MCL_Loss(args)`` after the script's dummy forward that sets
``args.rep_dim`` / ``args.n_data``; SGD lr 0.1, momentum 0.9, nesterov, wd 5e-4 over the same
parameters) and calls the script's own ``train(0, criterion_list, optimizer)``, with its global
``trainloader`` wrapped so that the epoch stops after --warmup + --steps batches and each batch
request is time-stamped. A step's time is the wall time between two batch requests: DataLoader
(per-image PIL crop/flip/ToTensor/Normalize, collate; MCL-OKD's per-item negative sampling), the
script's forward, its losses, backward, ``optimizer.step()``, its per-step ``.item()`` calls and
accuracy counting. img/s is the median over the timed steps (robust on a loaded machine).

Settings and where they differ from running a script by hand:

* backbone ``--arch`` (default resnet32: ``resnet32``, ``dml_resnet32``, ``cl_ilr_resnet32``,
  ``one_resnet32``, ``okddip_resnet32``, ``mcl_okd_resnet32``), ``--num-branches`` 4,
  MCL-OKD ``--nce_k`` from ``--nce-k`` (default 256, issue 8's K; the script's default is 16384);
* batch: ``--batch-size`` (default 64, issue 8's figures). The baseline, DML, CL-ILR, ONE and OKDDip
  scripts hard-code ``batch_size=128`` in their DataLoader (their ``--batch-size`` is unused), so
  the harness rebuilds that DataLoader exactly as the script does with only the batch changed;
  MCL-OKD's loader already uses its ``--batch-size``;
* DataLoader workers: those five scripts pass no ``num_workers`` (0: images are decoded and
  augmented in the training process, between steps), and the harness keeps that. MCL-OKD passes
  its ``--num-workers`` (default 8); the harness passes ``--num-workers`` (default: min(8, CPU
  count), i.e. 2 on a 2-core machine, said in the output), since 8 processes on 2 cores only add
  contention;
* data: a synthetic CIFAR-100 in the official python format (``cifar-100-python/{train,test,meta}``)
  with --num-train images (default 50,000, CIFAR-100's size: MCL-OKD's sampler draws each item's
  negatives from all other-class indices, so its cost depends on it), classes balanced as in
  CIFAR-100 (MCL-OKD's dataset stacks the per-class index lists into one array, which needs equal
  class sizes); or a real CIFAR-100 with ``--data DIR``.

Shims, applied in the child at import time; the clone's files are never edited:

1. CPU: ``torch.Tensor.cuda`` and ``nn.Module.cuda`` return ``self`` (the scripts call ``.cuda()``
   on the model, criteria, each batch and MCL-OKD's ``AliasMethod`` tensors). Not applied with
   ``--device cuda``, where the original runs as written.
2. Synthetic data only: torchvision's CIFAR md5 checks (``check_integrity``) accept any existing
   file, so the scripts' ``download=True`` finds the data present and downloads nothing.
3. If ``import models`` fails (its ``__init__`` imports every backbone, ImageNet ones included; a
   partial clone or one backbone file that no longer imports would stop all), ``models`` becomes a
   lazy package: ``getattr(models, name)`` imports only the submodule that ``models/__init__.py``
   names for ``name``. The output says which import was used.
4. The child runs in a temporary working directory with ``result/`` (the scripts write logs there).

Peak memory is the training process's resident high-water mark over the timed steps (DataLoader
worker processes not included).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import reset_hwm, status_kib, wait_for_idle  # noqa: E402
from train_throughput import REFERENCE_CPU_IMG_S  # noqa: E402

METHODS = ("baseline", "dml", "cl_ilr", "one", "okddip", "mcl_okd")
SCRIPT_BATCH = 128  # the DataLoader batch the non-MCL scripts hard-code
FOLDER = "cifar-100-python"


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit code 2."""
    print(f"original_throughput.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


# -- synthetic CIFAR-100 --------------------------------------------------------------------------
def write_synthetic_cifar100(root: Path, num_train: int, num_test: int, seed: int = 0) -> Path:
    """``root/cifar-100-python`` with balanced classes, as torchvision reads it; reused when already there."""
    target = root / FOLDER
    stamp = target / "okd-synthetic.json"
    spec = {"num_train": num_train, "num_test": num_test, "seed": seed}
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return target
    target.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    for name, n in (("train", num_train), ("test", num_test)):
        fine = rng.permutation(np.arange(n) % 100)
        split = {"data": rng.randint(0, 256, size=(n, 3072)).astype(np.uint8), "fine_labels": fine.tolist(),
                 "coarse_labels": (fine // 5).tolist(), "filenames": [f"{name}_{i:05d}.png" for i in range(n)],
                 "batch_label": f"{name} batch 1 of 1"}
        (target / name).write_bytes(pickle.dumps(split, protocol=2))
    meta = {"fine_label_names": [f"class{i}" for i in range(100)], "coarse_label_names": [f"super{i}" for i in range(20)]}
    (target / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    stamp.write_text(json.dumps(spec))
    return target


# -- shims ----------------------------------------------------------------------------------------
def shim_cuda_to_cpu() -> None:
    import torch

    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]


def shim_cifar_integrity() -> None:
    import torchvision.datasets.cifar as cifar

    cifar.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)


def import_models(repo: Path) -> str:
    """``import models`` as the scripts do; if that fails, a lazy ``models`` package (shim 3)."""
    try:
        importlib.import_module("models")
        return "package"
    except Exception as exc:  # noqa: BLE001 - any failure of an unrelated backbone file
        reason = f"{type(exc).__name__}: {exc}"
    for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
        del sys.modules[name]
    owner: dict[str, str] = {}
    for node in ast.parse((repo / "models" / "__init__.py").read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            for alias in node.names:
                owner[alias.asname or alias.name] = node.module
    package = types.ModuleType("models")
    package.__path__ = [str(repo / "models")]  # type: ignore[attr-defined]
    package.__file__ = str(repo / "models" / "__init__.py")

    def lazy(name: str) -> Any:
        if name not in owner:
            raise AttributeError(f"module 'models' has no attribute {name!r}")
        value = getattr(importlib.import_module(f"models.{owner[name]}"), name)
        setattr(package, name, value)
        return value

    package.__getattr__ = lazy  # type: ignore[attr-defined]
    sys.modules["models"] = package
    return f"lazy (import models failed: {reason})"


# -- one method, in the child -----------------------------------------------------------------------
class TimedLoader:
    """Wraps a DataLoader: yields ``batches`` batches (across epochs if needed), time-stamping each request."""

    def __init__(self, loader: Any, batches: int, warmup: int) -> None:
        self.loader, self.batches, self.warmup = loader, batches, warmup
        self.marks: list[float] = []
        self.sizes: list[int] = []
        self.rss_before_mb = 0.0

    def __len__(self) -> int:
        return len(self.loader)  # the scripts divide their loss sums by it

    def __iter__(self):
        iterator = iter(self.loader)
        for index in range(self.batches):
            if index == self.warmup:
                self.rss_before_mb = status_kib("VmRSS") / 1024
                reset_hwm()
            self.marks.append(time.perf_counter())
            try:
                batch = next(iterator)
            except StopIteration:
                iterator = iter(self.loader)
                batch = next(iterator)
            self.sizes.append(len(batch[1]))
            yield batch
        self.marks.append(time.perf_counter())


def script_argv(method: str, args: argparse.Namespace, data_root: str) -> list[str]:
    arch = args.arch if method == "baseline" else f"{method}_{args.arch}"
    argv = [f"main_cifar_{method}.py", "--data", data_root, "--arch", arch, "--batch-size", str(args.batch_size),
            "--num-workers", str(args.num_workers)]
    if method != "baseline":
        argv += ["--num-branches", str(args.num_branches)]
    if method == "mcl_okd":
        argv += ["--nce_k", str(args.nce_k)]
    return argv


def run_method(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Import the method's script, build criteria and optimiser as its main() does, time its train()."""
    import torch
    import torch.nn as nn

    if args.threads:
        torch.set_num_threads(args.threads)
    repo = Path(args.original_repo).resolve()
    shims = []
    if args.device == "cpu":
        shim_cuda_to_cpu()
        shims.append(".cuda() is a no-op")
    if args.synthetic:
        shim_cifar_integrity()
        shims.append("CIFAR md5 checks accept the synthetic files")
    workdir = Path(tempfile.mkdtemp(prefix=f"orig-{method}-"))
    (workdir / "result").mkdir()
    os.chdir(workdir)
    sys.path.insert(0, str(repo))
    models_import = import_models(repo)

    argv = script_argv(method, args, str(Path(args.data_root).resolve()))
    sys.argv = argv
    started = time.perf_counter()
    spec = importlib.util.spec_from_file_location(f"main_cifar_{method}", repo / f"main_cifar_{method}.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script
    spec.loader.exec_module(script)  # the script's module-level setup: options, data, model

    net, sargs = script.net, script.args
    criterion_cls = nn.CrossEntropyLoss()
    criterion_list = nn.ModuleList([criterion_cls])
    if method == "baseline":
        optimizer = torch.optim.SGD(nn.ModuleList([net]).parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    elif method == "mcl_okd":
        net.eval()
        _, embedding = net(torch.randn(2, 3, 32, 32))
        sargs.rep_dim = embedding[0].shape[1]
        sargs.n_data = script.n_data
        criterion_kd = script.MCL_Loss(sargs)
        optimizer = torch.optim.SGD(nn.ModuleList([net, criterion_kd.embed_list]).parameters(), lr=0.1, momentum=0.9,
                                    weight_decay=5e-4, nesterov=True)
        criterion_list.extend([script.DistillKL(sargs.kd_T), criterion_kd])
    else:
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
        criterion_list.append(script.DistillKL(sargs.kd_T))
    criterion_list.cuda()

    loader = script.trainloader
    if method != "mcl_okd" and args.batch_size != SCRIPT_BATCH:  # the script hard-codes 128; same loader, other batch
        loader = torch.utils.data.DataLoader(script.trainset, batch_size=args.batch_size, shuffle=True,
                                             pin_memory=torch.cuda.is_available())
    workers = loader.num_workers
    timed = TimedLoader(loader, args.warmup + args.steps, args.warmup)
    script.trainloader = timed
    setup_s = time.perf_counter() - started
    script.train(0, criterion_list, optimizer)

    step_s = [b - a for a, b in zip(timed.marks[args.warmup:-1], timed.marks[args.warmup + 1:])]
    images = sum(timed.sizes[args.warmup:])
    peak = status_kib("VmHWM") / 1024
    return {
        "method": method, "script": f"main_cifar_{method}.py", "arch": sargs.arch, "argv": argv[1:],
        "branches": getattr(sargs, "num_branches", 1), "batch": args.batch_size, "workers": workers,
        "nce_k": getattr(sargs, "nce_k", None), "steps": args.steps, "warmup": args.warmup, "images": images,
        "seconds": sum(step_s), "img_s_median": images / len(step_s) / statistics.median(step_s),
        "img_s_mean": images / sum(step_s), "img_s_best": images / len(step_s) / min(step_s),
        "ms_per_step_median": 1000 * statistics.median(step_s),
        "first_step_s": timed.marks[1] - timed.marks[0],  # DataLoader start + first batch + first step
        "setup_s": setup_s, "peak_rss_mb": peak, "step_growth_mb": max(peak - timed.rss_before_mb, 0.0),
        "threads": torch.get_num_threads(), "models_import": models_import, "shims": shims,
    }


# -- parent -------------------------------------------------------------------------------------------
def _child(method: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--_method", method, "--_data-root", args.data_root] + args.forward_argv
    if args.synthetic:
        cmd.append("--_synthetic")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"original_throughput.py: the original code failed for {method}:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = ["| method | script | arch | branches | batch | DataLoader workers | img/s (median) | mean | best | ms/step "
             "| peak RSS MB (step growth) | issue 8's figure |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ref = REFERENCE_CPU_IMG_S.get(r["method"]) if args.device == "cpu" and args.arch == "resnet32" and r["batch"] == 64 \
            and (r["branches"] == 4 or r["method"] == "baseline") else None
        name = f"{r['method']} (K={r['nce_k']})" if r["nce_k"] else r["method"]
        lines.append(f"| {name} | {r['script']} | {r['arch']} | {r['branches']} | {r['batch']} | {r['workers']} | "
                     f"{r['img_s_median']:,.0f} | {r['img_s_mean']:,.0f} | {r['img_s_best']:,.0f} | {r['ms_per_step_median']:.1f} | "
                     f"{r['peak_rss_mb']:,.0f} (+{r['step_growth_mb']:,.0f}) | {ref or '—'} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--original-repo", required=True, metavar="PATH", help="a clone of github.com/winycg/MCL-OKD")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD",
                        help=f"methods to time (default: all: {' '.join(METHODS)})")
    parser.add_argument("--arch", default="resnet32", choices=["resnet32", "resnet110"], help="CIFAR ResNet of every method (default resnet32)")
    parser.add_argument("--num-branches", type=int, default=4, help="peers of the OKD methods (default 4)")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch (default 64)")
    parser.add_argument("--nce-k", type=int, default=256, help="MCL-OKD negatives per anchor (default 256)")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="MCL-OKD's DataLoader processes (script default 8; default here min(8, CPUs)); the other scripts use none")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first, DataLoader start included (default 5)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cpu (default; shims .cuda()) or cuda (the original as written)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice, = cores)")
    parser.add_argument("--num-train", type=int, default=50_000, help="synthetic training images, a multiple of 100 (default 50,000)")
    parser.add_argument("--num-test", type=int, default=1_000, help="synthetic test images (built by the scripts, not timed; default 1,000)")
    parser.add_argument("--data", metavar="DIR", help="a real CIFAR-100 root (holding cifar-100-python/) instead of synthetic data")
    parser.add_argument("--synthetic-dir", metavar="DIR", default=str(Path(tempfile.gettempdir()) / "okd-original-bench-cifar100"),
                        help="where the synthetic CIFAR-100 is written and reused (default: in the temp dir)")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="S", help="before each method wait up to S s for an idle CPU")
    parser.add_argument("--json", metavar="OUT", help="also write all figures to this JSON file")
    parser.add_argument("--_method", help=argparse.SUPPRESS)
    parser.add_argument("--_data-root", dest="data_root", help=argparse.SUPPRESS)
    parser.add_argument("--_synthetic", dest="synthetic", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.forward_argv = [a for a in (sys.argv[1:] if argv is None else argv)]
    return args


def validate(args: argparse.Namespace) -> None:
    repo = Path(args.original_repo)
    missing = [f"main_cifar_{m}.py" for m in args.methods if not (repo / f"main_cifar_{m}.py").is_file()]
    missing += [p for p in ("models/__init__.py", "utils.py") if not (repo / p).is_file()]
    if "mcl_okd" in args.methods:
        missing += [p for p in ("mcl/criterion.py", "dataset/cifar100.py") if not (repo / p).is_file()]
    if missing:
        fail(f"--original-repo {repo} is not a clone of winycg/MCL-OKD (missing {', '.join(missing)})")
    for name in ("steps", "batch_size", "num_branches", "nce_k", "num_test"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.num_workers < 0:
        fail("--warmup and --num-workers must be >= 0")
    if args.num_branches < 2 and set(args.methods) - {"baseline"}:
        fail("--num-branches must be >= 2 for the OKD methods")
    if args.num_train < 100 or args.num_train % 100:
        fail(f"--num-train must be a positive multiple of 100 (balanced classes, as CIFAR-100), got {args.num_train}")
    if args.data and not (Path(args.data) / FOLDER).is_dir():
        fail(f"--data {args.data} holds no {FOLDER}/ folder")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            fail("--device cuda requested but no CUDA device is available (use --device cpu)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args._method:
        try:
            print(json.dumps(run_method(args._method, args)))
        except Exception:  # noqa: BLE001 - reported by the parent with the original's traceback
            traceback.print_exc()
            raise SystemExit(1) from None
        return {}
    validate(args)
    if args.data:
        args.data_root, args.synthetic = str(Path(args.data).resolve()), False
    else:
        args.data_root, args.synthetic = str(Path(args.synthetic_dir).resolve()), True
        write_synthetic_cifar100(Path(args.data_root), args.num_train, args.num_test)
    rows = []
    for method in args.methods:
        busy = wait_for_idle(args.wait_idle) if args.wait_idle else None
        row = _child(method, args)
        row["cpu_busy_before"] = busy
        rows.append(row)
        print(f"  {method}: {row['img_s_median']:,.0f} img/s ({row['workers']} DataLoader workers)", file=sys.stderr, flush=True)
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    report = {
        "original_repo": str(Path(args.original_repo).resolve()), "device": args.device,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch": _torch_version(), "data": "synthetic CIFAR-100" if args.synthetic else args.data_root,
        "num_train": args.num_train if args.synthetic else None, "load_average_after": load,
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "forward_argv"},
        "reference_cpu_img_s": REFERENCE_CPU_IMG_S, "results": rows,
    }
    shims = sorted({s for r in rows for s in r["shims"]})
    imports = sorted({r["models_import"] for r in rows})
    print(f"original MCL-OKD code from {report['original_repo']} on {args.device} ({report['cpu']}, {report['cpu_count']} CPUs, "
          f"torch {report['torch']}, {rows[0]['threads'] if rows else '?'} threads); "
          f"{'synthetic CIFAR-100, ' + format(args.num_train, ',') + ' training images' if args.synthetic else 'CIFAR-100 at ' + args.data_root}; "
          f"{args.steps} timed steps after {args.warmup} warm-up; load average after: "
          f"{', '.join(f'{x:.1f}' for x in load) if load else 'n/a'}")
    print(f"shims: {'; '.join(shims) or 'none'}; models: {'; '.join(imports)}")
    if args.num_workers != 8 and "mcl_okd" in args.methods:
        print(f"MCL-OKD's DataLoader runs {args.num_workers} workers (the script's default is 8; this machine has {os.cpu_count()} CPUs)")
    print()
    print(table(rows, args))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main()
