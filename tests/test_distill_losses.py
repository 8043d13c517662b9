"""The distillation losses (student_trainer/distill): each against a hand computation of
its published formula, gradients, state round trips, feature pairs, the registry."""
from __future__ import annotations

import argparse
import dataclasses
import io
import math

import pytest
import torch
import torch.nn.functional as F

from common import reductions
from student_trainer.distill import LOSSES, Combined, build_loss, parse_pairs, resolve_pairs
from student_trainer.config import own_flag
from student_trainer.flags import add_config_flags, config_from_flags
from student_trainer.distill.at import AT
from student_trainer.distill.base import LOGITS, DistillBatch, ModelShapes, StepContext, TeacherOutput
from student_trainer.distill.crd import CRD
from student_trainer.distill.dkd import DKD
from student_trainer.distill.fitnet import FitNet
from student_trainer.distill.kd import KD
from student_trainer.distill.pairs import FeatureLoss
from student_trainer.distill.pkt import PKT
from student_trainer.distill.rkd import RKD
from student_trainer.distill.sp import SP
from student_trainer.distill.vid import VID

DATASET_SIZE = 200


# ----------------------------------------------------------------------------- helpers

def make_parser() -> argparse.ArgumentParser:
    """The trainer's flag the losses read (--seed) plus every loss's own, as the CLI adds them."""
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=0)
    added: set[str] = set()
    for cls in LOSSES.values():
        add_config_flags(p, cls.config_type, added)
    return p


def make_args(*argv) -> dict:
    """Every loss's config from these flags, as the trainer's CLI maps them."""
    args = make_parser().parse_args([str(a) for a in argv])
    return {name: config_from_flags(cls.config_type, args) for name, cls in LOSSES.items()}


def batch_of(student_features=None, teacher=None, logits=None, labels_a=None, labels_b=None, mix=None,
             indices=None, context=None, n=None):
    student_features = student_features or {}
    teacher = teacher or {}
    if n is None:
        n = len(next(iter({**student_features, **teacher}.values())) if (student_features or teacher)
                else logits)
    logits = logits if logits is not None else torch.randn(n, 10, requires_grad=True)
    labels_a = labels_a if labels_a is not None else torch.randint(0, logits.shape[1], (n,))
    return DistillBatch(student_logits=logits, teacher=teacher, student_features=student_features,
                        labels_a=labels_a, labels_b=labels_b if labels_b is not None else labels_a.clone(),
                        mix=mix if mix is not None else torch.zeros(n),
                        indices=indices if indices is not None else torch.arange(n),
                        context=context or StepContext())


@pytest.fixture(scope="module")
def zoo_shapes():
    """resnet8x4 (student) and resnet32x4 (teacher) feature shapes, measured by running the models."""
    from common.features import feature_names, forward_with_features
    from common.models import build_model

    def shapes(arch):
        torch.manual_seed(0)
        model = build_model(arch, num_classes=100).eval()
        with torch.no_grad():
            logits, feats = forward_with_features(model, torch.randn(1, 3, 32, 32), feature_names(model))
        return {"logits": tuple(logits.shape[1:]), **{k: tuple(v.shape[1:]) for k, v in feats.items()}}

    return ModelShapes(student=shapes("resnet8x4"), teacher=shapes("resnet32x4"), num_classes=100,
                       dataset_size=DATASET_SIZE)


def random_batch(loss, shapes: ModelShapes, n: int = 4, seed: int = 0) -> DistillBatch:
    """Random student features (with grad) and teacher outputs reduced as the server reduces them."""
    g = torch.Generator().manual_seed(seed)
    feats = {name: torch.randn(n, *shapes.student[name], generator=g).requires_grad_()
             for name in loss.student_features()}
    teacher = {}
    for out in loss.teacher_outputs():
        full = torch.randn(n, *shapes.teacher[out.name], generator=g)
        teacher[out.key] = reductions.reduce(out.reduction, full)
    logits = torch.randn(n, shapes.num_classes, generator=g).requires_grad_()
    labels = torch.randint(0, shapes.num_classes, (n,), generator=g)
    indices = torch.randperm(shapes.dataset_size, generator=g)[:n]
    return batch_of(feats, teacher, logits, labels_a=labels, indices=indices,
                    context=StepContext(epoch=3, epochs=240))


def close(a, b, rtol=1e-5, atol=1e-7):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                          rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- formulas by hand

def test_kd_formula():
    torch.manual_seed(1)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    T, w = 3.0, 0.7
    ps = torch.exp(s / T) / torch.exp(s / T).sum(1, keepdim=True)
    pt = torch.exp(t / T) / torch.exp(t / T).sum(1, keepdim=True)
    expected = w * T * T * (pt * (pt.log() - ps.log())).sum(1).mean()
    out = KD(T=T, weight=w)(batch_of(teacher={"logits": t}, logits=s))
    assert set(out) == {"loss_kd"} and close(out["loss_kd"], expected)


def test_dkd_formula_uses_labels_a_and_warms_up():
    torch.manual_seed(2)
    n, c, T, alpha, beta = 3, 6, 4.0, 1.0, 8.0
    s, t = torch.randn(n, c) * 3, torch.randn(n, c) * 3
    ya, yb = torch.tensor([0, 3, 5]), torch.tensor([1, 2, 0])
    per_image = []
    for i in range(n):
        ps = [math.exp(v / T) for v in s[i].tolist()]
        pt = [math.exp(v / T) for v in t[i].tolist()]
        ps, pt = [v / sum(ps) for v in ps], [v / sum(pt) for v in pt]
        g = int(ya[i])
        bs, bt = [ps[g], 1 - ps[g]], [pt[g], 1 - pt[g]]
        tckd = sum(q * math.log(q / p) for q, p in zip(bt, bs))
        qs = [ps[j] / (1 - ps[g]) for j in range(c) if j != g]
        qt = [pt[j] / (1 - pt[g]) for j in range(c) if j != g]
        nckd = sum(q * math.log(q / p) for q, p in zip(qt, qs))
        per_image.append(alpha * tckd + beta * nckd)
    full = sum(per_image) / n * T * T
    loss = DKD(alpha=alpha, beta=beta, T=T, warmup=20, weight=1.0)

    def run(epoch, epochs):
        return loss(batch_of(teacher={"logits": t}, logits=s, labels_a=ya, labels_b=yb,
                             mix=torch.tensor([0.3, 0.5, 0.1]), context=StepContext(epoch, epochs)))["loss_dkd"]

    assert close(run(1, 240), full / 20)          # mdistiller: min(epoch / 20, 1)
    assert close(run(25, 240), full)
    assert close(run(1, 24), full / 2)            # 24 epochs: warm-up 20 * 24 / 240 = 2 epochs
    assert close(run(3, 24), full)


def _attention_by_hand(f):
    return (f ** 2).sum(1) / f.shape[1]


def test_at_formula_and_spatial_pooling():
    torch.manual_seed(3)
    fs1, ft1 = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    fs2, ft2 = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)    # student map twice the size

    def q(a):
        a = a.reshape(a.shape[0], -1)
        return a / (a ** 2).sum(1, keepdim=True).sqrt()

    a_s2 = _attention_by_hand(fs2).reshape(2, 4, 2, 4, 2).mean((2, 4))     # 2x2 average pooling
    expected = 1000 * (((q(_attention_by_hand(fs1)) - q(_attention_by_hand(ft1))) ** 2).mean()
                       + ((q(a_s2) - q(_attention_by_hand(ft2))) ** 2).mean())
    loss = AT([("a", "x"), ("b", "y")], weight=1000)
    assert loss.teacher_outputs() == [TeacherOutput("x", "attention"), TeacherOutput("y", "attention")]
    batch = batch_of({"a": fs1, "b": fs2}, {"x.attention": _attention_by_hand(ft1),
                                            "y.attention": _attention_by_hand(ft2)})
    assert close(loss(batch)["loss_at"], expected)


def _sp_by_hand(fs, ft):
    def g(f):
        f = f.reshape(f.shape[0], -1)
        m = f @ f.t()
        return m / (m ** 2).sum(1, keepdim=True).sqrt()
    n = fs.shape[0]
    return ((g(ft) - g(fs)) ** 2).sum() / (n * n)


def test_sp_formula_and_reductions():
    torch.manual_seed(4)
    fs, ft = torch.randn(4, 3, 2, 2), torch.randn(4, 6, 2, 2)
    out = SP([("a", "x")], weight=3000)(batch_of({"a": fs}, {"x": ft}))
    assert close(out["loss_sp"], 3000 * _sp_by_hand(fs, ft))
    pooled = SP([("a", "x")], weight=3000, reduction="pool")
    assert pooled.teacher_outputs() == [TeacherOutput("x", "pool")]
    out = pooled(batch_of({"a": fs}, {"x.pool": ft.mean((2, 3))}))
    assert close(out["loss_sp"], 3000 * _sp_by_hand(fs.mean((2, 3)), ft.mean((2, 3))))


def _bn_relu_by_hand(y, bn):
    mean = y.mean((0, 2, 3), keepdim=True)
    var = ((y - mean) ** 2).mean((0, 2, 3), keepdim=True)
    y = (y - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    return y.clamp(min=0)


def test_fitnet_formula_with_regressor():
    torch.manual_seed(5)
    fs, ft = torch.randn(4, 3, 8, 8), torch.randn(4, 5, 4, 4).relu()
    loss = FitNet([("a", "x")], {"a": (3, 8, 8)}, {"x": (5, 4, 4)}, weight=100)
    conv, bn, _ = loss.regressors["a_to_x"]
    assert conv.kernel_size == (3, 3) and conv.stride == (2, 2)        # mdistiller ConvReg, student 2x
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
        pred = _bn_relu_by_hand(F.conv2d(fs, conv.weight, conv.bias, stride=2, padding=1), bn)
    expected = 100 * ((pred - ft) ** 2).mean()
    assert close(loss(batch_of({"a": fs}, {"x": ft}))["loss_fitnet"], expected, rtol=1e-4)
    # same size: 1x1; student half the size: transposed conv; both land on the teacher's shape
    for s_shape, t_shape in (((3, 4, 4), (5, 4, 4)), ((3, 2, 2), (5, 4, 4)), ((3, 6, 6), (5, 4, 4))):
        reg = FitNet([("a", "x")], {"a": s_shape}, {"x": t_shape}).regressors["a_to_x"]
        assert reg(torch.randn(2, *s_shape)).shape[1:] == t_shape


def test_pkt_formula():
    torch.manual_seed(6)
    n, eps = 4, 1e-7
    fs, ft = torch.randn(n, 5, dtype=torch.float64), torch.randn(n, 7, dtype=torch.float64)

    def cond(f):
        rows = []
        for i in range(n):
            k = [(float(f[i] @ f[j] / (f[i].norm() + eps) / (f[j].norm() + eps)) + 1) / 2 for j in range(n)]
            rows.append([v / sum(k) for v in k])
        return rows
    ps, pt = cond(fs), cond(ft)
    expected = sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps))
                   for i in range(n) for j in range(n)) / (n * n)
    out = PKT([("pool", "pool")], weight=30000)(batch_of({"pool": fs.float()}, {"pool": ft.float()}))
    assert close(out["loss_pkt"], 30000 * expected, rtol=1e-4)


def test_rkd_formula():
    torch.manual_seed(7)
    n = 4
    es, et = torch.randn(n, 3, dtype=torch.float64), torch.randn(n, 5, dtype=torch.float64)

    def huber(x):
        return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5

    def dist(e):
        d = [[float((e[i] - e[j]).norm()) for j in range(n)] for i in range(n)]
        mean = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * n - n)
        return [[v / mean for v in row] for row in d]

    def angles(e):
        out = []
        for j in range(n):
            for i in range(n):
                for k in range(n):
                    u, v = e[i] - e[j], e[k] - e[j]
                    out.append(0.0 if i == j or k == j else float(u @ v / u.norm() / v.norm()))
        return out
    ds, dt = dist(es), dist(et)
    loss_d = sum(huber(ds[i][j] - dt[i][j]) for i in range(n) for j in range(n)) / (n * n)
    loss_a = sum(huber(a - b) for a, b in zip(angles(es), angles(et))) / n ** 3
    out = RKD([("pool", "pool")], weight=1.0, distance_weight=25, angle_weight=50)(
        batch_of({"pool": es.float()}, {"pool": et.float()}))
    assert close(out["loss_rkd"], 25 * loss_d + 50 * loss_a, rtol=1e-4)
    one = RKD([("pool", "pool")])(batch_of({"pool": torch.randn(1, 3, requires_grad=True)}, {"pool": torch.randn(1, 5)}))
    assert float(one["loss_rkd"].detach()) == 0.0 and one["loss_rkd"].requires_grad


def test_vid_formula():
    torch.manual_seed(8)
    fs, ft = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)
    loss = VID([("a", "x")], {"a": (3, 4, 4)}, {"x": (5, 2, 2)}, weight=1.0, init_pred_var=5.0, eps=1e-5)
    head = loss.heads["a_to_x"]
    var0 = torch.log(1 + torch.exp(head.log_scale)) + 1e-5
    assert close(var0, torch.full((5,), 5.0))
    with torch.no_grad():
        head.log_scale.uniform_(-1, 2)
    w1, w2, w3 = (head.regressor[i].weight[:, :, 0, 0] for i in (0, 2, 4))
    x = fs.reshape(2, 3, 2, 2, 2, 2).mean((3, 5))                        # student pooled to 2x2
    mu = torch.einsum("oc,nchw->nohw", w3, torch.einsum("oc,nchw->nohw", w2,
                      torch.einsum("oc,nchw->nohw", w1, x).relu()).relu())
    var = (torch.log(1 + torch.exp(head.log_scale)) + 1e-5).view(1, -1, 1, 1)
    expected = (0.5 * ((mu - ft) ** 2 / var + torch.log(var))).mean()
    assert close(loss(batch_of({"a": fs}, {"x": ft}))["loss_vid"], expected, rtol=1e-4)


def test_crd_formula_and_bank_update():
    """Anchors 0..2 share label 0, every other index is known as label 1; other-class negatives
    then come only from rows 3..9, which all hold one vector, so the sum is known without
    knowing which negatives were drawn."""
    torch.manual_seed(9)
    n_data, k, b, T, m, dim = 10, 5, 3, 0.07, 0.5, 4
    loss = CRD([("pool", "pool")], {"pool": (6,)}, {"pool": (8,)}, n_data, seed=0, weight=0.8,
               feat_dim=dim, nce_k=k, nce_t=T, nce_m=m)
    unit = lambda v: v / v.norm(dim=-1, keepdim=True)                    # noqa: E731
    with torch.no_grad():
        loss.labels[3:] = 1
        for bank in (loss.memory_s, loss.memory_t):
            bank[:3] = unit(torch.randn(3, dim))
            bank[3:] = unit(torch.randn(dim))
    mem_s, mem_t = loss.memory_s.clone(), loss.memory_t.clone()
    xs, xt = torch.randn(b, 6), torch.randn(b, 8)
    e_s = unit(xs @ loss.embed_s.linear.weight.t() + loss.embed_s.linear.bias).detach()
    e_t = unit(xt @ loss.embed_t.linear.weight.t() + loss.embed_t.linear.bias).detach()
    y = torch.tensor([0, 1, 2])

    def nce(anchor, bank):
        pos = torch.exp((bank[y] * anchor).sum(1) / T)
        neg = torch.exp((bank[3] * anchor).sum(1) / T)
        z = torch.cat([pos, neg.repeat_interleave(k)]).mean() * n_data
        pos, neg, pn = pos / z, neg / z, k / n_data
        return -(torch.log(pos / (pos + pn + 1e-7)).sum() + k * torch.log(pn / (neg + pn + 1e-7)).sum()) / b

    expected = 0.8 * (nce(e_s, mem_t) + nce(e_t, mem_s))
    out = loss(batch_of({"pool": xs}, {"pool": xt}, labels_a=torch.zeros(b, dtype=torch.long), indices=y))
    assert close(out["loss_crd"], expected, rtol=1e-4)
    assert close(loss.memory_s[:3], unit(m * mem_s[:3] + (1 - m) * e_s))
    assert close(loss.memory_t[:3], unit(m * mem_t[:3] + (1 - m) * e_t))
    assert torch.equal(loss.memory_s[3:], mem_s[3:])


def test_crd_negatives_skip_anchor_and_its_class():
    loss = CRD([("pool", "pool")], {"pool": (6,)}, {"pool": (8,)}, 50, nce_k=10_000, feat_dim=4)
    assert loss.nce_k == 49                                              # capped at dataset_size - 1
    loss.labels.copy_(torch.arange(50) % 5)
    anchors = torch.tensor([0, 7, 13])
    idx = loss.sample(anchors, loss.labels[anchors])
    assert idx.shape == (3, 50) and torch.equal(idx[:, 0], anchors)
    assert not (idx[:, 1:] == anchors[:, None]).any()
    assert not (loss.labels[idx[:, 1:]] == loss.labels[anchors][:, None]).any()


# ----------------------------------------------------------------------------- gradients

def test_none_asks_the_teacher_nothing_and_adds_no_term(zoo_shapes):
    loss = build_loss("none", zoo_shapes, None, make_args())
    assert loss.teacher_outputs() == [] and loss.student_features() == [] and not list(loss.parameters())
    assert loss(batch_of(logits=torch.randn(4, 10))) == {}


@pytest.mark.parametrize("name", [n for n, cls in LOSSES.items() if cls.needs_teacher])
def test_builds_from_flags_and_gradients_reach_student_not_teacher(name, zoo_shapes):
    loss = build_loss(name, zoo_shapes, None, make_args())
    batch = random_batch(loss, zoo_shapes)
    terms = loss(batch)
    assert set(terms) == {f"loss_{name}"}
    total = sum(terms.values())
    assert total.dim() == 0 and torch.isfinite(total) and total.requires_grad
    total.backward()
    if isinstance(loss, FeatureLoss):
        for f in loss.student_features():
            grad = batch.student_features[f].grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, f
    else:
        assert batch.student_logits.grad is not None and batch.student_logits.grad.abs().sum() > 0
    for pname, p in loss.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    for key, t in batch.teacher.items():
        assert not t.requires_grad and t.grad is None, key


def test_every_loss_flag_is_its_own():
    for name, cls in LOSSES.items():
        flags = [own_flag(f) for f in dataclasses.fields(cls.config_type) if own_flag(f)]
        kept = {"--T"}                               # KD's temperature kept its first name
        assert all(f.startswith(f"--{name}-") or f in kept for f in flags), (name, flags)
        assert flags or not cls.needs_teacher, name  # only 'none' has nothing to tune


# ----------------------------------------------------------------------------- state round trips

def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf)


@pytest.mark.parametrize("name", ["fitnet", "vid"])
def test_learnable_modules_round_trip(name, zoo_shapes):
    torch.manual_seed(0)
    a = build_loss(name, zoo_shapes, None, make_args())
    batch = random_batch(a, zoo_shapes)
    a(batch)                                       # moves BatchNorm statistics
    torch.manual_seed(1)
    b = build_loss(name, zoo_shapes, None, make_args())
    b.load_state_dict(_roundtrip(a.state_dict()))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    a.eval(), b.eval()
    assert torch.equal(a(batch)[f"loss_{name}"], b(batch)[f"loss_{name}"])


def test_crd_resume_is_bit_exact(zoo_shapes):
    a = build_loss("crd", zoo_shapes, None, make_args("--seed", 3))
    for step in range(2):
        a(random_batch(a, zoo_shapes, seed=step))
    state = _roundtrip(a.state_dict())
    assert {"memory_s", "memory_t", "z", "labels", "_extra_state"} <= set(state)
    b = build_loss("crd", zoo_shapes, None, make_args("--seed", 4))
    assert not torch.equal(a.memory_s, b.memory_s)
    b.load_state_dict(state)
    nxt = random_batch(a, zoo_shapes, seed=5)
    assert torch.equal(a(nxt)["loss_crd"], b(nxt)["loss_crd"])
    for key in ("memory_s", "memory_t", "z", "labels"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


# ----------------------------------------------------------------------------- feature pairs

def _resolve(cls, text, shapes):
    names_s = [n for n in shapes.student if n != "logits"]
    names_t = [n for n in shapes.teacher if n != "logits"]
    return resolve_pairs(cls, text, names_s, names_t, shapes.student, shapes.teacher)


def test_default_pairs(zoo_shapes):
    stages = [(f"stage{i}", f"stage{i}") for i in (1, 2, 3)]
    assert _resolve(AT, None, zoo_shapes) == stages
    assert _resolve(VID, None, zoo_shapes) == stages
    assert _resolve(FitNet, None, zoo_shapes) == [("stage2", "stage2")]
    assert _resolve(SP, None, zoo_shapes) == [("stage3", "stage3")]
    for cls in (PKT, RKD, CRD):
        assert _resolve(cls, None, zoo_shapes) == [("pool", "pool")]
    assert _resolve(KD, None, zoo_shapes) == [] and _resolve(DKD, None, zoo_shapes) == []
    four = ["stem", "stage1", "stage2", "stage3", "stage4", "pool"]   # a vgg13 teacher
    assert SP.default_pairs(list(zoo_shapes.student), four) == [("stage3", "stage4")]
    assert AT.default_pairs(list(zoo_shapes.student), four) == stages


def test_parse_pairs():
    assert parse_pairs("stage2:stage2, stage3:stage4") == [("stage2", "stage2"), ("stage3", "stage4")]
    assert parse_pairs("stage3") == [("stage3", "stage3")]
    for bad in ("", "a:b:c", "a:"):
        with pytest.raises(ValueError):
            parse_pairs(bad)


def test_pair_errors_are_one_line_and_list_the_offered_names(zoo_shapes):
    cases = [(AT, "stage9:stage3", "stage9"), (AT, "stage1:nope", "nope"),
             (FitNet, "stage3:stage1", "cannot pair"), (AT, "pool:pool", "cannot pair"),
             (CRD, "pool:pool,stage3:stage3", "at most 1")]
    for cls, text, needle in cases:
        with pytest.raises(ValueError) as err:
            _resolve(cls, text, zoo_shapes)
        msg = str(err.value)
        assert "\n" not in msg and needle in msg, msg
        assert "student offers stem 32x32x32, stage1 64x32x32" in msg and "pool 256" in msg, msg
        assert "teacher offers stem" in msg, msg
    with pytest.raises(ValueError, match="takes no --feature-pairs"):
        build_loss("kd", zoo_shapes, "stage1:stage1", make_args())
    with pytest.raises(ValueError, match="choose from none, kd, dkd, at"):
        build_loss("kd+nope", zoo_shapes, None, make_args())


def test_teacher_shapes_may_list_reduced_keys(zoo_shapes):
    """The server's ``offered_keys`` (``stage3``, ``stage3.attention``, ...) as teacher shapes."""
    offered = ModelShapes(student=zoo_shapes.student, teacher=reductions.offered_keys(zoo_shapes.teacher),
                          num_classes=100, dataset_size=DATASET_SIZE)
    assert _resolve(SP, None, offered) == [("stage3", "stage3")]
    loss = build_loss("kd+at", offered, None, make_args())
    assert loss.parts["at"].pairs == [(f"stage{i}", f"stage{i}") for i in (1, 2, 3)]
    for out in loss.teacher_outputs():
        assert out.key in offered.teacher


def test_explicit_pairs_reach_the_loss(zoo_shapes):
    loss = build_loss("at", zoo_shapes, "stage2:stage2,stage3:stage3", make_args())
    assert loss.pairs == [("stage2", "stage2"), ("stage3", "stage3")]
    assert loss.teacher_outputs() == [TeacherOutput("stage2", "attention"), TeacherOutput("stage3", "attention")]
    assert [o.key for o in loss.teacher_outputs()] == ["stage2.attention", "stage3.attention"]


# ----------------------------------------------------------------------------- combinations

def test_kd_plus_at_sums_both_weighted_terms(zoo_shapes):
    args = make_args("--kd-weight", 0.5, "--T", 3, "--at-weight", 10)
    loss = build_loss("kd+at", zoo_shapes, None, args)
    assert isinstance(loss, Combined) and loss.name == "kd+at"
    assert loss.teacher_outputs()[0] == LOGITS
    assert {o.key for o in loss.teacher_outputs()} == {"logits", "stage1.attention", "stage2.attention",
                                                       "stage3.attention"}
    assert loss.student_features() == ["stage1", "stage2", "stage3"]
    batch = random_batch(loss, zoo_shapes)
    terms = loss(batch)
    assert set(terms) == {"loss_kd", "loss_at"}
    kd = KD(T=3, weight=1.0)(batch)["loss_kd"]
    at = AT([(f"stage{i}", f"stage{i}") for i in (1, 2, 3)], weight=1.0)(batch)["loss_at"]
    assert close(terms["loss_kd"], 0.5 * kd) and close(terms["loss_at"], 10 * at)
    assert close(sum(terms.values()), 0.5 * kd + 10 * at)


def test_combined_state_keys_name_their_part(zoo_shapes):
    loss = build_loss("kd+fitnet", zoo_shapes, None, make_args())
    keys = list(loss.state_dict())
    assert keys and all(k.startswith("parts.fitnet.regressors.stage2_to_stage2.") for k in keys)
    with pytest.raises(ValueError, match="twice"):
        build_loss("kd+kd", zoo_shapes, None, make_args())
