"""violet_core: a lean VIOLET trainer (Video Swin + BERT-style fusion; MLM, VTM and MVM losses)
that reads frames and targets from the `mvm_targets` shard store. Depends on mvm_targets only."""
