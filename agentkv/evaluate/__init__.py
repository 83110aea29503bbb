"""Drivers that measure, above the packages they drive: the KV codecs' accuracy on a checkpoint (`codecs.py`:
engine, kernels and model) and the cache policies' hit rates over a trace (`sweep.py`: the policy core, run
locally or as Ray tasks). torch is imported only inside what needs it."""
