"""The bench: model x MIT-BIH beats x host references x board -> Result (run.py), and the parts it is built from.

Records and beats (data, noise, beatset), the model file (flatbuf, tflm_probe, model), host references (reference,
refcache), static costs (costmodel, calibrate), per-op and kernel figures (perop, kernels, localize), figures (metrics,
realtime, perfrule) and the Result itself (results).

Nothing else here: importing one module of the layer must not import the others (tests/test_layering.py).
"""
