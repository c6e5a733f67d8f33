"""Running trained models: loading checkpoints and ONNX exports, the runtimes that run them, the
backend chooser, the predictor, the CRF refinement and overlays.

Layers, lowest first: ``machine`` (CPU probes, cache folder) and ``checkpoint`` (safe loading,
:func:`~semseg.inference.checkpoint.file_sha256`); ``runtimes`` (torch and ONNX Runtime);
``onnx_export``; ``artefacts`` (the built-once cache), ``aot`` (AOTInductor packages) and
``int8_cache`` (``--precision int8``); ``autotune``
(:class:`~semseg.inference.autotune.BackendOptions` and
:func:`~semseg.inference.autotune.choose_backend`, the one chooser of predict, evaluate and
serve); ``predictor``. May import ``semseg.models``, ``semseg.data``, ``semseg.io`` and
``semseg.errors`` (and ``semseg.regions``, the proposals of a loaded region model); nothing here
imports the CLI, training or serving.
"""
