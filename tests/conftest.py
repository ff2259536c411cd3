import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

ALL_MODELS = ["mbv2", "mbv3-large", "mbv3-small", "efficientnet-lite0"]


def randomize(model, seed=0, res=64):
    """Give BN affine and classifier non-trivial values, and BN statistics calibrated on random images.

    A randomly initialised MobileNet with default statistics (mean 0, var 1) collapses every input to the
    same features; calibrated statistics keep per-sample signal alive through the depth, as trained ones do.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            elif isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration pass
        model.train()
        model(torch.randn(16, 3, res, res, generator=g))
        model.eval()
    return model


def export_randomized(out, num_classes: int, model: str = "mbv3-small", res: int = 32, seed: int = 0, **config):
    """Export top-2 of a randomized (calibrated, trainable) model to `out` (a Path); returns `out`."""
    from mobiletl_export.export import ExportConfig, export
    from mobiletl_export.models import create_model

    net = randomize(create_model(model, num_classes=num_classes, dropout=0.0), seed=seed, res=res)
    export(ExportConfig(model=model, top_k=2, num_classes=num_classes, resolution=res, out=str(out), **config),
           model=net)
    return out


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
