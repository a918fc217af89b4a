"""ablations: grids of violet_core trainings (target x mask ratio x strategy x seed) and reports.
Depends on violet_core and mvm_targets, never the other way round."""
