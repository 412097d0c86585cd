"""The one training loop: any method, any backbone, any dataset, one process or many.

The engine talks to a method only through the protocol of ``okd.methods.base`` (forward, losses,
ensemble_logits, deployed_peer, after_step). Randomness is derived from (seed, epoch, step, rank)
at every step, so a run stopped anywhere and resumed computes exactly what an uninterrupted run
would (bit-identical on CPU).
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from okd.data import DataConfig, DataSpec, build_data
from okd.data.fingerprint import check_same_data
from okd.engine import distributed as okd_dist
from okd.engine.checkpoint import load_checkpoint, save_checkpoint, state_dict_mismatch
from okd.engine.config import TrainConfig, check_device_name, config_from_mapping, diff_configs, to_plain
from okd.engine.integrity import DamagedCheckpoint
from okd.engine.preflight import check_fits, cohort_bytes
from okd.engine.metrics import STANDARD_HEADS, ErrorMeter, extra_heads, summarise_errors
from okd.common.progress import progress
from okd.engine.step_log import StepLog
from okd.engine.rundir import RunDir
from okd.engine.schedule import learning_rate, warmup_factor
from okd.engine.step import autocast, make_optimizer, train_step
from okd.engine.sync_batchnorm import convert_sync_batchnorm
from okd.engine.tensorboard import TensorBoardLogger, require_tensorboard
from okd.errors import OKDUserError
from okd.methods import DatasetInfo, OKDMethod, build_method, get_method_class
from okd.models import BackboneOptions, arch_label, backbone_options, count_macs, count_params, create_backbone


class TrainingInterrupted(Exception):
    """A stop signal (SIGINT, SIGTERM, SIGHUP, SIGUSR1) arrived; last.pt holds the exact position to resume from."""

    def __init__(self, signum: int, epoch: int, step: int, out: Path) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name} at epoch {epoch + 1}, step {step}")
        self.signum, self.epoch, self.step, self.out = signum, epoch, step, out


class NonFiniteLoss(OKDUserError):
    """A loss term became NaN/inf; the last good checkpoint is kept."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The torch device for ``--device`` (train, eval and the benchmarks); a bad name is a user error."""
    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OKDUserError("--device cuda requested but no CUDA device is available (use --device cpu)")
        if name == "cuda":
            return torch.device("cuda", local_rank)
        if int(name.split(":")[1]) >= torch.cuda.device_count():
            raise OKDUserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 first")
        if okd_dist.is_distributed():  # every process would share one GPU
            raise OKDUserError(f"--device {name} (or --gpu) pins every process to one GPU; under torchrun use "
                               "--device cuda or auto: process LOCAL_RANK then uses GPU LOCAL_RANK")
    return torch.device(name)


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """A distinct, reproducible RNG seed for every step of every rank."""
    return (seed * 1_000_003 + epoch * 100_003 + step * 1_009 + rank * 7) % (2**63 - 1)


def backbone_options_of(cfg: TrainConfig, pretrained: bool | None = None) -> BackboneOptions:
    """The config's backbone choices; rebuilding a trained model for its weights passes ``pretrained=False``."""
    return BackboneOptions(early=cfg.early, late=cfg.late, pretrained=cfg.pretrained if pretrained is None else pretrained)


def resolve_sampler(cfg: TrainConfig) -> str:
    """``--sampler auto`` is the method's own (MCL: m_per_class); kept "auto" in the config so runs
    saved before the option existed still resume."""
    return get_method_class(cfg.method).train_sampler if cfg.sampler == "auto" else cfg.sampler


def build_for_config(
    cfg: TrainConfig, device: torch.device, dist_info: okd_dist.DistInfo, data_manifest: dict[str, Any] | None = None, eval_only: bool = False
) -> tuple[DataSpec, Any, Any, OKDMethod]:
    """Data loaders and the method for a resolved config (shared by train and eval).

    ``data_manifest`` is what the run saved about its data (checkpoint "data"): a resumed run is
    checked against it, an evaluation follows it (class names, validation split).
    """
    channels_last = bool(cfg.channels_last) if cfg.channels_last is not None else True  # faster on CUDA and on CPU (benchmarks/train_throughput.py)
    data_cfg = DataConfig(
        dataset=cfg.dataset,
        data_dir=cfg.data,
        download=cfg.download,
        batch_size=cfg.batch_size,
        eval_batch_size=cfg.eval_batch_size,
        device=str(device),
        seed=cfg.seed,
        workers=cfg.workers,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
        channels_last=channels_last,
        synthetic_train=cfg.synthetic_train,
        synthetic_test=cfg.synthetic_test,
        synthetic_classes=cfg.synthetic_classes,
        synthetic_size=cfg.synthetic_size,
        train_per_class=cfg.train_per_class,
        test_per_class=cfg.test_per_class,
        image_size=cfg.image_size,
        val_split=cfg.val_split,
        in_memory=cfg.in_memory,
        manifest=data_manifest,
        eval_only=eval_only,
        sampler=resolve_sampler(cfg),
        m_per_class=cfg.m_per_class,
    )
    spec, train_loader, eval_loader = build_data(data_cfg)
    info = DatasetInfo(num_train=spec.num_train, num_classes=spec.num_classes, train_targets=spec.train_targets)
    with torch.random.fork_rng(devices=[]), backbone_options(backbone_options_of(cfg, pretrained=False)):
        need = cohort_bytes(lambda: build_method(cfg.method, cfg.arch, spec.num_classes, cfg.num_peers, cfg.share, dataset=info,
                                                  **cfg.method_options))
    if need is not None:
        check_fits(f"the {cfg.method} cohort of {cfg.num_peers} x {cfg.arch} (weights, buffers such as memory banks, "
                   "gradients and momentum; activations not counted)", need, device,
                   "use fewer --num-peers, a smaller backbone or memory bank, or a device with more memory")
    with torch.random.fork_rng(devices=[]), backbone_options(backbone_options_of(cfg)):
        torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only
        method = build_method(cfg.method, cfg.arch, spec.num_classes, cfg.num_peers, cfg.share, dataset=info, **cfg.method_options)
    if train_loader is not None:  # None when an evaluation skips the training images
        train_loader.set_views(method.train_views)
    method.to(device)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    return spec, train_loader, eval_loader, method


def peer_sizes(backbones: list[str], num_classes: int, input_size: int) -> list[dict[str, Any]]:
    """Each peer's backbone, parameters and multiply-adds per image (peers may be different backbones)."""
    sized: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(backbones):
        single = create_backbone(name, num_classes)
        sized[name] = {"arch": name, "params": count_params(single), "macs_per_image": count_macs(single, input_size)}
    return [dict(sized[name]) for name in backbones]


def memory_usage(device: torch.device) -> dict[str, float]:
    """Resident memory now (MB) and, on CUDA, peak allocated memory: a leak shows across epochs."""
    usage: dict[str, float] = {}
    try:
        with open("/proc/self/statm") as handle:
            usage["rss_mb"] = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        pass
    if device.type == "cuda":
        usage["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return usage


def named_logits(method: OKDMethod, output: Any) -> dict[str, torch.Tensor]:
    """Every evaluated head's logits: peer0..N-1, the method's ensemble, then its ``eval_heads``."""
    named = {f"peer{i}": z for i, z in enumerate(output.logits)}
    named["ensemble"] = method.ensemble_logits(output)
    for name, logits in method.eval_heads(output).items():
        if name in named or name in STANDARD_HEADS:
            raise ValueError(f"{type(method).__name__}.eval_heads returned {name!r}, a name the engine already uses")
        named[name] = logits
    return named


@torch.no_grad()
def evaluate(method: OKDMethod, forward: nn.Module, loader, device: torch.device, amp: bool = False, limit: int | None = None) -> dict[str, dict[str, float]]:
    """Top-1/top-5 error of every peer, the peer mean, the deployed head, the ensemble and the method's extra heads."""
    was_training = forward.training
    forward.eval()
    meter: ErrorMeter | None = None
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            break
        with autocast(device, amp):
            output = forward(batch.images)
        named = named_logits(method, output)
        if meter is None:  # the head names are known once the method has produced an output
            meter = ErrorMeter(list(named), device)
        meter.update([z.float() for z in named.values()], batch.targets)
    forward.train(was_training)
    if meter is None:  # an empty shard: the standard heads only (nothing was scored)
        meter = ErrorMeter([f"peer{i}" for i in range(method.num_peers)] + ["ensemble"], device)
    return summarise_errors(meter.errors(), method.num_peers, method.deployed_head)


@dataclass
class EpochSums:
    """Loss sums of the current epoch, kept on the device; read once at the end of the epoch."""

    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    steps: int = 0
    images: int = 0
    seconds: float = 0.0

    def add(self, losses: dict[str, torch.Tensor], total: torch.Tensor, images: int) -> None:
        for name, value in {**losses, "total": total}.items():
            value = value.detach().float()
            self.terms[name] = self.terms[name] + value if name in self.terms else value.clone()
        self.steps += 1
        self.images += images

    def means(self) -> dict[str, float]:
        """Per-step means, averaged over ranks (every rank runs the same steps)."""
        if not self.terms:
            return {}
        names = sorted(self.terms)
        values = okd_dist.mean_over_ranks(torch.stack([self.terms[n] for n in names]) / max(self.steps, 1))
        return dict(zip(names, values.cpu().tolist()))

    def state(self) -> dict[str, Any]:
        """The sums to save at a mid-epoch stop, averaged over ranks (rank 0 saves them for all ranks,
        and every rank resumes from them, so the resumed epoch's loss still covers every rank).

        A collective call under DDP: every rank calls it.
        """
        names = sorted(self.terms)
        terms: dict[str, torch.Tensor] = {}
        if names:
            values = okd_dist.mean_over_ranks(torch.stack([self.terms[n] for n in names])).cpu()
            terms = {name: value.clone() for name, value in zip(names, values)}
        return {"terms": terms, "steps": self.steps, "images": self.images, "seconds": self.seconds}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> EpochSums:
        return cls({k: v.to(device) for k, v in state["terms"].items()}, state["steps"], state["images"], state["seconds"])


# Signals that stop a run after its current step, saved: Ctrl-C, kill, a closed terminal (SIGHUP),
# and the warning a batch scheduler such as Slurm sends before a time limit (SIGUSR1).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1") if hasattr(signal, name))


class _StopSignals:
    """Turn the STOP_SIGNALS into a flag the loop checks between steps (finish the step, then save)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading_is_main():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class Trainer:
    def __init__(self, cfg: TrainConfig, out: str | Path, *, resume: bool = False, overwrite: bool = False, quiet: bool = False) -> None:
        self.cfg = cfg
        self.run = RunDir(out)
        self.resume = resume
        self.overwrite = overwrite
        self.quiet = quiet
        self.dist = okd_dist.current()
        self.is_main = self.dist.is_main

    # -- set-up -------------------------------------------------------------------------------
    def _load_resume_state(self) -> dict[str, Any] | None:
        if not self.resume:
            return None
        try:
            state = load_checkpoint(self.run.last, for_resume=True)
        except DamagedCheckpoint as damage:
            raise self.run.damaged_last(damage) from None
        previous = config_from_mapping(state["config"])
        # older runs saved every method's options (null where unset, ignored where not the method's)
        declared = {option.name for option in get_method_class(self.cfg.method).declared_options()}
        previous.method_options = {k: v for k, v in previous.method_options.items() if k in declared}
        if "warmup_epochs" not in state["config"] and not self.cfg.warmup_epochs:
            previous.warmup_epochs = self.cfg.warmup_epochs  # saved before --warmup-epochs existed: it warmed up for 0
        changed = diff_configs(previous, self.cfg)
        if changed:
            old, new = to_plain(previous), to_plain(self.cfg)
            detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
            raise OKDUserError(
                f"--resume: {self.run.path} holds a run with another config ({detail}); only --epochs may grow. "
                "Use a new --out folder, or --overwrite to replace the run"
            )
        if self.cfg.epochs < state["epoch"]:
            raise OKDUserError(f"--resume: the run already finished {state['epoch']} epochs; --epochs {self.cfg.epochs} is fewer")
        return state

    def setup(self) -> None:
        """Everything that can refuse the run (device, data, method options such as nce_k, the optimizer,
        the checkpoint to resume, optional packages) runs before the run folder is created or cleared:
        taking the folder (``prepare``, which an --overwrite empties) is the last step before training,
        so a refused command never destroys a run."""
        cfg = self.cfg
        if self.is_main:
            self.run.check(resume=self.resume, overwrite=self.overwrite)
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        resume_state = self._load_resume_state()
        data_manifest = resume_state.get("data") if resume_state is not None else None
        self.spec, self.train_loader, self.eval_loader, self.method = build_for_config(cfg, self.device, self.dist, data_manifest)
        if resume_state is not None:
            check_same_data(resume_state.get("data_fingerprint"), self.spec.fingerprint or {},
                            f"--dataset {cfg.dataset}" + (f" at {cfg.data}" if cfg.data else ""))
        self.amp = cfg.amp and self.device.type == "cuda"
        self.notices = [f"note: --amp (bf16 autocast) is CUDA-only; training in float32 on {self.device}"] if cfg.amp and not self.amp else []
        self.notices += [f"note: {note}" for note in self.spec.notes]
        if resolve_sampler(cfg) == "m_per_class":
            self.notices.append(f"sampler m_per_class: every batch holds {cfg.batch_size // cfg.m_per_class} random classes "
                                f"x {cfg.m_per_class} samples, drawn afresh per batch")
        self.peer_sizes = peer_sizes(self.method.backbone_names, self.spec.num_classes, self.spec.input_size)
        self.training_params = count_params(self.method)
        model: nn.Module = self.method
        self.stop_group = None
        if self.dist.enabled:
            if cfg.sync_bn:  # nn.SyncBatchNorm on CUDA, ours on CPU (gloo); before the optimiser sees the parameters
                model = convert_sync_batchnorm(model, self.device)
                self.method = model  # type: ignore[assignment]
            with warnings.catch_warnings():  # broadcast_buffers=False is deliberate: the banks are synced by gathering
                warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
                model = nn.parallel.DistributedDataParallel(
                    model, device_ids=[self.device.index] if self.device.type == "cuda" else None, broadcast_buffers=False
                )
            self.stop_group = okd_dist.host_group()
        self.ddp_model = model
        self.forward = torch.compile(model) if cfg.compile else model
        self.optimizer = make_optimizer(
            self.method.parameter_groups(), self.device, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
            weight_decay=cfg.wd, impl=cfg.sgd_impl,
        )
        self.start_epoch, self.start_step = 0, 0
        self.best: dict[str, Any] = {}
        self.partial: dict[str, Any] | None = None
        self.metrics_records = 0
        if resume_state is not None:
            self._restore(resume_state)
        if cfg.tensorboard and self.is_main:
            require_tensorboard()
        self._take_run_folder()
        self.tensorboard = TensorBoardLogger(self.run.path) if (cfg.tensorboard and self.is_main) else None
        if self.is_main:
            self.run.write_config(to_plain(cfg))
        self.steps_per_epoch = len(self.train_loader)
        if cfg.limit_batches is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.limit_batches)

    def _take_run_folder(self) -> None:
        """Lock the folder and clear what a new run replaces: nothing may refuse the run after this."""
        if self.is_main:
            took_over = self.run.prepare(resume=self.resume, overwrite=self.overwrite)
            if took_over:
                self.notices.append(took_over)
            if self.resume:
                self.run.truncate_metrics(self.metrics_records)
            self.run.write_data(self.spec.manifest)
        okd_dist.barrier()

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.method.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise OKDUserError(f"cannot resume from {self.run.last}: it does not match this model ({state_dict_mismatch(exc)})") from None
        self.start_epoch, self.start_step = state["epoch"], state["step"]
        self.best = state.get("best", {})
        self.partial = state.get("partial")
        self.metrics_records = state.get("metrics_records", 0)

    # -- checkpoints --------------------------------------------------------------------------
    def _state(self, epoch: int, step: int, partial: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "config": to_plain(self.cfg),
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": epoch,  # epochs fully done (resume starts this epoch)
            "step": step,  # steps already done inside that epoch
            "partial": partial,
            "best": self.best,
            "metrics_records": self.metrics_records,
            "data": self.spec.manifest,  # class names; for an image folder also its split and file fingerprints
            "data_fingerprint": self.spec.fingerprint,  # sizes, label counts, a hash of a sample: --resume checks it
            "torch_version": str(torch.__version__),
        }

    def _save(self, path: Path, epoch: int, step: int, partial: dict[str, Any] | None = None) -> None:
        if self.is_main:
            save_checkpoint(path, self._state(epoch, step, partial), previous=self.run.previous if path == self.run.last else None)

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to ``cfg.epochs``; the run folder's lock is held from set-up to the last write, whatever ends the run."""
        try:
            return self._fit()
        finally:
            self.run.lock.release()

    def _fit(self) -> dict[str, Any]:
        self.setup()
        cfg = self.cfg
        if self.is_main:
            self._log(self._banner())
            for notice in self.notices:
                self._log(notice)
        with _StopSignals() as stop:
            for epoch in range(self.start_epoch, cfg.epochs):
                start_step = self.start_step if epoch == self.start_epoch else 0
                sums = EpochSums.from_state(self.partial, self.device) if (self.partial and start_step) else EpochSums()
                self._train_epoch(epoch, start_step, sums, stop)
                okd_dist.broadcast_norm_stats(self.method)  # evaluate with the statistics rank 0 saves
                test = evaluate(self.method, self.forward, self.eval_loader, self.device, self.amp, cfg.limit_batches)
                self._end_epoch(epoch, sums, test)
        summary = self._summary(finished=True)
        if self.is_main:
            self.run.write_summary(summary)
            if self.tensorboard is not None:
                self.tensorboard.close()
        return summary

    def _train_epoch(self, epoch: int, start_step: int, sums: EpochSums, stop: _StopSignals) -> None:
        cfg = self.cfg
        lr = learning_rate(epoch, cfg.lr, cfg.epochs, cfg.lr_schedule, cfg.milestones, cfg.lr_gamma)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.forward.train()
        if start_step == 0:
            self.method.start_epoch(epoch)
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        bad_terms: torch.Tensor | None = None  # which terms were non-finite at first_bad, kept on device
        began = time.perf_counter()
        bar = progress(total=self.steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=self.quiet or not self.is_main)
        lines = StepLog.for_stdout(progress.write, quiet=self.quiet or not self.is_main, label=f"epoch {epoch + 1}/{cfg.epochs}",
                                   steps=self.steps_per_epoch, start_step=start_step, interval=cfg.log_interval)
        images_before = sums.images
        losses: dict[str, torch.Tensor] = {}
        # --nan-policy skip-step: one host sync per step, by request (all ranks skip together)
        skip = (lambda finite: not okd_dist.all_ranks_true(finite)) if cfg.nan_policy == "skip-step" else None
        for step, batch in enumerate(self.train_loader.epoch(epoch, start_step), start=start_step):
            if step >= self.steps_per_epoch:
                break
            if epoch < (cfg.warmup_epochs or 0):  # per step, and only while warming up: a plain run is untouched
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0) * warmup_factor(epoch, step, self.steps_per_epoch, cfg.warmup_epochs)
            result = train_step(
                self.forward, self.method, self.optimizer, batch, epoch, device=self.device, amp=self.amp,
                seed=step_seed(cfg.seed, epoch, step, self.dist.rank), skip=skip, step=step,
            )
            losses, total, finite = result.losses, result.total, result.finite
            if not result.stepped:
                self._log(f"skipped step {step} of epoch {epoch + 1}: non-finite loss ({self._bad_terms(losses)})")
                continue
            is_first = (first_bad < 0) & ~finite
            term_bad = torch.stack([~torch.isfinite(v.detach()).all() for v in losses.values()])
            bad_terms = term_bad & is_first if bad_terms is None else torch.where(is_first, term_bad, bad_terms)
            first_bad.masked_fill_(is_first, step)  # a Python scalar: no host-to-device copy per step
            sums.add(losses, total, batch.targets.shape[0])
            bar.update(1)
            lines.step(step + 1, (sums.images - images_before) * self.dist.world_size, sums.terms.get("total"), sums.steps)
            if (step + 1) % cfg.log_interval == 0 or step + 1 == self.steps_per_epoch:
                self._check_finite(first_bad, bad_terms, losses, epoch)
                bar.set_postfix(loss=f"{sums.terms['total'].item() / max(sums.steps, 1):.4f}")
            # Under DDP a signal may reach only some ranks: all stop after the same step, or the others
            # would block in the next step's all-reduce and rank 0 might never save (a CPU gloo MAX).
            stopping = okd_dist.any_rank(stop.received is not None, self.stop_group)
            if stopping:
                self._check_finite(first_bad, bad_terms, losses, epoch)
                sums.seconds += time.perf_counter() - began
                self._save(self.run.last, epoch, step + 1, sums.state())
                okd_dist.barrier()  # no rank exits (and makes torchrun kill the rest) before last.pt is written
                bar.close()
                raise TrainingInterrupted(stop.received or signal.SIGTERM, epoch, step + 1, self.run.path)
        bar.close()
        self._check_finite(first_bad, bad_terms, losses, epoch)
        sums.seconds += time.perf_counter() - began

    def _bad_terms(self, losses: dict[str, torch.Tensor], mask: torch.Tensor | None = None) -> str:
        if mask is None:
            mask = torch.stack([~torch.isfinite(v.detach()).all() for v in losses.values()])
        bad = [name for name, flag in zip(losses, mask.tolist(), strict=True) if flag]
        return ", ".join(bad) or "total"

    def _check_finite(self, first_bad: torch.Tensor, bad_terms: torch.Tensor | None, losses: dict[str, torch.Tensor], epoch: int) -> None:
        step = okd_dist.first_flagged_step(first_bad)  # every rank stops together, or none does
        if step >= 0:
            # name the terms of the first bad step, not of the last one (by then every term is NaN)
            raise NonFiniteLoss(
                f"non-finite loss at epoch {epoch + 1}, step {step} (term: {self._bad_terms(losses, bad_terms)}); "
                f"stopped, the last good checkpoint is {self.run.last} (try a lower --lr, or --nan-policy skip-step)"
            )

    def _end_epoch(self, epoch: int, sums: EpochSums, test: dict[str, dict[str, float]]) -> None:
        train = sums.means()
        record = {
            "epoch": epoch + 1,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train": train,
            "train_images_per_s": sums.images * self.dist.world_size / max(sums.seconds, 1e-9),
            "train_seconds": sums.seconds,
            "test": test,
            **memory_usage(self.device),
        }
        improved = self._update_best(epoch, test)
        self.metrics_records += 1
        if self.is_main:
            self.run.append_metrics(record)
            if self.tensorboard is not None:
                self.tensorboard.log_epoch(record)
            loss = f"{train['total']:.4f}" if "total" in train else "n/a (every step skipped)"  # --nan-policy skip-step
            self._log(
                f"epoch {epoch + 1}/{self.cfg.epochs}  loss {loss}  "
                f"test top-1 error: deployed {test['deployed']['top1']:.2f}  peer mean {test['peer_mean']['top1']:.2f}  "
                f"ensemble {test['ensemble']['top1']:.2f}"
                + "".join(f"  {head} {test[head]['top1']:.2f}" for head in extra_heads(test, self.method.num_peers))
                + f"  ({record['train_images_per_s']:.0f} img/s)"
            )
        self._save(self.run.last, epoch + 1, 0)
        if improved:
            self._save(self.run.best, epoch + 1, 0)
        if self.is_main:
            self.run.write_summary(self._summary(finished=False, last=record))

    def _update_best(self, epoch: int, test: dict[str, dict[str, float]]) -> bool:
        improved = False
        for head in ("deployed", "peer_mean", "ensemble", *extra_heads(test, self.method.num_peers)):
            value = test[head]["top1"]
            if head not in self.best or value < self.best[head]["top1"]:
                self.best[head] = {"top1": value, "top5": test[head]["top5"], "epoch": epoch + 1}
                improved |= head == "deployed"
        return improved

    # -- reporting ----------------------------------------------------------------------------
    def _summary(self, finished: bool, last: dict[str, Any] | None = None) -> dict[str, Any]:
        from okd.engine.rundir import read_metrics

        if last is None:
            records = read_metrics(self.run.metrics)
            last = records[-1] if records else None
        deployed = self.peer_sizes[self.method.deployed_peer]
        return {
            "finished": finished and last is not None and last["epoch"] == self.cfg.epochs,
            "method": self.cfg.method,
            "arch": self.cfg.arch,
            "dataset": self.cfg.dataset,
            "class_names": list(self.spec.class_names) if self.spec.class_names is not None else None,
            "num_peers": self.cfg.num_peers,
            "seed": self.cfg.seed,
            "epochs": self.cfg.epochs,
            "epochs_done": last["epoch"] if last else 0,
            "deployed_peer": self.method.deployed_peer,
            "deployed_head": self.method.deployed_head,
            "params": {"deployed": deployed["params"], "training": self.training_params},
            "macs_per_image": deployed["macs_per_image"],
            "peers": self.peer_sizes,
            "last": last["test"] if last else None,
            "best": self.best,
            "config": to_plain(self.cfg),
        }

    def _banner(self) -> str:
        cfg = self.cfg
        return (
            f"okd train: {cfg.method} on {arch_label(cfg.arch)} x{cfg.num_peers} ({cfg.dataset}, {self.spec.num_train} train / "
            f"{self.spec.num_test} test images), {cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr}, "
            f"device {self.device}{' x' + str(self.dist.world_size) if self.dist.enabled else ''}; run folder {self.run.path}"
        )

    def _log(self, line: str) -> None:
        if not self.is_main:
            return
        self.run.append_log(line)
        if not self.quiet:
            progress.write(line)
