"""Generate: draw k completions per prompt from the model being trained, reproducibly per sample.

`Sampler` and `SamplingConfig` (`sampler`) run one of two decoding backends (`refill`,
`generate_backend`) over prompts rendered by `prompts` (text or chat), with every random draw seeded
per (seed, round, prompt, sample) (`draws`); each drawn completion is a `Sample` (`samples`), the unit
every later phase (scoring, filtering, training, export) passes on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from itersft.lazy import lazy_exports

__all__ = ["Prompt", "Sample", "Sampler", "SamplingConfig"]

if TYPE_CHECKING:
    from itersft.sampling.prompts import Prompt
    from itersft.sampling.sampler import Sampler, SamplingConfig
    from itersft.sampling.samples import Sample

__getattr__ = lazy_exports(__name__, {"Prompt": "itersft.sampling.prompts", "Sample": "itersft.sampling.samples",
                                      "Sampler": "itersft.sampling.sampler",
                                      "SamplingConfig": "itersft.sampling.sampler"})
