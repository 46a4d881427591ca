"""The instance-generation pipeline: generate / retrieve -> segment -> score -> build-pool, in resumable shards."""
