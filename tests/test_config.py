"""Config keys: an unknown one is answered with the key meant and the help that lists it."""

import pytest

from banglaslm.config import build_config
from banglaslm.errors import UserError


@pytest.mark.parametrize("key, hint, command", [
    ("train.lr", "train.learning_rate", "train"), ("train.batchsize", "train.batch_size", "train"),
    ("finetune.epoch", "finetune.epochs", "finetune"), ("wd", "weight_decay", "train"),
])
def test_an_unknown_key_suggests_the_key_and_the_help_that_lists_it(key, hint, command):
    with pytest.raises(UserError, match=rf"did you mean {hint}\?\); `banglaslm {command} --help` lists them"):
        build_config("tiny", overrides={key: 1})
