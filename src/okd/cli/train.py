"""``okd train``: every TrainConfig field as a flag, plus the reference's spellings; the method options'
flags come from the methods' own declarations (``okd.methods.Option``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from okd.engine.config import TrainConfig
from okd.errors import OKDUserError
from okd.plugins import add_plugin_argument

SUPPRESS = argparse.SUPPRESS


def _bool_pair(group: argparse._ArgumentGroup, name: str, help: str) -> None:
    dest = name.replace("-", "_")
    group.add_argument(f"--{name}", dest=dest, action="store_true", default=SUPPRESS, help=help)
    group.add_argument(f"--no-{name}", dest=dest, action="store_false", default=SUPPRESS, help=f"turn --{name} off")


def _lr_type(value: str) -> str:
    return {"sgdr": "cosine", "cosine": "cosine", "multistep": "multistep", "constant": "constant"}.get(value.lower(), value)


def add_method_options(parser: argparse.ArgumentParser, method: str | None) -> None:
    """One flag per method option, from the methods' declarations. Every registered method's options
    are accepted (a run ignores those its method lacks, as a config file may carry them); ``--help``
    lists ``method``'s, or all of them, each with the methods that declare it, when none was named."""
    from okd.methods import all_options, get_method_class, option_owners

    own = {o.name: o for o in get_method_class(method).declared_options()} if method else {}
    title = f"{method} options (defaults: the method's)" if method else "method options (`okd train --method M --help` shows M's)"
    group = parser.add_argument_group(title)
    owners = option_owners()
    taken = {flag for action in parser._actions for flag in action.option_strings}
    ordered = [*own.values(), *(o for n, o in all_options().items() if n not in own)]
    for option in ordered:
        name = option.name
        if method and name not in own:
            help = SUPPRESS
        elif method:
            help = option.describe()
        else:
            help = f"{'/'.join(owners[name])}: {option.help}"
        flags = [flag for flag in option.flags if flag not in taken]
        if option.type is bool:
            group.add_argument(*flags, dest=name, action="store_true", default=SUPPRESS, help=help)
            group.add_argument(f"--no-{name.replace('_', '-')}", dest=name, action="store_false", default=SUPPRESS,
                               help=SUPPRESS if help is SUPPRESS else f"turn --{name.replace('_', '-')} off")
        else:
            group.add_argument(*flags, dest=name, metavar=option.type.__name__.upper(), help=help)


def method_named_in(argv: Sequence[str]) -> str | None:
    """The method a ``okd train`` command line names (``--method``, ``--arch <method>_...``, or its
    ``--config`` file), after importing the plugins it names (never a saved run's by itself); None when it names none or a wrong one (the real
    parse reports that)."""
    from okd.engine.config import normalise_key, read_yaml_config
    from okd.methods import resolve_method_name, split_arch
    from okd.plugins import import_plugins

    pre = argparse.ArgumentParser(add_help=False)
    for flag in ("--method", "--arch", "--config"):
        pre.add_argument(flag)
    add_plugin_argument(pre)
    known, _ = pre.parse_known_args(argv)
    try:
        import_plugins(known.plugins)
        saved = {normalise_key(k): v for k, v in read_yaml_config(known.config).items()} if known.config else {}
        method, arch = known.method or saved.get("method"), known.arch or saved.get("arch")
        from_arch = split_arch(str(arch))[0] if arch else None
        return resolve_method_name(str(method)) if method else from_arch
    except (OKDUserError, SystemExit):
        return None


def _heterogeneous_methods() -> list[str]:
    from okd.methods import get_method_class, list_methods

    return [name for name in list_methods() if get_method_class(name).supports_heterogeneous]


def _methods_sampling(sampler: str) -> list[str]:
    from okd.methods import get_method_class, list_methods

    return [name for name in list_methods() if get_method_class(name).train_sampler == sampler]


def _peer_defaults() -> str:
    """``"; baseline 1; pcl 3"``: the methods whose recipe sets another cohort size (on one backbone)."""
    from okd.engine.recipe import DEFAULT_PEERS
    from okd.methods import get_method_class, list_methods

    sizes = {name: get_method_class(name).recipe("cifar100", ["resnet32"]).get("num_peers") for name in list_methods()}
    return "".join(f"; {name} {size}" for name, size in sizes.items() if size not in (None, DEFAULT_PEERS))


def add_parser(sub: argparse._SubParsersAction, method: str | None = None) -> None:
    from okd.data import DATASETS
    from okd.methods import DEFAULT_METHOD, list_methods
    from okd.methods.registry import ARCH_PREFIXES

    p = sub.add_parser(
        "train",
        help="train a method on a backbone",
        description="Train a cohort with one online-distillation method. Unset values come from the "
        "method/dataset recipe (the reference's); every value can be set here or in --config YAML.",
        argument_default=SUPPRESS,
    )
    what = p.add_argument_group("what to train")
    what.add_argument("--method", help=f"{' | '.join(list_methods())} (default: {DEFAULT_METHOD})")
    what.add_argument("--arch", help=f"backbone, or the reference's <method>_<backbone> (e.g. {min(ARCH_PREFIXES, key=len)}resnet32), or a timm / "
                      "torchvision classifier as timm:NAME or tv:NAME (e.g. timm:resnet18, tv:mobilenet_v3_small); default "
                      "resnet32. One backbone per peer, comma-separated (e.g. resnet32,resnet110), for methods whose peers "
                      f"are independent networks ({', '.join(_heterogeneous_methods())}): their peers then share nothing (--share none)")
    what.add_argument("--num-peers", "--num-branches", dest="num_peers", type=int,
                      help=f"peers in the cohort (default 4{_peer_defaults()}; --arch a,b: the number of backbones)")
    what.add_argument("--share", help="none | early | late | tree (default: the method's; none for --arch a,b)")
    what.add_argument("--early", help="stage where 'early' sharing ends, i.e. the first per-peer stage with --share early "
                      "(default: the backbone's; `okd models --arch NAME` lists the stages)")
    what.add_argument("--late", help="stage where 'late' sharing ends, i.e. the first per-peer stage with --share late "
                      "(default: the backbone's last feature stage)")
    _bool_pair(what, "pretrained", "timm:/tv: backbones: start every peer from the library's pretrained weights, "
               "from the local cache only (never downloaded)")
    add_plugin_argument(what, "; saved with the run, so eval, export and --resume import it again")

    data = p.add_argument_group("data")
    data.add_argument("--dataset", help=f"{' | '.join(DATASETS)} (folder: your images; digits: embedded); "
                      "default: what --data holds, digits without --data")
    data.add_argument("--data", help="CIFAR-10/100 archive/folder (or its parent), an ImageNet/image-folder root with "
                      "train/<class>/ and val/<class>/, or a folder of the four IDX files (fashion-mnist: default "
                      "/usr/share/datasets/fashion-mnist)")
    data.add_argument("--download", action="store_true", help="fetch CIFAR-10/100 or the IDX sets into --data if missing (verifies their MD5)")
    data.add_argument("--workers", "--num-workers", dest="workers", type=int,
                      help="image decoding processes for imagenet and folder (default: the CPUs this process may use, at most 8)")
    data.add_argument("--image-size", type=int, help="--dataset folder: train and evaluate at N x N pixels "
                      "(default: the backbone's input size, 32 for the CIFAR nets)")
    data.add_argument("--val-split", type=float, help="--dataset folder: hold out this fraction of each train/ class "
                      "for validation (seeded; no val/ needed), e.g. 0.1")
    data.add_argument("--in-memory", type=str.lower, choices=("auto", "yes", "no"), help="--dataset folder: decode every image once "
                      "into memory and augment as CIFAR (yes), stream from disk (no), or decide by size (auto, default)")
    for name, what in (("train", "training images (512)"), ("test", "test images (256)"), ("classes", "classes (10)"),
                       ("size", "image side in pixels (32)")):
        data.add_argument(f"--synthetic-{name}", type=int, help=f"--dataset synthetic: {what}")
    data.add_argument("--train-per-class", type=int,
                      help="keep only the first K training images of each class (a fixed few-label subset; in-memory datasets)")
    data.add_argument("--test-per-class", type=int,
                      help="evaluate on the first K test images of each class (a fixed, cheaper test subset; in-memory datasets)")
    data.add_argument("--sampler", help=f"training batches: auto (default: the method's; m_per_class for "
                      f"{', '.join(_methods_sampling('m_per_class'))}) | random "
                      "(a shuffled pass per epoch) | m_per_class (batch/m random classes x m samples, drawn afresh per batch)")
    data.add_argument("--m-per-class", type=int, help="--sampler m_per_class: samples of each class in a batch (default 2)")

    opt = p.add_argument_group("optimisation (defaults: the recipe of the method and dataset)")
    opt.add_argument("--epochs", type=int)
    opt.add_argument("--batch-size", type=int, help="GLOBAL batch size, split across distributed ranks")
    opt.add_argument("--eval-batch-size", type=int)
    opt.add_argument("--lr", "--init-lr", dest="lr", type=float, help="peak learning rate of the cosine")
    opt.add_argument("--wd", "--weight-decay", dest="wd", type=float)
    opt.add_argument("--momentum", type=float)
    _bool_pair(opt, "nesterov", "Nesterov momentum (default on; --no-nesterov)")
    opt.add_argument("--lr-schedule", "--lr-type", dest="lr_schedule", type=_lr_type, help="cosine (=SGDR, default) | multistep | constant")
    opt.add_argument("--milestones", type=int, nargs="+")
    opt.add_argument("--lr-gamma", type=float, help="multistep decay factor (default 0.1)")
    opt.add_argument("--warmup-epochs", type=int, help="raise the lr linearly from ~0 over the first N epochs "
                     "(recipe: 0 on the paper datasets, 5 on --dataset folder)")

    add_method_options(p, method)

    run = p.add_argument_group("execution")
    run.add_argument("--seed", "--manual_seed", "--manual-seed", dest="seed", type=int)
    run.add_argument("--device", help="auto (default) | cpu | cuda | cuda:N")
    run.add_argument("--gpu", "--gpu-id", dest="gpu", help="the reference's GPU index: same as --device cuda:N")
    run.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    _bool_pair(run, "channels-last", "channels_last memory format (default: on; faster on CPU and CUDA)")
    run.add_argument("--compile", action="store_true", help="torch.compile the cohort")
    run.add_argument("--sgd-impl", type=str.lower, choices=("auto", "fused", "foreach", "loop"),
                     help="SGD kernel: auto (default: fused on CUDA, foreach on CPU) | fused | foreach | loop (per parameter)")
    run.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower on CUDA)")
    run.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across distributed ranks")
    run.add_argument("--limit-batches", type=int, help="train and eval at most N batches per epoch (smoke runs)")
    run.add_argument("--nan-policy", type=str.lower, choices=("stop", "skip-step"), help="on a non-finite loss: stop (default) or skip the step")
    run.add_argument("--log-interval", type=int, help="steps between progress updates (default 50)")
    run.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard in the run folder")

    io = p.add_argument_group("run folder")
    io.add_argument("--config", help="YAML file of options (command-line flags win)")
    io.add_argument("--out", help="run folder (default runs/<method>_<arch>_<dataset>_s<seed>)")
    io.add_argument("-r", "--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    io.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    io.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.set_defaults(run=run_train)


NOT_OPTIONS = ("config", "out", "resume", "overwrite", "quiet", "run", "command", "gpu")


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig options given on the command line (``--gpu N`` is ``device="cuda:N"``)."""
    given = {k: v for k, v in vars(args).items() if k not in NOT_OPTIONS}
    if getattr(args, "gpu", None) is not None:
        given["device"] = f"cuda:{args.gpu}"
    return given


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < --config YAML < flags; the recipe is filled later (``train_config``, as ``okd.train`` does)."""
    from okd.engine.options import given_config

    return given_config(options_from_args(args), getattr(args, "config", None))


def _resolved_config(args: argparse.Namespace) -> TrainConfig:
    from okd.engine.options import train_config

    resume_from = getattr(args, "out", None) if getattr(args, "resume", False) else None
    return train_config(options_from_args(args), config_file=getattr(args, "config", None), resume_from=resume_from)


def run_train(args: argparse.Namespace) -> int:
    from okd.engine import distributed as okd_dist
    from okd.engine.options import default_run_folder
    from okd.engine.trainer import Trainer, TrainingInterrupted

    cfg = _resolved_config(args)
    out = Path(getattr(args, "out", None) or default_run_folder(cfg))
    with okd_dist.process_group(cfg.device):
        trainer = Trainer(cfg, out, resume=getattr(args, "resume", False), overwrite=getattr(args, "overwrite", False),
                          quiet=getattr(args, "quiet", False))
        try:
            summary = trainer.fit()
        except TrainingInterrupted as stop:
            if trainer.is_main:
                try:  # after SIGHUP the terminal may be gone: the run is saved, the message is optional
                    print(f"okd train: {stop}; saved {out / 'last.pt'}.\nResume with: okd train --out {out} --resume")
                except OSError:
                    pass
            return 128 + stop.signum
    if trainer.is_main and summary["last"]:
        from okd.models import arch_label

        last = summary["last"]
        print(
            f"done: {cfg.method} {arch_label(cfg.arch)} on {cfg.dataset}, {summary['epochs_done']} epochs. Test top-1 error: "
            f"deployed peer {last['deployed']['top1']:.2f}%, peer mean {last['peer_mean']['top1']:.2f}%, "
            f"ensemble {last['ensemble']['top1']:.2f}%. Run folder: {out}"
        )
    return 0
