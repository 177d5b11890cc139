"""Training any model of `chemgen.models.specs.MODELS` through its lineage, on any machine.

- `loop`: the one training loop (`fit`: Lightning around resident batches, bf16, fused AdamW, EMA, WSD
  schedule, checkpoints that resume exactly, MFU);
- `resident`: training data padded into size buckets that live on the device;
- `stages`: a model's stages in order through its lineage, resumable per run folder (torch only);
- `standalone`: the command a machine with only torch runs (packs in; lineage and samples out);
- `packs`: the tensor packs of a config's curated datasets;
- `tracked`: training as one MLflow run from the curated store;
- `continuation`: which lineage a run continues;
- `promotion`: score a run, gate it into the shipped lineage, log it.
"""
