"""What every generative model shares; a model folder holds only its networks, losses and config.

- `protocol`: the contract a model implements (stages, monitor, diagnostics, generate, checkpoint groups)
  and `MODELS`, the registry of models by name;
- `trainer`: the one training loop (`fit`: Lightning around resident batches, bf16, fused AdamW, EMA,
  WSD schedule, checkpoints that resume exactly, MFU);
- `training`: a model's stages in order through its lineage, resumable per run folder;
- `resident`: training data padded into size buckets that live on the device;
- `lineage`: weights that accumulate from run to run, committed in shards of at most 16 MiB;
- `records`: padded samples to `AtomicSystem` records (or `Failure`s with their reason);
- `jobs`: train from the curated store as an MLflow run, register, load, sample to files;
- `pyfunc`: any model as an MLflow pyfunc; `runs`: score a run, gate it into a lineage, log it;
- `sweep`: sampling settings against quality; `remote`: the runner a GPU lease executes with torch alone.
"""
