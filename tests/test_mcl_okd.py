"""MCL-OKD as a method: sizes, loss terms, gradients, memory banks, checkpoints, distributed banks."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from okd.data.batch import Batch
from okd.errors import OKDUserError
from okd.losses.contrastive import multiview_nce_loss_pairwise
from okd.losses.negatives import contrast_indices
from okd.methods import DatasetInfo, build_method, get_method_class
from okd.models import count_params

NUM_TRAIN, NUM_CLASSES = 64, 100


def _dataset(num_train: int = NUM_TRAIN, num_classes: int = NUM_CLASSES) -> DatasetInfo:
    return DatasetInfo(num_train, num_classes, torch.arange(num_train) % num_classes)


def _method(seed: int = 0, num_peers: int = 4, **options):
    options.setdefault("nce_k", 16)
    torch.manual_seed(seed)
    return build_method("mcl_okd", "resnet32", NUM_CLASSES, num_peers, dataset=_dataset(), **options)


def _batch(seed: int = 0, size: int = 8) -> Batch:
    g = torch.Generator().manual_seed(seed)
    indices = torch.randperm(NUM_TRAIN, generator=g)[:size]
    images = torch.randn(size, 3, 32, 32, generator=g)
    return Batch(images, indices % NUM_CLASSES, indices)


def test_registration_sizes_and_defaults() -> None:
    method = _method()
    cls = get_method_class("mcl-okd")
    assert cls.name == "mcl_okd" and cls.default_share == "early"
    assert set(cls.allowed_shares) == {"early", "late", "none"}
    assert method.cohort.share == "early"
    assert method.deployed_peer == 3
    assert count_params(method) == 1_819_552 + 4 * 8_320
    assert method.memory.shape == (4, NUM_TRAIN, 128)
    assert not method.memory.requires_grad
    stdv = 1 / (128 / 3) ** 0.5
    assert method.memory.abs().max() <= stdv and method.memory.abs().max() > 0.9 * stdv
    assert method.memory.norm(dim=-1).mean().item() == pytest.approx(1.0, abs=0.05)
    state = method.state_dict()
    assert "memory" in state and "nce_z" not in state
    assert not any(key.startswith("class_") for key in state)  # sampler tables are rebuilt, not saved


def test_missing_dataset_and_too_large_k_are_user_errors() -> None:
    with pytest.raises(OKDUserError, match="DatasetInfo"):
        build_method("mcl_okd", "resnet32", NUM_CLASSES, 4)
    with pytest.raises(OKDUserError, match=r"nce_k=16384 is larger than the 63 negatives .*--nce-k <= 63"):
        build_method("mcl_okd", "resnet32", NUM_CLASSES, 4, dataset=_dataset())


def test_the_stand_in_set_is_the_smallest_that_builds() -> None:
    """What export rebuilds a checkpoint on: enough other-class samples for nce_k (the default two per
    class, what another method gets, would not do)."""
    from okd.methods import stand_in_dataset

    info = stand_in_dataset("mcl_okd", 4, nce_k=7, kd_t=None, kdcl_rule="naive")  # ceil(7 / 3) + 1 = 4 per class
    assert info.num_train == 16 and torch.equal(torch.bincount(info.train_targets), torch.full((4,), 4))
    build_method("mcl_okd", "resnet32", 4, 2, dataset=info, nce_k=7)
    two_each = stand_in_dataset("dml", 4, nce_k=7)
    assert two_each.num_train == 8
    with pytest.raises(OKDUserError, match=r"nce_k=7 is larger than the 6 negatives"):
        build_method("mcl_okd", "resnet32", 4, 2, dataset=two_each, nce_k=7)


def test_forward_puts_unit_embeddings_in_extras() -> None:
    method = _method()
    output = method(_batch().images)
    emb = output.extras["embeddings"]
    assert emb.shape == (4, 8, 128) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(4, 8))


def test_loss_terms_match_their_definitions() -> None:
    method = _method(alpha=0.7, beta=0.5, gamma=2.0)
    batch = _batch()
    output = method(batch.images)
    torch.manual_seed(123)
    terms = method.losses(output, batch, epoch=0)
    assert set(terms) == {"ce", "dot", "mcl"} and all(t.shape == () for t in terms.values())
    ce = sum(torch.nn.functional.cross_entropy(z, batch.targets) for z in output.logits)
    torch.testing.assert_close(terms["ce"], 2.0 * ce)
    teacher = torch.stack(output.logits).mean(0)
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(output.logits[3] / 3, 1), torch.softmax(teacher / 3, 1), reduction="batchmean"
    )
    torch.testing.assert_close(terms["dot"], 0.7 * 9 * kl)
    torch.manual_seed(123)  # same negatives as inside losses()
    idx = contrast_indices(batch.indices, method.class_index(), 16)
    reference = multiview_nce_loss_pairwise(method.memory, output.extras["embeddings"], idx, 0.1, NUM_TRAIN)
    torch.testing.assert_close(terms["mcl"], 0.5 * reference)


def test_alpha_zero_drops_dot_and_dot_reaches_only_the_last_peer() -> None:
    method = _method(alpha=0.0)
    batch = _batch()
    terms = method.losses(method(batch.images), batch, 0)
    assert terms["dot"].item() == 0.0
    method = _method(alpha=1.0)
    terms = method.losses(method(batch.images), batch, 0)
    assert terms["dot"].item() > 0
    terms["dot"].backward()
    branch_grads = [sum(p.grad.abs().sum() for p in b.parameters() if p.grad is not None) for b in method.cohort.branches]
    assert all(g == 0 for g in branch_grads[:3]) and branch_grads[3] > 0


def test_mcl_gradients_reach_heads_and_backbone_not_banks() -> None:
    method = _method()
    batch = _batch()
    before = method.memory.clone()
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    terms = method.losses(method(batch.images), batch, 0)
    assert not method.memory.requires_grad and method.memory.grad_fn is None
    assert all(not b.requires_grad for b in method.buffers())
    assert not any(p is method.memory for p in method.parameters())
    terms["mcl"].backward()
    for head in method.embed:
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    trunk = next(method.cohort.trunk.parameters())
    assert trunk.grad is not None and trunk.grad.abs().sum() > 0
    assert all(b.grad is None for b in method.buffers())
    head_before = method.embed[0].weight.detach().clone()
    optimizer.step()  # a step without after_step: the weights move, the banks must not
    assert not torch.equal(method.embed[0].weight, head_before)
    assert torch.equal(method.memory, before)


def test_after_step_updates_only_the_batch_rows_with_this_steps_embeddings() -> None:
    method = _method()
    batch = _batch()
    before = method.memory.clone()
    output = method(batch.images)
    method.losses(output, batch, 0)
    assert torch.equal(method.memory, before)  # scores read the old memory; nothing changes before after_step
    method.after_step(output, batch)
    touched = torch.zeros(NUM_TRAIN, dtype=torch.bool)
    touched[batch.indices] = True
    assert torch.equal(method.memory[:, ~touched], before[:, ~touched])
    rows = method.memory[:, batch.indices]
    torch.testing.assert_close(rows.norm(dim=-1), torch.ones(4, 8))
    mixed = 0.5 * before[:, batch.indices] + 0.5 * output.extras["embeddings"].detach()
    torch.testing.assert_close(rows, mixed / mixed.norm(dim=-1, keepdim=True))


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_sgd_steps_lower_the_total_loss(alpha: float) -> None:
    method = _method(alpha=alpha, num_peers=2)
    batch = _batch()
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    totals = []
    for step in range(5):
        torch.manual_seed(step)
        output = method(batch.images)
        terms = method.losses(output, batch, 0)
        total = sum(terms.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        method.after_step(output, batch)
        totals.append(total.item())
    assert totals[-1] < 0.7 * totals[0], totals


def test_fixed_z_is_set_once_and_checkpointed() -> None:
    method = _method(fixed_z=True)
    assert (method.nce_z == -1).all() and method.nce_z.shape == (4, 3)
    for seed in (0, 1):
        batch = _batch(seed)
        output = method(batch.images)
        method.losses(output, batch, 0)
        method.after_step(output, batch)
        if seed == 0:
            first = method.nce_z.clone()
            assert (first > 0).all()
    assert torch.equal(method.nce_z, first)
    fresh = _method(seed=5, fixed_z=True)
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.nce_z, first)
    assert torch.equal(fresh.memory, method.memory)


def test_state_dict_round_trip_restores_the_banks() -> None:
    method = _method()
    batch = _batch()
    output = method(batch.images)
    method.after_step(output, batch)
    fresh = _method(seed=9)
    assert not torch.equal(fresh.memory, method.memory)
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.memory, method.memory)
    torch.manual_seed(4)
    a = method.losses(method(batch.images), batch, 0)["mcl"]
    torch.manual_seed(4)
    b = fresh.losses(fresh(batch.images), batch, 0)["mcl"]
    assert a.item() == b.item()


# -- distributed: every rank writes every rank's rows ---------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        method = _method(seed=0, num_peers=2, fixed_z=True)
        indices = torch.tensor([[3, 17, 44, 46], [46, 10, 37, 60, 61]][rank])  # sizes differ; row 46 on both
        batch = Batch(torch.randn(len(indices), 3, 32, 32, generator=torch.Generator().manual_seed(rank)), indices % NUM_CLASSES, indices)
        output = method(batch.images)
        method.losses(output, batch, 0)
        method.after_step(output, batch)
        result = (method.memory, method.nce_z, batch.indices, output.extras["embeddings"].detach())
        torch.save(result, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_banks_stay_identical_across_ranks(tmp_path) -> None:
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(rank, 2, port, str(tmp_path))) for rank in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=180)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
        assert proc.exitcode == 0
    (mem0, z0, idx0, emb0), (mem1, z1, idx1, emb1) = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert torch.equal(mem0, mem1)
    assert torch.equal(z0, z1)  # the fixed normaliser is averaged over ranks
    before = _method(seed=0, num_peers=2).memory

    def expected(idx: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        mixed = 0.5 * before[:, idx] + 0.5 * emb
        return mixed / mixed.norm(dim=-1, keepdim=True)

    torch.testing.assert_close(mem0[:, idx1], expected(idx1, emb1))  # rank 1 comes last: it wins shared rows
    only0 = ~torch.isin(idx0, idx1)
    assert not only0.all()
    torch.testing.assert_close(mem0[:, idx0[only0]], expected(idx0, emb0)[:, only0])
    untouched = ~torch.isin(torch.arange(NUM_TRAIN), torch.cat([idx0, idx1]))
    assert torch.equal(mem0[:, untouched], before[:, untouched])


# -- resume through the CLI: banks, heads and weights bit for bit ---------------------------------


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path) -> None:
    from okd.cli.main import main
    from okd.engine.checkpoint import load_checkpoint

    args = ["train", "--method", "mcl_okd", "--num-peers", "2", "--nce-k", "8", "--dataset", "synthetic",
            "--synthetic-train", "48", "--synthetic-test", "20", "--synthetic-classes", "5", "--synthetic-size", "32",
            "--batch-size", "16", "--eval-batch-size", "10", "--quiet", "--device", "cpu"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: far faster on a busy 2-core machine (32 px: crop + flip too)
    try:
        assert main([*args, "--out", str(tmp_path / "full"), "--epochs", "2"]) == 0
        assert main([*args, "--out", str(tmp_path / "split"), "--epochs", "1"]) == 0
        after_one = load_checkpoint(tmp_path / "split" / "last.pt")["model"]
        assert main([*args, "--out", str(tmp_path / "split"), "--epochs", "2", "--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    full = load_checkpoint(tmp_path / "full" / "last.pt")
    split = load_checkpoint(tmp_path / "split" / "last.pt")
    assert full["epoch"] == split["epoch"] == 2
    assert set(full["model"]) == set(split["model"])
    assert "memory" in full["model"] and any(key.startswith("embed.") for key in full["model"])
    for key, value in full["model"].items():
        assert torch.equal(value, split["model"][key]), key
    assert not torch.equal(after_one["memory"], full["model"]["memory"])  # epoch 2 did move the banks
    momentum = lambda s: [v["momentum_buffer"] for v in s["optimizer"]["state"].values()]  # noqa: E731
    assert len(momentum(full)) == len(momentum(split)) > 0
    assert all(torch.equal(a, b) for a, b in zip(momentum(full), momentum(split)))
