"""The loop's outputs as datasets for TRL's trainers: SFT, DPO and KTO from a run's scored samples.

Every round of a loop run writes every sample it drew, scored and marked kept or not
(`samples/round-NNNN.jsonl`, `itersft.loop.scored_samples`). `export_run` turns those into one of
TRL's dataset formats (`ExportConfig.format`): prompt-completion rows of the kept samples for
`SFTTrainer`, preference pairs of one prompt's samples for `DPOTrainer` (`pairs`: best against worst,
never a tie), or unpaired good/bad rows for `KTOTrainer`; conversational where the samples were drawn
through the chat template (`rows`). `itersft export RUN_DIR --format dpo --out dpo.jsonl` is the
command line. Modules: `config` (the settings), `run_samples` (reading a run directory), `rows` and
`pairs` (the formats), `summary`, `run_export` (writing).
"""

from __future__ import annotations

from itersft.export.config import FORMATS, ExportConfig
from itersft.export.run_export import export_rows, export_run
from itersft.export.run_samples import ExportError
from itersft.export.summary import ExportSummary

__all__ = ["FORMATS", "ExportConfig", "ExportError", "ExportSummary", "export_rows", "export_run"]
