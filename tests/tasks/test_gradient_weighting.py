"""DWA and PCGrad against hand computations, and in tiny end-to-end training runs."""

import json
import math
from pathlib import Path

import pytest
import torch

from sparsemtl.runs.run_dir import TIME_FIELDS
from sparsemtl.tasks.weighting import DynamicWeightAverage, PCGrad, build_weighting
from sparsemtl.training import RunInterrupted, Trainer, resume, train


def losses(**values: float) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(value) for name, value in values.items()}


# ----------------------------------------------------------------------------------- DWA
def dwa_after_two_epochs() -> DynamicWeightAverage:
    """Two steps per epoch. Epoch 1: a = (2, 4) -> 3, b = (1, 1) -> 1; epoch 2: a = (1.5, 1.5)
    -> 1.5, b = (1, 2) -> 1.5; so r_a = 1.5 / 3 = 0.5 and r_b = 1.5 / 1 = 1.5."""
    dwa = build_weighting("dwa", ["a", "b"], steps_per_epoch=2)
    for a, b in [(2.0, 1.0), (4.0, 1.0), (1.5, 1.0), (1.5, 2.0)]:
        total, weights = dwa(losses(a=a, b=b))
        assert weights == {"a": 1.0, "b": 1.0}  # epochs 1 and 2: weights 1
        assert total.item() == a + b
    return dwa


def test_dwa_weights_from_the_last_two_epoch_averages() -> None:
    dwa = dwa_after_two_epochs()
    # K * softmax(r / T) with K = 2, T = 2: w_a = 2 e^0.25 / (e^0.25 + e^0.75) = 2 / (1 + e^0.5)
    w_a, w_b = 2 / (1 + math.exp(0.5)), 2 * math.exp(0.5) / (1 + math.exp(0.5))
    assert dwa.history.tolist() == [[3.0, 1.0], [1.5, 1.5]]
    total, weights = dwa(losses(a=2.0, b=1.0))
    assert weights["a"] == pytest.approx(w_a, rel=1e-6) and weights["b"] == pytest.approx(w_b, rel=1e-6)
    assert weights["a"] + weights["b"] == pytest.approx(2.0)
    assert total.item() == pytest.approx(2.0 * w_a + 1.0 * w_b, rel=1e-6)
    # the weights stay fixed for the whole epoch: the second step of epoch 3 uses the same ones
    assert dwa(losses(a=10.0, b=0.1))[1] == weights
    # epoch 3 averages: a = (2 + 10) / 2 = 6, b = (1 + 0.1) / 2 = 0.55 -> r_a = 4, r_b = 0.55 / 1.5
    r_a, r_b = 4.0, 0.55 / 1.5
    expected_a = 2 * math.exp(r_a / 2) / (math.exp(r_a / 2) + math.exp(r_b / 2))
    assert dwa(losses(a=1.0, b=1.0))[1]["a"] == pytest.approx(expected_a, rel=1e-6)


def test_dwa_state_dict_restores_the_weights_exactly() -> None:
    dwa = dwa_after_two_epochs()
    dwa(losses(a=2.0, b=1.0))  # one step into epoch 3: the running sums are state too
    copy = DynamicWeightAverage(["a", "b"], steps_per_epoch=2)
    copy.load_state_dict(dwa.state_dict())
    assert set(dwa.state_dict()) == {"steps", "epoch_sums", "epoch_counts", "history"}
    for step in [(5.0, 1.0), (1.0, 3.0), (2.0, 2.0)]:
        assert copy(losses(a=step[0], b=step[1]))[1] == dwa(losses(a=step[0], b=step[1]))[1]
    assert torch.equal(copy.history, dwa.history)


def test_dwa_eval_mode_records_nothing_and_active_subsets_renormalise() -> None:
    dwa = build_weighting("dwa", ["a", "b", "c"], steps_per_epoch=1)
    for a, b, c in [(1.0, 1.0, 1.0), (0.5, 1.0, 2.0)]:
        dwa(losses(a=a, b=b, c=c))
    dwa.eval()
    dwa(losses(a=100.0, b=100.0, c=100.0))
    assert int(dwa.steps) == 2
    # r = (0.5, 1, 2); all three: 3 softmax(r / 2); only a and c: K = 2 and softmax over (0.5, 2) / 2
    e = [math.exp(r / 2) for r in (0.5, 1.0, 2.0)]
    assert dwa.task_weights().tolist() == pytest.approx([3 * x / sum(e) for x in e], rel=1e-6)
    _, weights = dwa(losses(a=1.0, c=1.0), active=["a", "c"])
    assert weights == pytest.approx({"a": 2 * e[0] / (e[0] + e[2]), "c": 2 * e[2] / (e[0] + e[2])}, rel=1e-6)


def test_dwa_needs_a_positive_step_count() -> None:
    with pytest.raises(ValueError, match="steps_per_epoch"):
        DynamicWeightAverage(["a"], steps_per_epoch=0)


# ----------------------------------------------------------------------------------- PCGrad
def linear_problem(g1, g2):
    """Shared w in R^2 with L1 = g1 . w + 3 h1 and L2 = g2 . w + h2^2: dL_t/dw = g_t exactly."""
    w = torch.nn.Parameter(torch.tensor([0.3, -0.7]))
    h1, h2 = torch.nn.Parameter(torch.tensor(1.0)), torch.nn.Parameter(torch.tensor(2.0))
    task_losses = {"one": torch.tensor(g1) @ w + 3 * h1, "two": torch.tensor(g2) @ w + h2**2}
    return w, h1, h2, task_losses


def test_pcgrad_projects_conflicting_gradients() -> None:
    """g1 = (1, 0), g2 = (-1, 1): g1 . g2 = -1 < 0, so
    g1_PC = g1 - (-1 / |g2|^2) g2 = (1, 0) + (-0.5, 0.5) = (0.5, 0.5),
    g2_PC = g2 - (-1 / |g1|^2) g1 = (-1, 1) + (1, 0) = (0, 1); shared update (0.5, 1.5)."""
    w, h1, h2, task_losses = linear_problem([1.0, 0.0], [-1.0, 1.0])
    weighting = PCGrad(["one", "two"])
    assert weighting.needs_gradients
    total, weights = weighting.backward(task_losses, [w], [h1, h2])
    assert w.grad.tolist() == [0.5, 1.5]
    assert h1.grad.item() == 3.0 and h2.grad.item() == 4.0  # each head: its own task's gradient
    assert weights == {"one": 1.0, "two": 1.0}
    assert total.item() == pytest.approx(sum(v.item() for v in task_losses.values()))
    assert not total.requires_grad


def test_pcgrad_leaves_agreeing_gradients_alone_and_keeps_the_loss_scale() -> None:
    """g1 = (1, 0), g2 = (1, 1): g1 . g2 = 1 >= 0, plain sum (2, 1); with the losses scaled by 8
    (as a GradScaler would), every gradient is 8 times larger, projections included."""
    w, h1, h2, task_losses = linear_problem([1.0, 0.0], [1.0, 1.0])
    PCGrad(["one", "two"]).backward(task_losses, [w], [h1, h2], scale=lambda loss: loss * 8)
    assert w.grad.tolist() == [16.0, 8.0]
    assert h1.grad.item() == 24.0
    w, h1, h2, task_losses = linear_problem([1.0, 0.0], [-1.0, 1.0])
    PCGrad(["one", "two"]).backward(task_losses, [w], [h1, h2], scale=lambda loss: loss * 8)
    assert w.grad.tolist() == [4.0, 12.0]


def test_pcgrad_with_a_frozen_head_and_an_inactive_task() -> None:
    w, h1, h2, task_losses = linear_problem([1.0, 0.0], [-1.0, 1.0])
    h2.requires_grad_(False)
    PCGrad(["one", "two"]).backward({"one": task_losses["one"]}, [w], [h1, h2], active=["one"])
    assert w.grad.tolist() == [1.0, 0.0]  # one task: its gradient, nothing to project
    assert h1.grad.item() == 3.0 and h2.grad is None


@pytest.mark.parametrize(
    "order, expected",
    [
        # each task meets the others in index order:
        # g1: vs g2 (dot 0) kept, vs g3 (dot -1, |g3|^2 = 2): (1, 0) + 0.5 (-1, -1) = (0.5, -0.5)
        # g2: vs g1 (dot 0) kept, vs g3: (0, 1) + 0.5 (-1, -1) = (-0.5, 0.5)
        # g3: vs g1 (dot -1): (-1, -1) + (1, 0) = (0, -1); vs g2 (dot -1): (0, -1) + (0, 1) = (0, 0)
        ("ascending", [0.0, 0.0]),
        # in reverse order g3 comes first:
        # g1: vs g3 -> (0.5, -0.5); vs g2 (dot -0.5): (0.5, -0.5) + 0.5 (0, 1) = (0.5, 0)
        # g2: vs g3 -> (-0.5, 0.5); vs g1 (dot -0.5): (-0.5, 0.5) + 0.5 (1, 0) = (0, 0.5)
        # g3: vs g2 (dot -1): (-1, 0); vs g1 (dot -1): (0, 0)
        ("descending", [0.5, 0.5]),
    ],
)
def test_pcgrad_three_tasks_by_hand(order: str, expected: list[float], monkeypatch) -> None:
    """g1 = (1, 0), g2 = (0, 1), g3 = (-1, -1): the result depends on the (random) order."""
    permutation = {"ascending": lambda n: torch.arange(n), "descending": lambda n: torch.arange(n - 1, -1, -1)}[order]
    monkeypatch.setattr(torch, "randperm", permutation)
    grads = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    assert PCGrad(["a", "b", "c"]).combine(grads).tolist() == pytest.approx(expected, abs=1e-7)


# ----------------------------------------------------------------------------------- training
def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def finite(result: dict) -> bool:
    values = [result["loss"], *result["losses"].values()]
    values += [v for task in result["metrics"].values() for v in task.values()]
    return all(math.isfinite(v) for v in values)


def test_dwa_training_run_follows_the_rule_and_resumes_exactly(tiny_config, monkeypatch) -> None:
    """One uninterrupted 3-epoch run checked against the rule, and the same run interrupted at
    the start of epoch 3 (the first epoch whose weights come from DWA's history) and resumed."""
    common = ["loss.weighting=dwa", "train.epochs=3", "train.deterministic=true"]
    cfg = tiny_config(*common, "train.name=ref")
    summary = train(cfg)
    assert finite(summary.val) and finite(summary.test)
    out = Path(cfg.train.out_dir)
    rows = records(out / "ref")
    tasks = list(rows[0]["train"]["losses"])
    assert rows[0]["train"]["task_weights"] == rows[1]["train"]["task_weights"] == {t: 1.0 for t in tasks}
    # 16 samples in 2 equal batches: the logged per-sample averages are DWA's per-step averages
    ratio = {t: rows[1]["train"]["losses"][t] / rows[0]["train"]["losses"][t] for t in tasks}
    norm = sum(math.exp(r / 2) for r in ratio.values())
    expected = {t: len(tasks) * math.exp(ratio[t] / 2) / norm for t in tasks}
    assert rows[2]["train"]["task_weights"] == pytest.approx(expected, rel=1e-5)
    assert rows[2]["train"]["task_weights"] != rows[1]["train"]["task_weights"]

    original = Trainer._train_epoch

    def interrupted(self, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", interrupted)
    with pytest.raises(RunInterrupted, match="epoch 2"):
        train(tiny_config(*common, "train.name=cut"))
    monkeypatch.undo()
    assert resume(out / "cut").resumed == 1
    strip = [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in rows]
    assert strip == [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in records(out / "cut")]
    ref, cut = (json.loads((out / n / "summary.json").read_text()) for n in ("ref", "cut"))
    assert ref["test"] == cut["test"] and ref["val"] == cut["val"]


def test_pcgrad_training_run_finishes(tiny_config) -> None:
    cfg = tiny_config("loss.weighting=pcgrad", "train.epochs=1", "train.name=pc", "train.grad_clip=1.0")
    summary = train(cfg)
    assert finite(summary.val) and finite(summary.test)
    row = records(Path(cfg.train.out_dir) / "pc")[0]
    assert set(row["train"]["task_weights"].values()) == {1.0}
    assert math.isfinite(row["train"]["loss"])


def test_pcgrad_training_step_writes_the_projected_encoder_gradient(tiny_config, monkeypatch) -> None:
    """One trainer step with two tasks: the encoder's .grad is the hand formula applied to the
    per-task encoder gradients (computed here independently), each head's is its own task's."""
    from sparsemtl.evaluation.evaluate import task_loss_options
    from sparsemtl.tasks import get_task

    trainer = Trainer(
        tiny_config("loss.weighting=pcgrad", "tasks=[segmentation,depth]", "model.head_dropout=0", "train.name=step")
    )
    monkeypatch.setattr(trainer.optimizer, "step", lambda *args, **kwargs: None)  # keep the weights
    batch = next(iter(trainer.loaders.train))
    model, specs = trainer.model, trainer.specs
    model.train()
    outputs = model(batch["image"])
    task_losses = {
        name: get_task(spec.kind).loss(outputs[name].float(), batch[name], spec, **task_loss_options(spec, 0.0))
        for name, spec in specs.items()
    }
    shared = [p for p in model.encoder.parameters() if p.requires_grad]
    g1, g2 = (
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(task_losses[t], shared, retain_graph=True)])
        for t in specs
    )
    dot = g1 @ g2
    assert dot < 0  # this seed's tasks conflict, so the projection is exercised
    expected = (g1 - dot / (g2 @ g2) * g2) + (g2 - dot / (g1 @ g1) * g1)
    head = {t: torch.autograd.grad(task_losses[t], list(model.heads[t].parameters()), retain_graph=True) for t in specs}

    trainer._train_step(batch)
    written = torch.cat([p.grad.reshape(-1) for p in shared])
    assert torch.allclose(written, expected, rtol=1e-4, atol=1e-6)
    for t in specs:
        for p, g in zip(model.heads[t].parameters(), head[t]):
            assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-6)


def test_gradient_weightings_are_refused_in_distributed_runs(tiny_config) -> None:
    from types import SimpleNamespace

    from sparsemtl.config import ConfigError

    fake = SimpleNamespace(
        cfg=tiny_config("loss.weighting=pcgrad"),
        context=SimpleNamespace(distributed=True),
        specs={"a": None, "b": None},
        loaders=SimpleNamespace(train=[0, 1]),
    )
    with pytest.raises(ConfigError, match="'loss.weighting': 'pcgrad'.*distributed"):
        Trainer._build_weighting(fake)
    fake.cfg = tiny_config("loss.weighting=dwa")
    assert Trainer._build_weighting(fake).steps_per_epoch == 2
