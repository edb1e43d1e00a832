"""Trained detectors in other formats: a transformers directory (:mod:`.transformers_export`) and ONNX
(:mod:`.onnx_export`)."""
