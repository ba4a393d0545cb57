"""Face models: what they are (cards), where they come from (build), and how they run.

- ``cards``: ``ModelCard`` (one JSON/YAML file beside the ONNX files) and the built-in cards.
- ``build``: ``python -m rollcall_job.models.build`` fetches the pinned sdists and writes
  ``<cache>/models/v<N>/``: ``embedder.onnx`` (dlib ResNet, converted here),
  ``detector_{pnet,rnet,onet}.onnx`` (MTCNN), their cards and a manifest.
- ``dlib_format`` / ``dlib_onnx`` / ``dlib_reference``: read dlib's serialised network, build the
  ONNX graph, and an independent numpy forward pass that proves the conversion.
- ``mtcnn``: the detection cascade around the three MTCNN networks.
- ``assets``: ``photo(name)``, real face photos for tests and benchmarks (fetched, cached).

The job image needs only ``cards``, ``cache`` and ``mtcnn`` at run time (no onnx package).
"""
