"""The model format: what a model repository version holds, shared by the exporter and the server.

- :mod:`.metadata`: ``metadata.json``, an envelope (task, model file, provenance) around one
  typed section per task. The sections live with their tasks (``text/metadata.py``,
  ``vision/metadata.py``); the envelope only needs to be told which ones exist.
- :mod:`.config`: ``config.yaml``, the serving settings of a model (version policy, caps, batching).
- :mod:`.preprocess`: the reference image preprocessing that the server applies to every request
  and the exporter to every training and evaluation image.

It lives in the ``attnserve-server`` distribution because the server must read it without
``torch``, while ``attnserve-export`` already depends on the server's runtime pieces for its
parity checks: the exporter imports this package, so the two sides cannot drift. Nothing here
imports ``grpc`` or ``torch``.
"""
