"""What the API, the operator and the recognition job share, and nothing else.

The three components are peers on this kernel: the RecognitionJob model (``model``), the
operator<->job environment and exit codes (``jobenv``), the Redis key layout (``keys``), the
results codec (``results``), labels (``labels``) and the one JSON log format (``logs``). It depends
on pydantic only, so every image can carry it.
"""
