"""fit and evaluate on your own model: any network, any batch layout, default arguments on a CPU."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from clrlib.batches import to_device
from clrlib.train import epoch_table, evaluate, fit, model_is_channels_last

N, CLASSES = 64, 4


def _images(n=N, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = torch.randn(n, 3, size, size, generator=g) + y.view(-1, 1, 1, 1).float()
    return x, y


def _loader(*tensors, batch_size=16):
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(0))


def test_mlp_on_a_torch_dataloader_with_default_arguments():
    """Was: "required rank 4 tensor to use channels_last format" (channels-last forced on an MLP)."""
    torch.manual_seed(0)
    x, y = _images()
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, CLASSES))
    history = fit(mlp, _loader(x, y), 3, lr=0.05, test_loader=_loader(x, y), progress=False)
    table = epoch_table(history)
    assert history.attrs["fit"]["channels_last"] is False and history.attrs["fit"]["device"] == "cpu"
    assert table["test_acc"].between(0, 1).all() and table["test_acc"].iloc[-1] > 1 / CLASSES
    # flat inputs of an MLP are left alone even when channels-last is asked for
    assert fit(mlp, _loader(x.flatten(1), y), 1, channels_last=True, progress=False)["loss"].notna().all()


def test_conv1d_net():
    torch.manual_seed(0)
    x, y = torch.randn(N, 2, 20), torch.randint(0, CLASSES, (N,))
    net = nn.Sequential(nn.Conv1d(2, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, CLASSES))
    history = fit(net, _loader(x, y), 1, test_loader=_loader(x, y), progress=False)
    assert history.attrs["fit"]["channels_last"] is False
    assert math.isfinite(epoch_table(history)["test_loss"].iloc[0])


def test_torchvision_resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    model = torchvision.models.resnet18(num_classes=10)
    history = fit(model, _loader(x, y, batch_size=8), 1, test_loader=_loader(x, y, batch_size=8), progress=False)
    assert len(history) == 2 and history["loss"].notna().all()
    assert history.attrs["fit"]["channels_last"] is True and model_is_channels_last(model)  # a conv net


class _TokenClassifier(nn.Module):
    """A bag-of-embeddings text classifier called as ``model(input_ids=..., attention_mask=...)``."""

    def __init__(self, vocab=50, dim=16):
        super().__init__()
        self.embed, self.head = nn.Embedding(vocab, dim), nn.Linear(dim, CLASSES)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).float()
        return self.head((self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1))


def _token_batches(n_batches=4, batch=16, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        labels = torch.randint(0, CLASSES, (batch,), generator=g)
        ids = torch.randint(0, 10, (batch, length), generator=g) + 10 * labels.view(-1, 1)
        out.append({"input_ids": ids, "attention_mask": torch.ones(batch, length, dtype=torch.long),
                    "labels": labels})
    return out


def test_dict_batches():
    torch.manual_seed(0)
    batches = _token_batches()
    history = fit(_TokenClassifier(), batches, 5, lr=0.5, test_loader=batches, progress=False)
    assert history.attrs["fit"]["channels_last"] is False
    assert epoch_table(history)["test_acc"].iloc[-1] > 0.5


def test_two_input_model():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(5, CLASSES), nn.Linear(3, CLASSES)

        def forward(self, x1, x2):
            return self.a(x1) + self.b(x2)

    torch.manual_seed(0)
    x1, x2, y = torch.randn(N, 5), torch.randn(N, 3), torch.randint(0, CLASSES, (N,))
    batches = [((x1[i:i + 16], x2[i:i + 16]), y[i:i + 16]) for i in range(0, N, 16)]
    model = TwoInputs()
    history = fit(model, batches, 2, test_loader=batches, progress=False)
    loss, acc = evaluate(model, batches)
    with torch.no_grad():
        right = sum((model(a, b).argmax(1) == t).sum().item() for (a, b), t in batches)
    assert acc == right / N == epoch_table(history)["test_acc"].iloc[-1]


class _OwnLoss(_TokenClassifier):
    """Returns its own loss with its logits when given labels, as Hugging Face models do."""

    def forward(self, input_ids, attention_mask, labels=None):
        logits = super().forward(input_ids, attention_mask)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SimpleNamespace(loss=loss, logits=logits)


def test_model_that_returns_its_own_loss():
    torch.manual_seed(0)
    batches = _token_batches()
    model = _OwnLoss()
    history = fit(model, batches, 5, lr=0.5, loss_fn="model", test_loader=batches, progress=False)
    table = epoch_table(history)
    assert table["test_acc"].iloc[-1] > 0.5  # read from the output's logits
    assert table["train_loss"].iloc[-1] < table["train_loss"].iloc[0]
    loss, acc = evaluate(model, batches, "model")
    with torch.no_grad():
        manual = sum(F.cross_entropy(model(b["input_ids"], b["attention_mask"]).logits, b["labels"]).item()
                     for b in batches) / len(batches)
    assert loss == pytest.approx(manual, rel=1e-5) and acc == table["test_acc"].iloc[-1]


def test_accuracy_is_nan_without_class_logits():
    torch.manual_seed(0)
    x, y = torch.randn(N, 5), torch.randn(N, 1)
    reg = nn.Linear(5, 1)
    history = fit(reg, _loader(x, y), 1, loss_fn=F.mse_loss, test_loader=_loader(x, y), progress=False)
    assert math.isnan(epoch_table(history)["test_acc"].iloc[0])
    assert math.isfinite(epoch_table(history)["test_loss"].iloc[0])

    class LossOnly(nn.Module):  # returns a 0-d loss and nothing to score
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 1)

        def forward(self, x, y):
            return F.mse_loss(self.lin(x), y)

    batches = [((x, y), y)]
    loss, acc = evaluate(LossOnly(), batches, "model")
    assert math.isfinite(loss) and math.isnan(acc)


def test_custom_unpack_is_used():
    torch.manual_seed(0)
    x, y = _images()
    reversed_batches = [(y[i:i + 16], x[i:i + 16]) for i in range(0, N, 16)]  # (target, inputs)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, CLASSES))
    history = fit(mlp, reversed_batches, 1, unpack=lambda b: (b[1], b[0]), test_loader=reversed_batches,
                  progress=False)
    assert 0 <= epoch_table(history)["test_acc"].iloc[0] <= 1
    with pytest.raises(TypeError, match="unpack"):
        fit(mlp, [(x, y, y)], 1, progress=False)  # a triple: the default unpack says to pass unpack=


@pytest.mark.parametrize("bad", ["mse", 3])
def test_bad_loss_fn(bad):
    with pytest.raises(ValueError, match="loss_fn") as info:
        fit(nn.Linear(2, 2), [(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))], 1, loss_fn=bad, progress=False)
    assert repr(bad) in str(info.value)


def test_to_device_moves_nested_batches():
    images, ids = torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, dtype=torch.long)
    moved = to_device({"a": (images, [ids]), "n": 3}, torch.device("meta"), channels_last=True)
    assert moved["n"] == 3 and moved["a"][0].device.type == "meta" and moved["a"][1][0].device.type == "meta"
    assert moved["a"][0].is_contiguous(memory_format=torch.channels_last) and not moved["a"][0].is_contiguous()
    assert isinstance(moved["a"][1], list) and moved["a"][1][0].dtype == torch.long
