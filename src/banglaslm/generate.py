"""Text generation from a trained model: greedy or sampled, with temperature, top-k, top-p.

A thin layer over `engine.Engine` (KV-cached decoding) for one prompt and one sample. The
prompt is normalized and encoded exactly like training text and preceded by the
end-of-document token, the context every training document started from (the course
instead appended a `</s>` that training never saw). When the context outgrows the block,
the engine keeps its last `block_size // 2` tokens and goes on (see engine.py). Generation
stops at end-of-document or after `max_new_tokens`.

Sampling, in order: logits / temperature → keep the `top_k` largest → keep the smallest set
whose probability reaches `top_p` → sample. `temperature` → 0 approaches greedy (argmax);
above 1 it flattens the distribution and the text gets more surprising. The engine's
`SamplingParams` adds min-p, repetition/presence/frequency penalties, stop strings and n.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .engine import Engine, SamplingParams, filter_logits
from .runfolder import LoadedModel

__all__ = ["SamplingConfig", "Generation", "filter_logits", "generate"]


@dataclass
class SamplingConfig:
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False
    seed: int | None = None

    def validate(self) -> None:
        """The engine's checks (one place for the rules and their messages)."""
        self.to_params().validate()

    def to_params(self) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                              top_k=self.top_k, top_p=self.top_p, greedy=self.greedy, seed=self.seed)


@dataclass
class Generation:
    prompt: str
    text: str
    tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def generate(loaded: LoadedModel, prompt: str, sampling: SamplingConfig | None = None) -> Generation:
    sampling = sampling or SamplingConfig()
    sampling.validate()
    [[completion]] = Engine(loaded.model, loaded.tokenizer).generate([prompt], sampling.to_params())
    return Generation(prompt=prompt, text=completion.text, tokens=len(completion.token_ids))
