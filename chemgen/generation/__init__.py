"""What every generative model shares.

- `protocol`: the contract a model implements (ordered training stages, diagnostics, checkpoint groups)
  and the registry of models by name;
- `trainer`: the one training loop (resident batches, bf16, fused AdamW, EMA, WSD schedule, MFU);
- `resident`: training data padded into size buckets that live on the device;
- `lineage`: weights that accumulate from run to run, committed in shards of at most 16 MiB;
- `remote`: the runner a GPU lease executes with torch alone (train through the lineage, diagnose, sample).
"""
