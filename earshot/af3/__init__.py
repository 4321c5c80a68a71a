"""AF3 model code shared by the in-process engine, the Triton models and training."""
