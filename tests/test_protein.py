"Protein toy: lattice fold, Potts energy and sampling, MI/APC on planted couplings, pseudo-likelihood conditionals."
import math
import pytest
import torch
import torch.nn.functional as F
from dl2021.protein import (AA, PottsPLM, TiedRowAttention, TinyMSATransformer, apc, contact_map, coupling_scores,
                            frequencies, gibbs_sample, lattice_fold, make_potts, mlm_step, mutual_information, plm_step,
                            potts_energy, sequence_weights, site_logits, top_precision)


def test_lattice_fold_is_a_compact_self_avoiding_walk():
    xyz = lattice_fold(3, seed=2)
    assert xyz.shape == (27, 3)
    assert len({tuple(p) for p in xyz.tolist()}) == 27
    assert ((xyz[1:] - xyz[:-1]).abs().sum(1) == 1).all()
    C = contact_map(xyz)
    assert (C == C.T).all() and not C.diagonal().any()
    i = torch.arange(27)
    assert not (C & ((i[:, None] - i[None, :]).abs() <= 1)).any()      # chain neighbours are not contacts


def test_potts_energy_by_hand():
    "L=2, q=2: E(x) = -h_1(x_1) - h_2(x_2) - J_12(x_1, x_2), with J stored both ways."
    h = torch.tensor([[0.5, -1.], [2., 0.]])
    J = torch.zeros(2, 2, 2, 2)
    J12 = torch.tensor([[1., -2.], [0.3, 4.]])
    J[0, 1], J[1, 0] = J12, J12.T
    X = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    expected = torch.tensor([-(0.5 + 2. + 1.), -(0.5 + 0. - 2.), -(-1. + 2. + 0.3), -(-1. + 0. + 4.)])
    torch.testing.assert_close(potts_energy(X, h, J), expected)


def _small_potts(seed=0, L=3, q=3):
    g = torch.Generator().manual_seed(seed)
    h, J = torch.randn(L, q, generator=g), torch.randn(L, L, q, q, generator=g)
    J = (J + J.permute(1, 0, 3, 2)) / 2 * (1 - torch.eye(L))[:, :, None, None]
    allx = torch.cartesian_prod(*[torch.arange(q)] * L)
    return h, J, allx, torch.softmax(-potts_energy(allx, h, J), 0)


def test_pseudo_likelihood_conditionals_are_exact():
    h, J, allx, p = _small_potts()
    model = PottsPLM(3, q=3)
    model.h.data, model.J.data = h.clone(), J.clone()
    cond = torch.softmax(model(allx), -1)
    code = lambda y: y[:, 0] * 9 + y[:, 1] * 3 + y[:, 2]
    for i in range(3):
        joint = torch.stack([p[code(torch.where(torch.arange(3) == i, a, allx))] for a in range(3)], -1)
        torch.testing.assert_close(cond[:, i], joint / joint.sum(-1, keepdim=True), atol=1e-5, rtol=1e-5)
    # the site conditional used by the sampler is the same function
    torch.testing.assert_close(torch.softmax(site_logits(h, J, allx, 1), -1), cond[:, 1], atol=1e-6, rtol=1e-6)


def test_pseudo_likelihood_step_value():
    "Zero parameters: every conditional is uniform, so the loss is L·log q per sequence (no regulariser)."
    model = PottsPLM(5, q=20)
    X = torch.randint(0, 20, (7, 5))
    out = plm_step(model, (X,), n_total=7)
    assert math.isclose(out['loss'].item(), 5 * math.log(20), rel_tol=1e-6) and out['n'] == 7


def test_gibbs_matches_boltzmann():
    h, J, allx, p = _small_potts(seed=3)
    X = gibbs_sample(h, J, 20_000, sweeps=15, seed=1)
    emp = torch.bincount(X[:, 0] * 9 + X[:, 1] * 3 + X[:, 2], minlength=27) / len(X)
    assert 0.5 * (emp - p).abs().sum() < 0.02


def test_mi_apc_planted_coupling():
    "Columns 0 and 2 are copies of each other, column 1 is independent noise: MI(0,2) ≈ log q, the others ≈ 0."
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (4000,), generator=g)
    X = torch.stack([a, torch.randint(0, 4, (4000,), generator=g), a, torch.randint(0, 4, (4000,), generator=g)], 1)
    fi, fij = frequencies(X, q=4, pseudo=0.)
    mi = mutual_information(fi, fij)
    assert abs(mi[0, 2].item() - math.log(4)) < 0.01 and mi[0, 1] < 0.01 and mi[1, 3] < 0.01
    torch.testing.assert_close(mi, mi.T)
    s = apc(mi)
    assert s[0, 2] == s.max() and top_precision(s, torch.eye(4, dtype=torch.bool).roll(2, 1), k=1, min_sep=1) == 1.


def test_apc_by_hand():
    "A constant off-diagonal matrix has nothing beyond its average: APC removes it all. A 3×3 case by hand."
    torch.testing.assert_close(apc(torch.ones(5, 5) - torch.eye(5)), torch.zeros(5, 5))
    S = torch.tensor([[0., 1., 2.], [1., 0., 3.], [2., 3., 0.]])
    row = torch.tensor([1.5, 2., 2.5]); tot = 2.
    expected = (S - row[:, None] * row[None, :] / tot) * (1 - torch.eye(3))
    torch.testing.assert_close(apc(S), expected)


def test_pseudocount_and_diagonal():
    X = torch.randint(0, 20, (50, 6))
    fi, fij = frequencies(X, pseudo=0.1)
    torch.testing.assert_close(fi.sum(1), torch.ones(6))
    torch.testing.assert_close(fij.sum((2, 3)), torch.ones(6, 6))
    torch.testing.assert_close(fij.sum(3)[0, 1], fi[0])                  # marginals of the pair = singles
    assert (mutual_information(fi, fij).diagonal() == 0).all()


def test_sequence_weights():
    X = torch.tensor([[0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [0, 1, 2, 3, 5], [9, 9, 9, 9, 9]])
    torch.testing.assert_close(sequence_weights(X, 0.8), torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.]))
    torch.testing.assert_close(sequence_weights(X, 1.0), torch.tensor([1 / 2, 1 / 2, 1., 1.]))


def test_coupling_scores_gauge():
    "Adding a field-like term J_ij(a,b) + u(a) changes no score (zero-sum gauge)."
    J = torch.randn(4, 4, 5, 5)
    J2 = J + torch.randn(4, 4, 5, 1)
    torch.testing.assert_close(coupling_scores(J), coupling_scores(J2), atol=1e-5, rtol=1e-5)


def test_top_precision():
    C = torch.zeros(10, 10, dtype=torch.bool); C[0, 9] = C[9, 0] = True
    s = torch.zeros(10, 10); s[0, 9] = s[9, 0] = 5.; s[1, 8] = s[8, 1] = 4.
    assert top_precision(s, C, k=1) == 1. and top_precision(s, C, k=2) == .5


def test_tied_row_attention_and_mlm():
    att = TiedRowAttention(16, 4)
    x = torch.randn(2, 5, 7, 16)
    _, A = att(x)
    torch.testing.assert_close(A.sum(-1), torch.ones(2, 4, 7))
    torch.testing.assert_close(att(x[:, torch.randperm(5)])[1], A, atol=1e-5, rtol=1e-5)   # rows are a set
    model = TinyMSATransformer(7, d=16, heads=4, depth=1)
    out = mlm_step(model, (torch.randint(0, 20, (8, 7)),), rows=4, p=0.5)
    assert out['loss'].ndim == 0 and out['n'] == 2
    with pytest.raises(ValueError, match='divisible'): TiedRowAttention(10, 4)


def test_make_potts_couplings_only_on_contacts():
    xyz = lattice_fold(3, seed=0)
    C = contact_map(xyz)
    h, J = make_potts(C, beta=1.5)
    assert h.shape == (27, len(AA)) and J.shape == (27, 27, 20, 20)
    nz = J.abs().sum((2, 3)) > 0
    assert (nz == C).all()
    torch.testing.assert_close(J, J.permute(1, 0, 3, 2))
