"""Ticket methods (issue 10): the pure scores with hand-computed values, each method's defining property on
tiny hand-made models, every method end to end on a tiny BERT and a tiny ViT, and `compare-methods`."""
import json

import pytest
import torch
from click.testing import CliRunner

from llmprune.finetune import FinetuneConfig, TrainConfig, get_task, load_task
from llmprune.finetune.run import load_for_task
from llmprune.tickets import METHODS, TicketConfig, Trainer, get_method
from llmprune.tickets import earlybird, lth, rand, snip
from llmprune.tickets.scores import (early_bird_stop, fit_scores, grasp_scores, hessian_gradient_product, imp_rate,
                                     interpolate, mask_distance, progressive_schedule, snip_scores, vote_masks)
from test_finetune import save_tiny_bert, write_sentiment
from tiny import save_tiny

STEPS = TrainConfig(epochs=1, batch_size=8, lr=1e-3, max_steps=4)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tickets")
    return {"bert": save_tiny_bert(root / "bert"), "train": write_sentiment(root / "train.csv", 48),
            "eval": write_sentiment(root / "eval.csv", 16, seed=1), "train2": write_sentiment(root / "t2.csv", 48, seed=5)}


def _trainer(assets, train="train", cfg=STEPS, model=None):
    data = load_task(get_task("text"), str(assets[train]), str(assets["eval"]))
    net, tok, src = load_for_task(str(model or assets["bert"]), data)
    return Trainer(net, data, tok, src, cfg)


# -- pure maths, hand-computed --------------------------------------------------------------------------

def test_snip_and_grasp_scores_by_hand():
    w = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    g = torch.tensor([[-4.0, 1.0], [2.0, 0.0]])
    assert torch.equal(snip_scores(w, g), torch.tensor([[4.0, 2.0], [1.0, 0.0]]))
    hg = torch.tensor([[1.0, 1.0], [-2.0, 0.5]])
    assert torch.equal(grasp_scores(w, hg), torch.tensor([[1.0, -2.0], [-1.0, 1.5]]))  # signed, keep the largest


def test_hessian_gradient_product_of_a_quadratic():
    # L = 0.5 x^T A x  =>  H = A and Hg = A g
    a = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
    x = torch.tensor([1.0, -1.0], requires_grad=True)
    g = torch.tensor([1.0, 2.0])
    (hg,) = hessian_gradient_product(lambda: 0.5 * x @ a @ x, [x], [g])
    assert torch.equal(hg, torch.tensor([4.0, 7.0]))


def test_vote_rules_on_hand_made_masks():
    m1 = torch.tensor([True, False, False, True, True, False])
    m2 = torch.tensor([True, False, True, False, True, False])
    m3 = torch.tensor([True, False, True, True, False, True])
    # prune votes per position:  0      3      1      1      1      2
    assert vote_masks([m1, m2, m3], "any").tolist() == [True, False, False, False, False, False]
    assert vote_masks([m1, m2, m3], "majority").tolist() == [True, False, True, True, True, False]
    assert vote_masks([m1, m2, m3], "all").tolist() == [True, False, True, True, True, True]
    assert vote_masks([m1, m2], "majority").tolist() == [True, False, True, True, True, False]  # 1 of 2 is no majority
    with pytest.raises(ValueError, match="any, majority, all"):
        vote_masks([m1], "most")


def test_fit_scores_hit_the_vote_first():
    keep = torch.tensor([True, False, True, False])
    w = torch.tensor([0.125, -5.0, 3.0, 0.25])
    assert fit_scores(keep, w, True).tolist() == [0.125, 0.0, 3.0, 0.0]  # vote-pruned go first
    assert fit_scores(keep, w, False).tolist() == [float("inf"), 5.0, float("inf"), 0.25]  # vote-kept stay


def test_global_selection_keeps_the_largest_signed_scores():
    from llmprune.tickets.base import select_global

    scores = {"a": torch.tensor([[-3.0, 2.0]]), "b": torch.tensor([[0.5, -1.0], [4.0, -0.25]])}
    keep = select_global(scores, 0.5)  # prune the 3 smallest: -3, -1, -0.25
    assert keep["a"].tolist() == [[False, True]] and keep["b"].tolist() == [[True, False], [True, False]]
    keep = select_global({"a": torch.tensor([[1.0, 1.0, 1.0, 2.0]])}, 0.5)  # ties pruned in index order
    assert keep["a"].tolist() == [[False, False, True, True]]


def test_schedules_distance_and_interpolation():
    assert progressive_schedule(0.5, 2) == pytest.approx([0.4375, 0.5])
    assert progressive_schedule(0.8, 1) == [0.8]
    assert 1 - (1 - imp_rate(0.5, 2)) ** 2 == pytest.approx(0.5)
    a = {"x": torch.tensor([True, True, False, False])}
    assert mask_distance(a, {"x": torch.tensor([True, False, False, True])}) == 0.5
    assert early_bird_stop([0.3, 0.05], 0.1) and not early_bird_stop([0.05, 0.3], 0.1)
    assert not early_bird_stop([0.05], 0.1, window=2) and early_bird_stop([0.09, 0.05], 0.1, window=2)
    s = interpolate([{"w": torch.tensor([1.0, 3.0]), "i": torch.tensor([7])}, {"w": torch.tensor([3.0, 5.0]), "i": torch.tensor([9])}])
    assert s["w"].tolist() == [2.0, 4.0] and s["i"].tolist() == [7]


# -- each method's defining property --------------------------------------------------------------------

def test_registry_errors():
    with pytest.raises(Exception, match="Did you mean 'lth'"):
        get_method("ltth")
    with pytest.raises(Exception, match="vote rule 'most'"):
        TicketConfig(vote="most")


def test_random_is_data_and_weight_independent(assets, tmp_path):
    a = _trainer(assets)
    b = _trainer(assets, "train2", model=save_tiny_bert_seeded(tmp_path))
    assert any(not torch.equal(p, q) for (_, p), (_, q) in zip(a.params(), b.params()))  # other weights
    masks = [tr.select(rand.random_scores({n: tuple(p.shape) for n, p in tr.params()}, 0), 0.5) for tr in (a, b)]
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])
    other = a.select(rand.random_scores({n: tuple(p.shape) for n, p in a.params()}, 1), 0.5)
    assert any(not torch.equal(masks[0][n], other[n]) for n in other)


def save_tiny_bert_seeded(tmp_path):
    from tiny import tiny_model

    path = save_tiny_bert(tmp_path / "bert2")
    tiny_model("bert", seed=3).save_pretrained(path)
    return path


def test_snip_mask_follows_g_times_w(assets, monkeypatch):
    tr = _trainer(assets)
    params = dict(tr.params())
    # the reference: the gradient of the same batches computed here, then the naive global k-smallest
    from llmprune.finetune.batches import make_loaders

    loader, _ = make_loaders(tr.data, tr.net, tr.tok, tr.cfg.batch_size, 64, tr.cfg.max_length, tr.cfg.seed, tr.src)
    tr.net.eval()
    for i, batch in enumerate(loader):
        if i == 2:
            break
        tr.net(**batch).loss.backward()
    ref = {n: (p.grad * p.detach()).abs() for n, p in params.items()}
    tr.net.zero_grad(set_to_none=True)
    flat = torch.cat([ref[n].flatten() for n in sorted(ref)])
    k = round(0.5 * flat.numel())
    cut = flat.sort().values[k - 1]
    monkeypatch.setattr(Trainer, "train", lambda self, masks, steps, **kw: 0.0)  # the mask before any training
    ticket = snip.run(tr, 0.5, TicketConfig(score_batches=2))
    for n, m in ticket.masks.items():
        assert torch.equal(m[ref[n] > cut], torch.ones(int((ref[n] > cut).sum()), dtype=torch.bool))
        assert not m[ref[n] < cut].any()
    assert ticket.score_batches == 2


class ScriptedTrainer:
    """A stand-in Trainer whose magnitude masks follow a script; training only counts steps."""

    def __init__(self, masks, budget=10):
        self.script, self.budget, self.steps, self.batches, self.calls = list(masks), budget, 0, 0, 0

    def magnitude_masks(self, sparsity):
        m = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return {"w": m}

    def train(self, masks, steps, **kw):
        self.steps += steps
        return 0.5

    def apply(self, masks):
        pass

    def ticket(self, masks, score, **info):
        from llmprune.tickets import Ticket

        return Ticket(masks, score, self.steps, self.batches, info)


def test_earlybird_stops_when_masks_stabilise():
    t = torch.tensor
    script = [t([1, 1, 0, 0, 1, 0, 1, 0, 1, 0]), t([0, 1, 1, 0, 1, 0, 1, 0, 0, 1]),  # distance 0.4
              t([0, 1, 1, 0, 1, 0, 1, 0, 1, 0]), t([0, 1, 1, 0, 1, 0, 1, 0, 1, 0])]  # 0.2, then 0.0: stop
    tr = ScriptedTrainer([m.bool() for m in script], budget=10)
    ticket = earlybird.run(tr, 0.5, TicketConfig(eb_every=0.1, eb_eps=0.1, eb_max=0.9))
    assert ticket.info["distances"] == pytest.approx([0.4, 0.2, 0.0]) and ticket.info["converged"]
    assert ticket.info["search_steps"] == 3 and ticket.train_steps == 3 + 10
    assert torch.equal(ticket.masks["w"], script[3].bool())
    never = ScriptedTrainer([torch.arange(10) % 2 == i % 2 for i in range(20)], budget=10)  # flips every time
    ticket = earlybird.run(never, 0.5, TicketConfig(eb_every=0.1, eb_eps=0.1, eb_max=0.5))
    assert not ticket.info["converged"] and ticket.info["search_steps"] == 5


def test_lth_rewinds_exactly_to_pretrained_weights(assets):
    tr = _trainer(assets)
    init = tr.state()  # pre-trained weights and the fresh head
    seen = {}
    masks, _, recs = lth.imp(tr, 0.6, rounds=2, on_rewind=lambda k, m: seen.setdefault(k, (tr.state(), m)))
    assert sorted(seen) == [1, 2] and [round(r["sparsity"], 4) for r in recs] == [0.0, round(1 - 0.4 ** 0.5, 4), 0.6]
    for k, (state, m) in seen.items():
        for name, w in state.items():
            if name in m:
                assert torch.equal(w[m[name]], init[name][m[name]]) and not w[~m[name]].any()
            else:
                assert torch.equal(w, init[name])  # the head and every unpruned tensor rewound too
    assert not any((masks[n] & ~seen[1][1][n]).any() for n in masks)  # nested: round 2 prunes only survivors
    assert tr.steps == 3 * 4


def test_lth_rewind_rewinds_to_the_early_step(assets):
    tr = _trainer(assets)
    init = tr.state()
    seen = {}
    lth.imp(tr, 0.5, rounds=1, rewind_steps=1, on_rewind=lambda k, m: seen.setdefault(k, tr.state()))
    moved = [n for n in init if init[n].is_floating_point() and not torch.equal(seen[1][n], init[n] * (seen[1][n] != 0))]
    assert moved  # the rewind point is after one fine-tuning step, not the pre-trained weights
    assert tr.steps == 1 + 2 * 3


# -- every method end to end, text and images; the CLI ---------------------------------------------------

@pytest.mark.slow  # every ticket method trained end to end: ~1.5 min per kind here
@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_all_methods_end_to_end(assets, tmp_path, kind):
    from llmprune.maskcmp import compare_dirs
    from llmprune.tickets.compare import compare_methods

    if kind == "bert":
        model = assets["bert"]
        cfg = FinetuneConfig(task="text", train_file=str(assets["train"]), eval_file=str(assets["eval"]), train=STEPS)
    else:
        model = save_tiny("vit", tmp_path / "vit")
        cfg = FinetuneConfig(task="digits", max_train_samples=48, max_eval_samples=16, train=STEPS)
    res = compare_methods(str(model), tmp_path / "out", cfg, list(METHODS), [0.5], seeds=1)
    rows = {r["method"]: r for r in res["rows"]}
    assert list(rows) == list(METHODS)
    for r in res["runs"]:
        assert r["sparsity"] == pytest.approx(0.5, abs=1e-3) and 0.0 <= r["score"] <= 1.0
    steps = {m: rows[m]["train_steps"] for m in rows}
    assert steps["omp"] == steps["random"] == steps["progressive"] == 4
    assert steps["lth"] == 12 and steps["isp"] > 4 and rows["snip"]["score_batches"] == 4
    out = tmp_path / "out"
    assert (out / "results.csv").read_text().splitlines()[0].startswith("method,sparsity,seeds,score_mean,score_std")
    assert (out / "plot.png").stat().st_size > 0
    g = compare_dirs(out / "masks" / "omp-s50-seed0", out / "masks" / "lth-s50-seed0")["global"]
    assert g["sparsity_a"] == pytest.approx(0.5, abs=1e-3) and 0 < g["cosine"] <= 1


def test_compare_methods_cli(assets, tmp_path):
    from llmprune.cli import main as cli
    args = ["compare-methods", str(assets["bert"]), "--task", "text", "--train", str(assets["train"]), "--eval", str(assets["eval"]),
            "--max-steps", "2", "--batch-size", "8", "--seeds", "2", "--vote", "any", "--threads", "1"]
    r = CliRunner().invoke(cli, [*args, "--methods", "omp,isp", "--sparsity", "0.3,0.5", "-o",
                                         str(tmp_path / "t"), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output[r.output.index("{"):])
    assert [(x["method"], x["sparsity"], x["seeds"]) for x in res["rows"]] == [
        ("omp", 0.3, 2), ("isp", 0.3, 2), ("omp", 0.5, 2), ("isp", 0.5, 2)]
    assert res["ticket"]["vote"] == "any" and len(list((tmp_path / "t" / "masks").iterdir())) == 8
    bad = CliRunner().invoke(cli, [*args, "--methods", "omp,snipp", "-o", str(tmp_path / "u")])
    assert bad.exit_code != 0 and "Unknown method 'snipp'. Did you mean 'snip'?" in bad.output
    bad = CliRunner().invoke(cli, [*args, "--sparsity", "0.5,x", "-o", str(tmp_path / "u")])
    assert bad.exit_code != 0 and "comma-separated fractions" in bad.output


def test_finetune_method_cli(assets, tmp_path):
    """`finetune --method isp` through the main group."""
    from llmprune.cli import main

    args = ["finetune", str(assets["bert"]), "--task", "text", "--train", str(assets["train"]), "--eval",
            str(assets["eval"]), "--max-steps", "3", "--batch-size", "8", "--sparsity", "0.6"]
    r = CliRunner().invoke(main, [*args, "--method", "isp", "--vote", "all", "-o", str(tmp_path / "isp"), "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.output[r.output.index("{"):])
    assert rec["method"] == "isp" and rec["sparsity"] == pytest.approx(0.6, abs=1e-3) and rec["ticket"]["vote"] == "all"
    from llmprune.maskcmp import compare_dirs

    assert compare_dirs(tmp_path / "isp", assets["bert"])["global"]["sparsity_a"] == pytest.approx(0.6, abs=1e-3)
    bad = CliRunner().invoke(main, [*args, "--method", "lth", "--imp", "-o", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "--method lth is IMP" in bad.output
    bad = CliRunner().invoke(main, [*args, "--method", "ispp", "-o", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "Did you mean 'isp'?" in bad.output
