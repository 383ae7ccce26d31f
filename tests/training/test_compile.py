"""`train.compile=true` on the CPU: the compiled model (inductor's C++ kernels) trains to
the eager model's losses. Fused kernels reorder float32 sums, so after 20 AdamW steps the
validation losses agree to ~4e-8 relative on this machine, not bit for bit; 1e-5 relative is
allowed, for CPUs whose vector width orders the sums differently. (The fallback to eager where compiling fails
is tested in test_guard.py; the GPU's compiled path in test_cuda.py.)"""

import shutil

import pytest
from conftest import TINY_SETTINGS, val_losses

from banglaslm.config import build_config
from banglaslm.training.trainer import Trainer

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="torch.compile needs a C++ compiler on the CPU")

SETTINGS = {**TINY_SETTINGS, "model.dropout": 0.0, "train.max_iters": 20, "train.eval_interval": 10}


def test_compiled_training_matches_eager_on_the_cpu(data_dir, tmp_path):
    for name, compiled in (("eager", False), ("compiled", True)):
        trainer = Trainer(build_config(overrides={**SETTINGS, "train.compile": compiled}), data_dir,
                          tmp_path / name, progress=False)
        assert (trainer.forward_model is trainer.model) != compiled  # compiled, not fallen back to eager
        trainer.train()
    eager, compiled = val_losses(tmp_path / "eager"), val_losses(tmp_path / "compiled")
    assert len(eager) >= 2 and eager[-1] < eager[0]
    assert compiled == pytest.approx(eager, rel=1e-5)
