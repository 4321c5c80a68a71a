"""A synthetic speech and sound corpus that Earshot generates itself (the golden model's data).

Everything comes from one spec file (examples/golden/spec.yaml) and a seed: sentences from a
small grammar spoken by espeak-ng voices, numpy sound events at known times, background noise,
and AF3 conversation manifests for the curriculum runner. See docs/golden.md.
"""
