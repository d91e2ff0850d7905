"""The HSA loss against a hand-written per-sample loop, gradient checks, stability, masks,
and the two behaviours that tell learning from noise: a separable toy problem goes to ~0,
random features stay at ln(number of candidates)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hsa_pipeline.config import HsaConfig
from hsa_pipeline.model.hsa import HsaInputs, HSALoss, MemoryBank, info_nce, masked_mean


def reference_info_nce(q, pos, valid, kappa, neg=None, neg_mask=None):
    """Plain-python InfoNCE, one sample at a time (the independent truth)."""
    q, pos = q.double().numpy(), pos.double().numpy()
    out = []
    for i in range(len(q)):
        if not valid[i]:
            out.append(0.0)
            continue
        cands = [q[i] @ pos[i] / kappa]
        negs = [q[i] @ pos[j] / kappa for j in range(len(q)) if j != i and valid[j]]
        if neg is not None:
            negs += [q[i] @ neg[i, k].double().numpy() / kappa for k in range(neg.shape[1])
                     if neg_mask is None or neg_mask[i, k]]
        if not negs:
            out.append(0.0)
            continue
        cands += negs
        m = max(cands)
        out.append(m + math.log(sum(math.exp(c - m) for c in cands)) - cands[0])
    return np.array(out)


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def test_in_batch_info_nce_matches_the_loop():
    q, pos = unit(8, 16), unit(8, 16, seed=1)
    valid = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool)
    loss, n_cand, usable = info_nce(q, pos, valid, torch.tensor(0.1))
    np.testing.assert_allclose(loss.numpy(), reference_info_nce(q, pos, valid, 0.1), rtol=1e-5, atol=1e-6)
    assert usable.tolist() == valid.tolist()
    assert n_cand[0] == 6  # itself + 5 other valid samples


def test_explicit_negatives_with_mask_match_the_loop():
    q, pos, neg = unit(5, 8), unit(5, 8, seed=2), unit(5, 7, 8, seed=3)
    mask = torch.rand(5, 7, generator=torch.Generator().manual_seed(4)) > 0.4
    valid = torch.ones(5, dtype=torch.bool)
    loss, n_cand, _ = info_nce(q, pos, valid, torch.tensor(0.07), True, neg, mask)
    np.testing.assert_allclose(loss.numpy(), reference_info_nce(q, pos, valid, 0.07, neg, mask), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(n_cand.numpy(), 1 + 4 + mask.sum(1).numpy())


def test_full_loss_with_in_image_negatives_matches_the_loop():
    torch.manual_seed(0)
    cfg = HsaConfig(proj_dim=8, temperature=0.1, third_person_weight=0.0)
    hsa = HSALoss(12, cfg).double()
    B, N = 4, 9
    x = HsaInputs(tactile=torch.randn(B, 3, 12, dtype=torch.float64), wrist=torch.randn(B, N, 12, dtype=torch.float64),
                  wrist_box=torch.rand(B, N) > 0.6, valid=torch.ones(B, dtype=torch.bool))
    x.wrist_box[:, 0] = True
    loss, stats = hsa(x)
    q = hsa.head_tactile(x.tactile.mean(1))
    pos = hsa.head_vision(masked_mean(x.wrist, x.wrist_box))
    tok = hsa.head_vision(x.wrist)
    ref = reference_info_nce(q.detach(), pos.detach(), [True] * B, 0.1, tok.detach(), ~x.wrist_box)
    assert float(loss.detach()) == pytest.approx(ref.mean(), rel=1e-6)
    assert stats["chance_w"] == pytest.approx(np.mean(np.log(1 + (B - 1) + (~x.wrist_box).sum(1).numpy())))


def test_gradients_pass_the_gradient_check():
    q = unit(4, 6).requires_grad_()
    pos = unit(4, 6, seed=1).requires_grad_()
    neg = unit(4, 3, 6, seed=2).requires_grad_()
    valid = torch.tensor([1, 1, 1, 0], dtype=torch.bool)
    fn = lambda a, b, c: info_nce(a, b, valid, torch.tensor(0.2, dtype=torch.float64), True, c)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, pos, neg), eps=1e-6, atol=1e-5)


def test_stable_in_fp32_and_bf16_at_kappa_001():
    torch.manual_seed(0)
    q, pos, neg = unit(16, 32).float(), unit(16, 32, seed=1).float(), unit(16, 50, 32, seed=2).float()
    valid = torch.ones(16, dtype=torch.bool)
    k = torch.tensor(0.01)
    ref = reference_info_nce(q, pos, valid, 0.01, neg)
    l32 = info_nce(q, pos, valid, k, True, neg)[0]
    lbf = info_nce(q.bfloat16(), pos.bfloat16(), valid, k, True, neg.bfloat16())[0]
    assert torch.isfinite(l32).all() and torch.isfinite(lbf).all()
    np.testing.assert_allclose(l32.numpy(), ref, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(lbf.float().numpy(), ref, rtol=0.05, atol=1.5)  # bf16 inputs: 8-bit mantissa at 1/k = 100


def test_empty_box_and_no_negative_are_masked_not_nan():
    torch.manual_seed(0)
    hsa = HSALoss(8, HsaConfig(proj_dim=4, third_person_weight=1.0))
    B, N = 3, 4
    box = torch.zeros(B, N, dtype=torch.bool)
    box[0, 1] = True  # only sample 0 has a box
    x = HsaInputs(tactile=torch.randn(B, 2, 8), wrist=torch.randn(B, N, 8), wrist_box=box,
                  valid=torch.ones(B, dtype=torch.bool),
                  third_person=torch.randn(B, N, 8), third_person_box=torch.ones(B, N, dtype=torch.bool),
                  third_person_alpha=torch.tensor([1.0, 0.0, 0.5]))
    loss, stats = hsa(x)
    assert torch.isfinite(loss)
    assert stats["n_w"] == 1.0  # samples 1 and 2 are masked (empty box)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in hsa.parameters() if p.grad is not None)
    # one sample, no in-batch partner, no in-image negatives: nothing to contrast -> masked
    single = HSALoss(8, HsaConfig(proj_dim=4, in_image_negatives=False, third_person_weight=0))
    l1, s1 = single(HsaInputs(tactile=torch.randn(1, 2, 8), wrist=torch.randn(1, N, 8),
                              wrist_box=torch.ones(1, N, dtype=torch.bool), valid=torch.ones(1, dtype=torch.bool)))
    assert float(l1.detach()) == 0.0 and s1["n_w"] == 0.0


def test_diagnostics_off_gives_the_same_loss_and_no_stats():
    """The trainer skips diagnostics (host syncs) on non-logging steps; the loss must not change."""
    torch.manual_seed(0)
    hsa = HSALoss(8, HsaConfig(proj_dim=4, third_person_weight=0.5))
    B, N = 5, 6
    x = HsaInputs(tactile=torch.randn(B, 2, 8), wrist=torch.randn(B, N, 8), wrist_box=torch.rand(B, N) > 0.5,
                  valid=torch.ones(B, dtype=torch.bool),
                  third_person=torch.randn(B, N, 8), third_person_box=torch.rand(B, N) > 0.5,
                  third_person_alpha=torch.rand(B))
    with_stats, stats = hsa(x)
    without, none = hsa(x, diagnostics=False)
    assert float(with_stats.detach()) == float(without.detach())
    assert none == {} and {"hsa_w", "top1_w", "hsa_tp", "chance_w"} <= set(stats)


def _one_view_reference(hsa: HSALoss, x: HsaInputs, kappa: float) -> np.ndarray:
    """Per-sample wrist losses by the loop, through the model's own heads (in-image negatives on)."""
    q = hsa.head_tactile(x.tactile.mean(1)).detach()
    pos = hsa.head_vision(masked_mean(x.wrist, x.wrist_box)).detach()
    tok = hsa.head_vision(x.wrist).detach()
    return reference_info_nce(q, pos, x.valid.tolist(), kappa, tok, ~x.wrist_box)


def test_mean_and_sum_reduce_exactly_the_usable_samples():
    torch.manual_seed(0)
    x = HsaInputs(tactile=torch.randn(6, 2, 8, dtype=torch.float64), wrist=torch.randn(6, 5, 8, dtype=torch.float64),
                  wrist_box=torch.rand(6, 5) > 0.5, valid=torch.tensor([1, 1, 1, 0, 1, 1], dtype=torch.bool))
    x.wrist_box[:, 0] = True
    for reduction in ("mean", "sum"):
        torch.manual_seed(1)
        hsa = HSALoss(8, HsaConfig(proj_dim=4, reduction=reduction, third_person_weight=0, temperature=0.1)).double()
        got = float(hsa(x)[0].detach())
        ref = _one_view_reference(hsa, x, 0.1)
        assert got == pytest.approx(ref.sum() / (5 if reduction == "mean" else 1), rel=1e-6)


def test_reduction_none_is_refused_by_the_config():
    from hsa_pipeline.config import ConfigError, params_from_dict

    with pytest.raises(ConfigError, match="hsa.reduction: expected one of 'mean', 'sum', got 'none'"):
        params_from_dict({"hsa": {"reduction": "none"}, "sensors": {}, "cameras": {}})


def reference_symmetric(q, pos, valid, kappa, neg, neg_mask):
    """Symmetric loss by the loop: (forward + backward) / 2 for samples with candidates in
    BOTH directions; every other sample counts 0 and is not usable."""
    fwd = reference_info_nce(q, pos, valid, kappa, neg, neg_mask)
    back = reference_info_nce(pos, q, valid, kappa)  # vision -> tactile: other valid samples only
    others = [sum(valid) - 1 if v else 0 for v in valid]
    usable = [bool(v) and o > 0 for v, o in zip(valid, others, strict=True)]
    return np.where(usable, 0.5 * (fwd + back), 0.0), np.array(usable)


def test_symmetric_mode_counts_and_zeroes_the_same_samples():
    """The lone valid sample of a batch has in-image negatives (a forward loss) but no reverse
    candidate: it must be left out of the loss AND of the count, as the loop says."""
    torch.manual_seed(0)
    hsa = HSALoss(8, HsaConfig(proj_dim=4, symmetric=True, third_person_weight=0, temperature=0.1)).double()
    for valid in ([1, 0, 0, 0], [1, 1, 0, 1]):
        x = HsaInputs(tactile=torch.randn(4, 2, 8, dtype=torch.float64), wrist=torch.randn(4, 5, 8, dtype=torch.float64),
                      wrist_box=torch.rand(4, 5) > 0.5, valid=torch.tensor(valid, dtype=torch.bool))
        x.wrist_box[:, 0] = True
        x.wrist_box[:, 4] = False
        loss, stats = hsa(x)
        q = hsa.head_tactile(x.tactile.mean(1)).detach()
        pos = hsa.head_vision(masked_mean(x.wrist, x.wrist_box)).detach()
        tok = hsa.head_vision(x.wrist).detach()
        ref, usable = reference_symmetric(q, pos, valid, 0.1, tok, ~x.wrist_box)
        assert stats["n_w"] == usable.sum()
        assert float(loss.detach()) == pytest.approx(ref.sum() / max(usable.sum(), 1), rel=1e-6, abs=1e-12)
        if usable.sum() == 0:
            assert float(loss.detach()) == 0.0
            loss.backward()  # nothing counted, nothing learned
            assert all(p.grad is None or not p.grad.any() for p in hsa.parameters())


def test_temperature_modes():
    fixed = HSALoss(4, HsaConfig(temperature=0.07))
    assert float(fixed.kappa(100)) == pytest.approx(0.07) and not fixed.log_kappa.requires_grad
    ann = HSALoss(4, HsaConfig(temperature=0.2, temperature_mode="anneal", temperature_final=0.05), total_steps=100)
    assert float(ann.kappa(0)) == pytest.approx(0.2) and float(ann.kappa(100)) == pytest.approx(0.05)
    assert float(ann.kappa(50)) == pytest.approx(0.125)
    learn = HSALoss(4, HsaConfig(temperature=0.07, temperature_mode="learnable", temperature_min=0.03))
    assert learn.log_kappa.requires_grad
    with torch.no_grad():
        learn.log_kappa.fill_(math.log(0.001))
    assert float(learn.kappa().detach()) == pytest.approx(0.03)  # clamped


def test_memory_bank_is_fifo_and_topk_picks_the_hardest():
    bank = MemoryBank(4, 2)
    bank.push(torch.tensor([[1.0, 0], [0, 1.0], [-1.0, 0]]))
    assert int(bank.filled) == 3
    bank.push(torch.tensor([[0, -1.0], [0.6, 0.8]]))  # overwrites the oldest
    assert int(bank.filled) == 4
    assert torch.equal(bank.items[0], torch.tensor([0.6, 0.8]))
    neg, mask = bank.negatives(torch.tensor([[0.8, 0.6]]), topk=2)
    assert neg.shape == (1, 2, 2) and mask.all()
    torch.testing.assert_close(neg[0], torch.tensor([[0.6, 0.8], [0.0, 1.0]]))  # the two most similar to the query


def test_memory_bank_matches_a_fifo_of_the_kept_rows():
    """Pushes of kept and dropped rows (more than the bank holds, too) against a plain FIFO
    (collections.deque): the same entries, and top-k picks the most similar of them."""
    import collections

    rng = torch.Generator().manual_seed(0)
    bank, fifo = MemoryBank(7, 3), collections.deque(maxlen=7)
    neg, mask = bank.negatives(torch.randn(2, 3, generator=rng), topk=3)
    assert neg.shape == (2, 3, 3) and not mask.any()  # empty: every candidate masked out
    for _ in range(40):
        n = int(torch.randint(0, 11, (), generator=rng))  # up to 10 rows: some pushes overflow the bank
        x = torch.randn(n, 3, generator=rng)
        keep = torch.rand(n, generator=rng) < 0.6
        bank.push(x, keep)
        fifo.extend(x[keep])
        assert int(bank.filled) == len(fifo)
        held = bank.items[: bank.size][: len(fifo)] if len(fifo) < 7 else bank.items[:7]
        assert sorted(map(tuple, held.tolist())) == sorted(tuple(r.tolist()) for r in fifo)
        q = torch.randn(2, 3, generator=rng)
        neg, mask = bank.negatives(q, topk=3)
        ref = torch.stack(list(fifo)) if fifo else torch.zeros(0, 3)
        for b in range(2):
            want = ref[(ref @ q[b]).argsort(descending=True)[:3]]
            torch.testing.assert_close(neg[b][mask[b]], want)
        neg, mask = bank.negatives(q, topk=0)  # all: every filled entry, the rest masked
        assert int(mask[0].sum()) == len(fifo)


def test_bank_and_symmetric_options_run_and_add_candidates():
    torch.manual_seed(0)
    cfg = HsaConfig(proj_dim=8, bank_size=32, bank_topk=5, symmetric=True, third_person_weight=0)
    hsa = HSALoss(8, cfg)
    x = HsaInputs(tactile=torch.randn(4, 2, 8), wrist=torch.randn(4, 6, 8), wrist_box=torch.eye(4, 6, dtype=torch.bool),
                  valid=torch.ones(4, dtype=torch.bool))
    _, s1 = hsa(x)
    _, s2 = hsa(x)
    assert s2["chance_w"] == pytest.approx(math.log(1 + 3 + 5 + 4))  # + the 4 banked (fewer than top-k 5)
    _, s3 = hsa(x)
    assert s3["chance_w"] == pytest.approx(math.log(1 + 3 + 5 + 5))  # + the 5 hardest of 8
    assert s1["chance_w"] == pytest.approx(math.log(1 + 3 + 5))


def test_each_sensor_has_its_own_memory_bank():
    """Issue #44: one bank for both pads made each pad's banked positives the other's
    negatives. Two sensors: the left pad's steps fill only the left bank, so the right
    pad's first step sees its in-image and in-batch candidates alone (chance as without
    a bank), and its second step its own banked positives."""
    torch.manual_seed(0)
    cfg = HsaConfig(proj_dim=8, bank_size=32, bank_topk=5, third_person_weight=0)
    hsa = HSALoss(8, cfg, sensors=["tactile_left", "tactile_right"])

    def x(sensor):
        return HsaInputs(tactile=torch.randn(4, 2, 8), wrist=torch.randn(4, 6, 8),
                         wrist_box=torch.eye(4, 6, dtype=torch.bool), valid=torch.ones(4, dtype=torch.bool),
                         sensor=sensor)

    hsa(x("tactile_left"))
    hsa(x("tactile_left"))
    assert int(hsa.bank("tactile_left").filled) == 8 and int(hsa.bank("tactile_right").filled) == 0
    _, first = hsa(x("tactile_right"))
    assert first["chance_w"] == pytest.approx(math.log(1 + 3 + 5))  # nothing of the left pad's
    _, second = hsa(x("tactile_right"))
    assert second["chance_w"] == pytest.approx(math.log(1 + 3 + 5 + 4))  # its own 4 banked
    with pytest.raises(KeyError, match="no sensor 'tactile'"):
        hsa(x("tactile"))


def make_toy(B, N, D, rng, separable: bool):
    """Wrist images with one box; tactile tokens copy the in-box content when separable."""
    content = torch.randn(B, D, generator=rng)
    wrist = torch.randn(B, N, D, generator=rng)
    box = torch.zeros(B, N, dtype=torch.bool)
    where = torch.randint(0, N, (B,), generator=rng)
    box[torch.arange(B), where] = True
    if separable:
        wrist[box] = content
        tactile = content[:, None, :] + 0.05 * torch.randn(B, 3, D, generator=rng)
    else:
        tactile = torch.randn(B, 3, D, generator=rng)
    return HsaInputs(tactile=tactile, wrist=wrist, wrist_box=box, valid=torch.ones(B, dtype=torch.bool))


@pytest.mark.parametrize("separable", [True, False])
def test_learns_a_separable_toy_and_stays_at_chance_on_noise(separable):
    torch.manual_seed(0)
    rng = torch.Generator().manual_seed(0)
    hsa = HSALoss(16, HsaConfig(proj_dim=16, temperature=0.1, third_person_weight=0))
    opt = torch.optim.Adam(hsa.parameters(), lr=3e-3)
    losses, chance, top1 = [], [], []
    for step in range(500):
        loss, stats = hsa(make_toy(16, 10, 16, rng, separable), step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        chance.append(stats["chance_w"])
        top1.append(stats["top1_w"])
    final = np.mean(losses[-30:])
    assert chance[-1] == pytest.approx(math.log(1 + 15 + 9))
    if separable:
        assert final < 0.1 and np.mean(top1[-30:]) > 0.95
    else:
        assert abs(final - chance[-1]) < 0.2, (final, chance[-1])  # nothing to learn: stays at chance
        assert np.mean(top1[-30:]) < 0.2
